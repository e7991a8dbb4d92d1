"""VE-SDE schedule, DSM loss against an analytic score, and the automatic sigma_min / sigma_max."""

import math

import numpy as np
import pytest
import torch

from spatial_msma.io import InputError
from spatial_msma.score.sde import SIGMA_MIN_FLOOR, VESDE, auto_sigmas, dsm_loss, estimate_noise_sd, estimate_sigma_max

torch.set_num_threads(1)


def test_schedule_endpoints_and_geometric_levels():
    sde = VESDE(0.06, 545.0)
    assert float(sde.sigma(torch.tensor(0.0))) == pytest.approx(0.06)
    assert float(sde.sigma(torch.tensor(1.0))) == pytest.approx(545.0, rel=1e-6)
    levels = sde.levels(20, 0.1, 1.0)
    assert levels[0] == pytest.approx(float(sde.sigma(torch.tensor(0.1))), rel=1e-5)
    assert levels[-1] == pytest.approx(545.0, rel=1e-5)
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0], rtol=1e-4) and ratios[0] > 1
    assert sde.t_of_sigma(float(levels[5])) == pytest.approx(0.1 + 5 * 0.9 / 19, rel=1e-5)
    t = sde.sample_t(1000, torch.Generator().manual_seed(0))
    assert float(t.min()) >= sde.t_eps and float(t.max()) <= 1.0
    lognormal = sde.sample_t(20000, torch.Generator().manual_seed(0), "lognormal", -1.2, 1.2)
    assert float(lognormal.min()) == pytest.approx(sde.t_eps) and float(lognormal.max()) <= 1.0
    sig = sde.sigma(lognormal.double())
    assert float(sig.median()) == pytest.approx(math.exp(-1.2), rel=0.05)  # the median of the log-normal
    assert float((sig < 1.3).double().mean()) > 0.7  # most training where the MSMA levels are
    mixed = sde.sample_t(20000, torch.Generator().manual_seed(0), "lognormal", -1.2, 1.2, 0.25)
    assert float((mixed > 0.9).double().mean()) == pytest.approx(0.25 * 0.1, abs=0.006)  # from the uniform share
    assert float((lognormal > 0.9).double().mean()) < 0.001
    with pytest.raises(InputError, match="t_sampling"):
        sde.sample_t(3, torch.Generator(), "beta")
    with pytest.raises(InputError):
        VESDE(1.0, 0.5)
    with pytest.raises(InputError):
        sde.levels(5, 0.8, 0.1)


def test_dsm_loss_of_the_true_score_of_gaussian_data():
    """x ~ N(0, s0^2): the noised density is N(0, s0^2 + sigma^2), whose score -x / (s0^2 + sigma^2)
    minimises DSM with expected per-voxel loss s0^2 / (s0^2 + sigma^2)."""
    gen = torch.Generator().manual_seed(0)
    s0 = 0.7
    x = s0 * torch.randn(4, 2, 24, 24, 24, generator=gen)
    z = torch.randn(x.shape, generator=gen)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0])

    def true_score(xt, sig):
        return -xt / (s0**2 + sig.reshape(-1, 1, 1, 1, 1) ** 2)

    expected = float(torch.mean(s0**2 / (s0**2 + sigma**2)))
    loss = dsm_loss(true_score, x, sigma, z, "mean")
    assert float(loss) == pytest.approx(expected, rel=0.02)
    n_voxels = x[0].numel()
    assert float(dsm_loss(true_score, x, sigma, z, "sum")) == pytest.approx(float(loss) * n_voxels, rel=1e-5)
    # a wrong score costs more; the zero score costs E||z||^2 = 1 per voxel
    worse = dsm_loss(lambda xt, sig: 0.5 * true_score(xt, sig), x, sigma, z, "mean")
    assert float(worse) > float(loss)
    assert float(dsm_loss(lambda xt, sig: torch.zeros_like(xt), x, sigma, z, "mean")) == pytest.approx(
        float(z.pow(2).mean()), rel=1e-6
    )
    with pytest.raises(InputError, match="loss_reduction"):
        dsm_loss(true_score, x, sigma, z, "max")


def _phantom(rng, noise_sd, shape=(32, 32, 32)):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = (g**2).sum(0) < 0.8
    smooth = 0.4 * np.cos(2 * g[0]) + 0.3 * g[1] * g[2]
    image = np.stack([np.where(mask, smooth + rng.normal(0, noise_sd, shape), -1.0),
                      np.where(mask, -smooth + rng.normal(0, noise_sd, shape), -1.0)]).astype(np.float32)
    return image, mask


def test_noise_sd_is_recovered_inside_the_brain_only():
    rng = np.random.default_rng(0)
    for noise_sd in (0.02, 0.05, 0.1):
        image, mask = _phantom(rng, noise_sd)
        assert estimate_noise_sd(image, mask) == pytest.approx(noise_sd, rel=0.1)
    with pytest.raises(InputError, match="interior"):
        estimate_noise_sd(image, np.zeros_like(mask))


def test_sigma_max_is_the_99th_percentile_of_pairwise_distances():
    images = np.zeros((3, 1, 2, 2, 2), np.float32)
    images[1] += 1.0  # distance to 0: sqrt(8)
    images[2] += 3.0  # distances: 3 sqrt(8) and 2 sqrt(8)
    expected = np.percentile(np.sqrt(8) * np.array([1.0, 3.0, 2.0]), 99)
    assert estimate_sigma_max(images) == pytest.approx(expected)
    with pytest.raises(InputError):
        estimate_sigma_max(images[:1])


def test_auto_sigmas_use_the_noise_sd_and_record_what_was_measured():
    rng = np.random.default_rng(1)
    pairs = [_phantom(rng, 0.05) for _ in range(4)]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    smin, smax, measured = auto_sigmas(images, masks, "auto", "auto", 3, np.random.default_rng(0))
    assert smin == pytest.approx(0.05, rel=0.1)
    assert measured["n_images_used"] == 3
    assert measured["brain_intensity_sd_mean"] > 2 * smin  # the paper's definition is larger
    assert smax == measured["sigma_max_auto"] > 1.0
    fixed = auto_sigmas(images, masks, 0.06, 545.0, 3, np.random.default_rng(0))
    assert fixed[:2] == (0.06, 545.0) and "sigma_min_auto" not in fixed[2]
    clean = [np.where(m, 0.0, -1.0)[None].repeat(2, 0).astype(np.float32) for m in masks]
    assert auto_sigmas(clean, masks, "auto", 10.0, 3, np.random.default_rng(0))[0] == SIGMA_MIN_FLOOR
    with pytest.raises(InputError, match="sigma_min"):
        auto_sigmas(images, masks, -1.0, 10.0, 3, np.random.default_rng(0))
