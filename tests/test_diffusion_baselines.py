"""The sampler-based baselines (Inpaint, Restoration) and their VE-SDE predictor-corrector sampler: analytic
scores with known answers, known-region replacement, checkerboard coverage, seeding, config errors."""

import numpy as np
import pytest
import torch
from torch import nn

from spatial_msma import io
from spatial_msma.baselines.inpaint import (
    InpaintConfig,
    InpaintDetector,
    checkerboard_masks,
    inpaint_estimate,
    run_pattern,
)
from spatial_msma.baselines.residual import ResidualDetector
from spatial_msma.baselines.restoration import RestorationConfig, RestorationDetector, restore
from spatial_msma.baselines.sampling import generators_for, pc_sample, run_seed, sigma_grid
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.io import InputError
from spatial_msma.score.network import MODEL_FORMAT, NetworkConfig, ScoreModel, ScoreNet
from spatial_msma.score.sde import VESDE

torch.set_num_threads(1)

SDE = VESDE(0.01, 50.0)


def gaussian_score(mu: float, sd: float):
    """The exact score of N(mu, sd^2) per voxel perturbed by N(0, sigma^2): -(x - mu) / (sd^2 + sigma^2)."""

    def score(x, sigma):
        return -(x - mu) / (sd**2 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)

    return score


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_sampler_recovers_a_gaussian(corrector_steps):
    mu, sd = 0.7, 0.4
    sigmas = sigma_grid(SDE, 100, 1.0)
    generators = generators_for(range(4))
    x = sigmas[0].float() * torch.stack([torch.randn(1, 16, 16, 16, generator=g) for g in generators])
    out = pc_sample(gaussian_score(mu, sd), x, sigmas, generators, corrector_steps=corrector_steps, snr=0.16)
    assert out.shape == x.shape
    assert float(out.mean()) == pytest.approx(mu, abs=0.02)
    assert float(out.std()) == pytest.approx(sd, rel=0.05)


def test_sigma_grid_runs_from_t_start_to_sigma_min_then_zero():
    sigmas = sigma_grid(SDE, 5, 0.25)
    assert len(sigmas) == 6 and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(float(SDE.sigma(torch.tensor(0.25))))
    assert float(sigmas[-2]) == pytest.approx(SDE.sigma_min)
    ratios = sigmas[:-2] / sigmas[1:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))  # geometric
    assert sigma_grid(SDE, 1, 0.5).tolist() == [pytest.approx(float(SDE.sigma(torch.tensor(0.5)))), 0.0]
    for steps, t in ((0, 0.5), (3, 0.0), (3, 1.5)):
        with pytest.raises(InputError):
            sigma_grid(SDE, steps, t)


def test_known_region_replacement_keeps_the_data_and_conditions_the_rest():
    """Pairs (a, b) ~ N(0, [[1, rho], [rho, 1]]); a is known. The known channel ends equal to the data, and
    b lands near its conditional law N(rho a, 1 - rho^2) (replacement is an approximation: loose bounds)."""
    rho, a = 0.8, 1.5
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])

    def score(x, sigma):
        precision = torch.linalg.inv(cov + float(sigma[0]) ** 2 * torch.eye(2))
        return -torch.einsum("ij,bj...->bi...", precision, x)

    sigmas = sigma_grid(SDE, 200, 1.0)
    generators = generators_for([11, 12])
    known = torch.zeros(1, 2, 4096)
    known[:, 0] = a
    mask = torch.zeros(1, 2, 4096, dtype=torch.bool)
    mask[:, 0] = True
    x = sigmas[0].float() * torch.stack([torch.randn(2, 4096, generator=g) for g in generators])
    out = pc_sample(score, x, sigmas, generators, corrector_steps=1, known=known, known_mask=mask)
    assert torch.equal(out[:, 0], known[:, 0].expand(2, -1))  # exactly the data
    b = out[:, 1]
    assert float(b.mean()) == pytest.approx(rho * a, abs=0.15)
    assert float(b.std()) == pytest.approx((1 - rho**2) ** 0.5, rel=0.25)
    # without conditioning, b would be centred on 0 with SD 1: the known channel was used
    free = pc_sample(score, x, sigmas, generators_for([11, 12]))
    assert abs(float(free[:, 1].mean())) < 0.1


