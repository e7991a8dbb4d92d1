"""GradCAM-MSMA for real on a tiny score network: the torch GMM equals sklearn's, the guided rule on SiLU, the
NLL equals image-level MSMA on the cache, and Guided Grad-CAM heatmaps are masked, nonzero and deterministic."""

import copy

import nibabel as nib
import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop, LayerGradCam
from sklearn.mixture import GaussianMixture
from torch import nn

from spatial_msma import io
from spatial_msma.baselines.gradcam import (
    GradcamConfig,
    GuidedSiluBackprop,
    TorchGmm,
    build_detector,
    choose_components,
    fit_gradcam_gmm,
    gradcam_heatmap,
    load_gradcam_detector,
    read_gradcam_gmm,
)
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.io import InputError
from spatial_msma.score.cache import cache_path, write_manifest, write_norm_cache
from spatial_msma.score.msma import image_features
from spatial_msma.score.network import MODEL_FORMAT, NetworkConfig, ScoreModel, ScoreNet
from spatial_msma.score.norms import score_norms
from spatial_msma.score.sde import VESDE

torch.set_num_threads(1)

SHAPE = (16, 16, 16)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
NET_CFG = NetworkConfig.from_dict({"channels": [8, 8], "norm_num_groups": 4, "num_head_channels": 4})


@pytest.mark.parametrize("bad, key", [
    ({"levelz": 3}, "levelz"),
    ({"covariance_type": "banded"}, "covariance_type"),
    ({"n_levels": 0}, "n_levels"),
    ({"n_components": "two"}, "n_components"),
    ({"reg_covar": 0}, "reg_covar"),
    ({"guided_silu": "yes"}, "guided_silu"),
    ({"n_components": "many"}, "n_components"),
    ({"max_components": 0}, "max_components"),
    ({"cv_folds": 1}, "cv_folds"),
    ({"standardise": "yes"}, "standardise"),
    ({"layer_input": 1}, "layer_input"),
    ({"rectify_per_level": None}, "rectify_per_level"),
    ({"signed_product": "no"}, "signed_product"),
])
def test_config_errors_name_the_key(bad, key):
    with pytest.raises(InputError, match=key):
        GradcamConfig.from_dict(bad)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_torch_gmm_log_density_equals_sklearn_score_samples(covariance_type):
    rng = np.random.default_rng(0)
    train = np.r_[rng.normal(0, 1, (60, 4)) @ rng.normal(0, 1, (4, 4)), rng.normal(3, 0.5, (40, 4))]
    gmm = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(train)
    test = rng.normal(1, 2, (25, 4))
    torch_gmm = TorchGmm.from_sklearn(gmm)
    got = torch_gmm(torch.from_numpy(test)).numpy()
    np.testing.assert_allclose(got, gmm.score_samples(test), rtol=1e-10, atol=1e-10)
    # and it is differentiable: the gradient of the log-density matches a finite difference
    f = torch.from_numpy(test[:1]).requires_grad_(True)
    (grad,) = torch.autograd.grad(torch_gmm(f).sum(), f)
    eps = 1e-6
    bumped = test[:1].copy()
    bumped[0, 2] += eps
    fd = (gmm.score_samples(bumped) - gmm.score_samples(test[:1]))[0] / eps
    assert grad[0, 2].item() == pytest.approx(fd, rel=1e-4)


