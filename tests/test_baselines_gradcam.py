"""GradCAM-MSMA for real on a tiny score network: the torch GMM equals sklearn's, the guided rule on SiLU, the
NLL equals image-level MSMA on the cache, and Guided Grad-CAM heatmaps are masked, nonzero and deterministic."""

import nibabel as nib
import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop
from sklearn.mixture import GaussianMixture
from torch import nn

from spatial_msma import io
from spatial_msma.baselines.gradcam import (
    GradcamConfig,
    GuidedSiluBackprop,
    TorchGmm,
    build_detector,
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
    np.testing.assert_allclose(setup["gmm_sigmas"], setup["sigmas"])
    detector = build_detector(setup["net"], setup["gmm"], setup["gmm_sigmas"], "unet.up_blocks.1")
    image = make_image(setup["rng"])
    _, whole = score_norms(setup["holder"], image, setup["sigmas"], "sum")
    expected = -setup["sk"].score_samples(image_features(whole[None], np.arange(3)))[0]
    with torch.no_grad():
        got = float(detector.nll(torch.from_numpy(image)[None])[0])
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


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