@pytest.mark.parametrize("shape", [(8, 8, 8), (5, 7, 6), (3, 1, 2)])
@pytest.mark.parametrize("cube", [1, 2, 3, 4, 9])
def test_checkerboard_and_complement_cover_every_voxel_once(shape, cube):
    masks = checkerboard_masks(shape, cube)
    assert masks.shape == (2, *shape) and masks.dtype == bool
    assert (masks.sum(axis=0) == 1).all()
    # constant on each cube, alternating between face neighbours; the origin's cube comes first
    np.testing.assert_array_equal(masks[0], (np.indices(shape) // cube).sum(axis=0) % 2 == 0)
    assert masks[0][0, 0, 0]
    if shape[0] > cube:
        assert masks[0][cube, 0, 0] != masks[0][0, 0, 0]
        assert masks[0][cube - 1, 0, 0] == masks[0][0, 0, 0]


def test_blocks_per_axis_sets_one_cube_edge_per_axis():
    cfg = InpaintConfig(blocks_per_axis=3)
    assert cfg.cube_edges((40, 48, 41)) == (14, 16, 14)
    assert InpaintConfig(cube_size=5).cube_edges((40, 48, 41)) == (5, 5, 5)
    masks = checkerboard_masks((40, 48, 41), cfg.cube_edges((40, 48, 41)))
    assert (masks.sum(axis=0) == 1).all()
    # 3 x 3 x 3 blocks: 14 of the 27 in the first pattern, 13 in the second
    assert masks[0][::14, ::16, ::14].sum() == 14 and masks[1][::14, ::16, ::14].sum() == 13


class PointMass(nn.Module):
    """The exact score of a point mass at ``center`` (a model that knows the healthy image): every sampler
    path ends exactly there, which turns both baselines into known-answer problems."""

    def __init__(self, center: np.ndarray):
        super().__init__()
        self.register_buffer("center", torch.from_numpy(center).float())
        self.anchor = nn.Parameter(torch.zeros(()))  # the baselines find the device from a parameter

    def forward(self, x, sigma):
        return -(x - self.center) / sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2


def _lesioned(shape=(12, 10, 8), seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    image = clean.copy()
    image[1, 3:6, 4:7, 2:5] += 0.8  # a T2 "lesion"
    image[0, 3:6, 4:7, 2:5] -= 0.3
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    return clean, image, brain


def restoration_estimate(model, image, cfg, seed, subject="", on_step=None):
    """Restoration's healthy estimate, as its detector makes it: the mean of the runs' restorations."""
    return restore(model, image, cfg, seed, subject, on_step).mean(axis=0)


@pytest.mark.parametrize("random_offset", [False, True])
@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_inpaint_estimate_known_answer(corrector_steps, random_offset):
    """A model that knows the healthy image in-paints every hidden voxel with it: the estimate is the clean
    image, lesion removed, whatever the cube offsets."""
    clean, image, _ = _lesioned()
    model = ScoreModel(PointMass(clean), SDE, {})
    cfg = InpaintConfig(runs=4, steps=4, corrector_steps=corrector_steps, cube_size=3, batch_size=3,
                        random_offset=random_offset)
    calls = []
    estimate = inpaint_estimate(model, image, cfg, seed=1, subject="sub-a", on_step=calls.append)
    assert estimate.dtype == np.float32 and estimate.shape == image.shape
    np.testing.assert_allclose(estimate, clean, atol=1e-4)
    assert calls[-1] == cfg.runs * cfg.steps


def test_run_pairs_cover_every_voxel_once_each_with_their_own_offset():
    shape = (12, 10, 8)
    cfg = InpaintConfig(runs=6, steps=1, cube_size=3)
    patterns = [run_pattern(shape, cfg, seed=2, subject="sub-a", run=r) for r in range(cfg.runs)]
    for pair in range(3):
        assert ((patterns[2 * pair].astype(int) + patterns[2 * pair + 1]) == 1).all()
    assert not np.array_equal(patterns[0], patterns[2]) or not np.array_equal(patterns[0], patterns[4])
    fixed = InpaintConfig(runs=4, steps=1, cube_size=3, random_offset=False)
    np.testing.assert_array_equal(run_pattern(shape, fixed, 2, "sub-a", 0), run_pattern(shape, fixed, 2, "sub-a", 2))
    np.testing.assert_array_equal(run_pattern(shape, fixed, 2, "sub-a", 0), checkerboard_masks(shape, 3)[0])


@pytest.mark.parametrize("corrector_steps", [0, 2])
def test_restoration_estimate_known_answer(corrector_steps):
    clean, image, _ = _lesioned()
    model = ScoreModel(PointMass(clean), SDE, {})
    cfg = RestorationConfig(runs=3, steps=3, corrector_steps=corrector_steps, batch_size=2)
    np.testing.assert_allclose(restoration_estimate(model, image, cfg, seed=1, subject="sub-a"), clean, atol=1e-4)


SHAPE = (8, 8, 8)
NET = {"channels": [8, 8], "norm_num_groups": 4, "num_head_channels": 4}


def _net(seed=0) -> ScoreNet:
    torch.manual_seed(seed)
    net = ScoreNet(2, SHAPE, NetworkConfig.from_dict(NET))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights where the init is zero, as training would leave them
        for param in net.parameters():
            if param.abs().sum() == 0:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return net.eval()


def test_same_seed_same_bytes_and_batching_does_not_change_results():
    model = ScoreModel(_net(), VESDE(0.05, 5.0), {})
    image = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    for fn, cfg in ((inpaint_estimate, InpaintConfig(runs=4, steps=3, corrector_steps=1, cube_size=2)),
                    (restoration_estimate, RestorationConfig(runs=2, steps=3, corrector_steps=1))):
        first = fn(model, image, cfg, seed=5, subject="sub-x")
        again = fn(model, image, cfg, seed=5, subject="sub-x")
        assert first.tobytes() == again.tobytes()
        assert np.isfinite(first).all() and not np.array_equal(first, image)
        assert not np.array_equal(first, fn(model, image, cfg, seed=6, subject="sub-x"))
        assert not np.array_equal(first, fn(model, image, cfg, seed=5, subject="sub-y"))
        one_by_one = fn(model, image, type(cfg)(**{**cfg.to_dict(), "batch_size": 1}), seed=5,
                        subject="sub-x")
        np.testing.assert_allclose(one_by_one, first, rtol=1e-4, atol=1e-5)
    assert run_seed(5, "sub-x", 0, "inpaint") != run_seed(5, "sub-x", 1, "inpaint")
    assert run_seed(5, "sub-x", 0, "inpaint") != run_seed(5, "sub-x", 0, "restoration")


def test_writers_make_one_brain_masked_nifti_per_subject(tmp_path):
    net = _net()
    model_path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "network": NetworkConfig.from_dict(NET).to_dict(), "in_channels": 2,
                "image_shape": list(SHAPE), "sigma_min": 0.05, "sigma_max": 5.0, "t_eps": 1e-5,
                "state_dict": net.state_dict()}, model_path)
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    images, masks = [], []
    rng = np.random.default_rng(1)
    for subject in ("sub-01", "sub-02"):
        io.write_channels(rng.uniform(-1, 1, (2, *SHAPE)).astype(np.float32), affine, tmp_path / f"{subject}.nii.gz")
        brain = np.zeros(SHAPE, bool)
        brain[2:6, 2:6, 2:6] = True
        io.write_nifti(brain, affine, tmp_path / f"{subject}_brainmask.nii.gz")
        images.append(tmp_path / f"{subject}.nii.gz")
        masks.append(tmp_path / f"{subject}_brainmask.nii.gz")
    for name, detector_cls, cfg in (("inpaint", InpaintDetector, {"runs": 2, "steps": 2, "cube_size": 2}),
                                    ("restoration", RestorationDetector, {"runs": 2, "steps": 2})):
        out = {"table": tmp_path / name, "raw": tmp_path / f"{name}_raw"}
        detector = ResidualDetector(detector_cls.load(model_path, {**cfg, "device": "cpu"}, seed=3), "raw")
        write_set_heatmaps(detector, images, masks, out)
        for folder in out.values():
            assert sorted(p.name for p in folder.iterdir()) == ["sub-01.nii.gz", "sub-02.nii.gz"]
        written = io.load_nifti(out["raw"] / "sub-01.nii.gz")
        heat = written.get_fdata()
        np.testing.assert_array_equal(written.affine, affine)
        assert heat.shape == SHAPE and (heat[~brain] == 0).all() and heat[brain].max() > 0
        np.testing.assert_array_equal(heat, io.load_nifti(out["table"] / "sub-01.nii.gz").get_fdata())
    with pytest.raises(InputError, match="brain masks"):
        write_set_heatmaps(ResidualDetector(RestorationDetector.load(model_path, {}, seed=3), "raw"), images,
                           masks[:1], tmp_path / "bad")


@pytest.mark.parametrize("cls, section, bad, key", [
    (InpaintConfig, "inpaint", {"step": 3}, "step"),
    (InpaintConfig, "inpaint", {"runs": 1}, "inpaint.runs"),
    (InpaintConfig, "inpaint", {"cube_size": 0}, "inpaint.cube_size"),
    (InpaintConfig, "inpaint", {"t_start": 0.0}, "inpaint.t_start"),
    (InpaintConfig, "inpaint", {"snr": -1.0}, "inpaint.snr"),
    (InpaintConfig, "inpaint", {"steps": 2.5}, "inpaint.steps"),
    (InpaintConfig, "inpaint", {"blocks_per_axis": 1}, "inpaint.blocks_per_axis"),
    (RestorationConfig, "restoration", {"t_start": 1.5}, "restoration.t_start"),
    (RestorationConfig, "restoration", {"corrector_steps": -1}, "restoration.corrector_steps"),
    (RestorationConfig, "restoration", {"batch_size": 0}, "restoration.batch_size"),
    (RestorationConfig, "restoration", {"cube_size": 4}, "cube_size"),
])
def test_config_errors_name_the_key(cls, section, bad, key):
    with pytest.raises(InputError, match=key):
        cls.from_dict(bad)
    assert cls.from_dict(None) == cls()