def test_standardised_torch_gmm_equals_sklearn_on_standardised_features_and_its_gradient_flows():
    """Near-copy features (as the score norms of neighbouring levels): the GMM is fitted on the z-scored
    features, and the torch density applied to RAW features equals score_samples of the z-scored ones."""
    rng = np.random.default_rng(3)
    base = rng.normal(4.7, 0.03, (40, 1))
    raw = base + rng.normal(0, 0.002, (40, 3)) * np.array([1.0, 2.0, 0.5])
    shift, scale = raw.mean(0), raw.std(0)
    z = (raw - shift) / scale
    gmm = GaussianMixture(2, covariance_type="full", reg_covar=1e-3, random_state=0).fit(z)
    torch_gmm = TorchGmm.from_sklearn(gmm, shift, scale)
    test = base[:10] + rng.normal(0, 0.004, (10, 3))
    np.testing.assert_allclose(torch_gmm(torch.from_numpy(test)).numpy(), gmm.score_samples((test - shift) / scale),
                               rtol=1e-10, atol=1e-9)
    f = torch.from_numpy(test[:1]).requires_grad_(True)
    (grad,) = torch.autograd.grad(torch_gmm(f).sum(), f)
    eps = 1e-7
    bumped = test[:1].copy()
    bumped[0, 1] += eps
    fd = (gmm.score_samples((bumped - shift) / scale) - gmm.score_samples((test[:1] - shift) / scale))[0] / eps
    assert grad[0, 1].item() == pytest.approx(fd, rel=1e-4)
    with pytest.raises(InputError, match="scales positive"):
        TorchGmm.from_sklearn(gmm, shift, -scale)


@pytest.mark.parametrize("n_clusters", [1, 3])
def test_cross_validation_picks_the_number_of_well_separated_clusters(n_clusters):
    rng = np.random.default_rng(n_clusters)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])[:n_clusters]
    features = np.concatenate([rng.normal(c, 1.0, (30, 2)) for c in centres])
    cfg = GradcamConfig.from_dict({"n_components": "auto", "max_components": 5, "cv_folds": 5})
    k, scores = choose_components(features, cfg, seed=0)
    assert k == n_clusters and scores.shape == (5,) and np.nanargmax(scores) == n_clusters - 1
    again = choose_components(features, cfg, seed=0)
    assert again[0] == k and np.array_equal(again[1], scores)  # seeded folds: deterministic


def _manual_guided_gradient(conv1, act, conv2, x, rule):
    """Backprop by hand through conv1 -> act -> conv2 -> sum, clamping the gradient at act's input at 0."""
    z = conv1(x)
    a = act(z)
    out = conv2(a).sum()
    (g_a,) = torch.autograd.grad(out, a, retain_graph=True)
    local = torch.autograd.functional.jacobian(lambda t: act(t).sum(), z)  # elementwise derivative act'(z)
    g_z = rule(g_a * local)
    (g_x,) = torch.autograd.grad(z, x, grad_outputs=g_z)
    return g_x


def test_guided_rule_on_silu_clamps_the_gradient_at_the_activation_input_and_matches_captum_on_relu():
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 1, 3, padding=1)
    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    silu_net = nn.Sequential(conv1, nn.SiLU(), conv2, nn.Flatten(), SumHead())
    guided = GuidedSiluBackprop(silu_net).attribute(x)
    expected = _manual_guided_gradient(conv1, nn.SiLU(), conv2, x, torch.relu)
    torch.testing.assert_close(guided, expected)
    plain = _manual_guided_gradient(conv1, nn.SiLU(), conv2, x, lambda g: g)
    assert not torch.allclose(guided, plain)  # the rule did something
    # captum's own GuidedBackprop leaves SiLU alone: the plain gradient -- the architectural gap this fills
    torch.testing.assert_close(GuidedBackprop(silu_net).attribute(x), plain)
    # on ReLU the rule is captum's
    relu_net = nn.Sequential(conv1, nn.ReLU(), conv2, nn.Flatten(), SumHead())
    torch.testing.assert_close(GuidedSiluBackprop(relu_net).attribute(x), GuidedBackprop(relu_net).attribute(x))


class SumHead(nn.Module):
    def forward(self, x):
        return x.sum(1)


def brain_mask() -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    return (g**2).sum(0) < 0.7


def make_image(rng) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    brain = brain_mask()
    return np.stack([np.where(brain, 0.3 * g[0] + rng.normal(0, 0.05, SHAPE), -1.0),
                     np.where(brain, -0.3 * g[1] + rng.normal(0, 0.05, SHAPE), -1.0)]).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny score network with a random (not zero-initialised) output layer, saved as a score model file,
    the score-norm cache of 8 'train' images at 3 levels, and the GMM fitted on it."""
    out = tmp_path_factory.mktemp("gradcam")
    torch.manual_seed(0)
    net = ScoreNet(2, SHAPE, NET_CFG)
    for p in net.unet.out.parameters():
        nn.init.normal_(p, std=0.05)
    net.eval()
    sde = VESDE(0.05, 20.0)
    model_path = out / "score.pt"
    torch.save({"format": MODEL_FORMAT, "network": NET_CFG.to_dict(), "in_channels": 2, "image_shape": list(SHAPE),
                "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max, "t_eps": sde.t_eps,
                "state_dict": net.state_dict()}, model_path)
    sigmas = sde.levels(3, 0.0, 0.6)
    rng = np.random.default_rng(1)
    manifest = out / "norms" / "manifest.tsv"
    subjects = [f"sub-{i:02d}" for i in range(8)]

    holder = ScoreModel(net=net, sde=sde, meta={})
    for subject in subjects:
        image = make_image(rng)
        patch, whole = score_norms(holder, image, sigmas, "sum")
        write_norm_cache(cache_path(manifest, subject), patch, whole, sigmas, brain_mask(), AFFINE)
    write_manifest(manifest, subjects, [f"{subject}.nii.gz" for subject in subjects])
    cfg = GradcamConfig.from_dict({"n_levels": None, "device": "cpu"})
    sk = fit_gradcam_gmm(manifest, out / "gmm.npz", cfg, seed=0)
    gmm, gmm_sigmas = read_gradcam_gmm(out / "gmm.npz")
    return {"out": out, "net": net, "sigmas": sigmas, "gmm": gmm, "gmm_sigmas": gmm_sigmas, "sk": sk,
            "model_path": model_path, "holder": holder, "cfg": cfg, "rng": rng}


def test_nll_through_the_network_equals_image_level_msma_on_the_cache(setup):
    """The fitted file holds the training mean and SD of the log norms; the NLL through the network equals
    sklearn's on the standardised cache features."""
    np.testing.assert_allclose(setup["gmm_sigmas"], setup["sigmas"])
    with np.load(setup["out"] / "gmm.npz") as data:
        train = image_features(np.stack([np.load(p)["image_norms"] for p in sorted(
            (setup["out"] / "norms").glob("sub-*.npz"))]), np.arange(3))
        np.testing.assert_allclose(data["feature_shift"], train.mean(0))
        np.testing.assert_allclose(data["feature_scale"], train.std(0))
        assert data["cv_loglik"].shape == (GradcamConfig().max_components,)
    detector = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1")
    image = make_image(setup["rng"])
    _, whole = score_norms(setup["holder"], image, setup["sigmas"], "sum")
    with np.load(setup["out"] / "gmm.npz") as data:
        z = (image_features(whole[None], np.arange(3)) - data["feature_shift"]) / data["feature_scale"]
    expected = -setup["sk"].score_samples(z)[0]
    with torch.no_grad():
        got = float(detector.nll(torch.from_numpy(image)[None])[0])
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)  # float32 norms, divided by SDs of ~0.01


def test_guided_gradcam_heatmap_is_masked_nonzero_deterministic_and_follows_the_layer(setup):
    detector = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1")
    brain = brain_mask()
    image = make_image(setup["rng"])
    _, clean_nll = gradcam_heatmap(detector, image, brain)
    image[:, 6:10, 6:10, 6:10] += 1.0  # an anomaly: Grad-CAM keeps what raises the NLL, a typical image has none
    heat, nll = gradcam_heatmap(detector, image, brain)
    assert nll > clean_nll
    assert heat.shape == SHAPE and heat.dtype == np.float32
    assert (heat[~brain] == 0).all()
    assert (heat >= 0).all() and heat[brain].max() > 0 and (heat[brain] > 0).mean() > 0.05
    assert np.isfinite(nll)
    again, nll2 = gradcam_heatmap(detector, image, brain)
    np.testing.assert_array_equal(heat, again)
    assert nll == nll2
    # another layer and the unguided gradient give other maps (the options are wired through)
    other = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.0")
    assert not np.allclose(gradcam_heatmap(other, image, brain)[0], heat)
    plain = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1", guided_silu=False)
    assert not np.allclose(gradcam_heatmap(plain, image, brain)[0], heat)
    with pytest.raises(InputError, match="does not match"):
        gradcam_heatmap(detector, image[:, :8], brain)


def _anomalous_image(setup):
    image = make_image(np.random.default_rng(9))
    image[:, 6:10, 6:10, 6:10] += 1.0
    return image


def test_layer_input_is_the_output_of_the_block_before(setup):
    """MONAI calls its up blocks with keywords (captum's layer-input hook sees none): the probe threads onto
    ``hidden_states``, the output of the block before, so Grad-CAM at up_blocks.1's input is Grad-CAM at
    up_blocks.0's output, and differs from Grad-CAM at up_blocks.1's output."""
    net = copy.deepcopy(setup["net"])  # the probe hooks the network in place
    image, brain = _anomalous_image(setup), brain_mask()
    at_input = build_detector(net, setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1", layer_input=True)
    before = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.0")
    heat, nll = gradcam_heatmap(at_input, image, brain)
    expected, expected_nll = gradcam_heatmap(before, image, brain)
    np.testing.assert_allclose(heat, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())
    assert nll == pytest.approx(expected_nll) and heat.max() > 0
    output = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1")
    assert not np.allclose(gradcam_heatmap(output, image, brain)[0], heat)
    assert "(input)" in at_input.settings()


@pytest.mark.parametrize("per_level, signed", [(False, False), (True, False), (False, True), (True, True)])
def test_rectification_and_sign_of_the_product_are_wired_as_named(setup, per_level, signed):
    """The heatmap from captum's pieces by hand: per-level Grad-CAM maps (unrectified), rectified per level or
    after their sum, times the guided gradient, summed over channels signed or in absolute value."""
    image, brain = _anomalous_image(setup), brain_mask()
    detector = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1",
                              rectify_per_level=per_level, signed_product=signed)
    x = torch.from_numpy(image)[None].requires_grad_(True)
    cams = LayerGradCam(detector.nll, detector.layer).attribute(x, relu_attributions=False)  # (L, 1, ...)
    cam = torch.relu(cams).sum(0) if per_level else torch.relu(cams.sum(0))
    guided = GuidedSiluBackprop(detector.nll).attribute(x)[0]
    product = (cam * guided).sum(0) if signed else (cam * guided).abs().sum(0)
    expected = np.where(brain, product.detach().numpy(), 0.0)
    heat = gradcam_heatmap(detector, image, brain)[0]
    np.testing.assert_allclose(heat, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    if signed:
        assert (heat < 0).any() and (heat > 0).any()
    else:
        assert (heat >= 0).all()


def test_auto_layer_is_the_last_decoder_block_and_an_unknown_layer_is_named(setup):
    assert build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "auto").layer_name == "unet.up_blocks.1"
    with pytest.raises(InputError, match=r"no module 'unet\.up_blocks\.9'.*unet\.up_blocks\.1"):
        build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.9")


def test_write_heatmaps_from_files(setup, tmp_path):
    rng = np.random.default_rng(5)
    images, masks = [], []
    for i in range(2):
        images.append(tmp_path / f"sub-{i:02d}.nii.gz")
        masks.append(tmp_path / f"sub-{i:02d}_brainmask.nii.gz")
        image = make_image(rng)
        image[:, 5:9, 6:10, 6:10] += 1.0
        io.write_channels(image, AFFINE, images[-1])
        io.write_nifti(brain_mask(), AFFINE, masks[-1])
    cfg = {"n_levels": None, "layer": "unet.up_blocks.1", "device": "cpu"}
    detector = load_gradcam_detector(setup["model_path"], setup["out"] / "gmm.npz", cfg)
    write_set_heatmaps(detector, images, masks, tmp_path / "heat")
    assert sorted(p.name for p in (tmp_path / "heat").iterdir()) == ["sub-00.nii.gz", "sub-01.nii.gz"]
    img = nib.load(tmp_path / "heat" / "sub-01.nii.gz")
    assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
    data = np.asarray(img.dataobj)
    assert (data[~brain_mask()] == 0).all() and data.max() > 0
