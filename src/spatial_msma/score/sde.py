"""The continuous variance-exploding SDE: sigma schedule, denoising score matching loss, sigma_min/max from data.

sigma(t) = sigma_min * (sigma_max / sigma_min) ** t for t in [eps, 1] (Song et al. 2021). The loss is the
DSM objective E_t E_x E_z || sigma(t) s(x + sigma(t) z, sigma(t)) + z ||^2, i.e. the usual lambda(sigma) =
sigma^2 weighting that makes every noise level contribute on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spatial_msma.io import InputError

LOSS_REDUCTIONS = ("mean", "sum")
T_SAMPLINGS = ("uniform", "lognormal")

#: Lower bound for an automatic sigma_min (0.5 % of the [-1, 1] intensity range): a noise-free image
#: would otherwise give sigma_min ~ 0 and a schedule whose lowest levels no network can fit.
SIGMA_MIN_FLOOR = 0.01

#: Values (float64) of the differences :func:`estimate_sigma_max` holds at once: 32 MB.
PAIRWISE_CHUNK_VALUES = 1 << 22

#: 1 / Phi^-1(3/4): converts a median absolute deviation of Gaussian samples to their SD.
MAD_TO_SD = 1.0 / 0.6744897501960817


@dataclass(frozen=True)
class VESDE:
    """The noise schedule; ``t_eps`` keeps t away from 0 as in the authors' code (1e-5)."""

    sigma_min: float
    sigma_max: float
    t_eps: float = 1e-5

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise InputError(f"score: need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_sigma(self, sigma: float) -> float:
        return math.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def sample_t(
        self, n: int, generator: torch.Generator, kind: str = "uniform", log_sigma_mean: float = -1.2,
        log_sigma_std: float = 1.2, uniform_fraction: float = 0.0,
    ) -> torch.Tensor:
        """Training times from an explicit generator (CPU), so the draw is part of the resumable RNG state.

        ``uniform``: t ~ U[eps, 1] (the paper). ``lognormal``: log sigma ~ N(mean, std) (Karras et al. 2022),
        mapped to t and clipped to [eps, 1], except a ``uniform_fraction`` of the draws that stay uniform in
        t so the high levels (which samplers start from) are still trained. It puts the training where the
        MSMA levels are (sigma 0.05 to about 1 on [-1, 1] images). Every sigma keeps a positive density, and
        the DSM minimiser at each sigma does not depend on how often sigma is drawn: this changes where
        capacity goes, not what is estimated.
        """
        uniform = self.t_eps + (1.0 - self.t_eps) * torch.rand(n, generator=generator)
        if kind == "uniform":
            return uniform
        if kind != "lognormal":
            raise InputError(f"config score.t_sampling: expected one of {T_SAMPLINGS}, got {kind!r}")
        log_sigma = log_sigma_mean + log_sigma_std * torch.randn(n, generator=generator)
        t = (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        keep_uniform = torch.rand(n, generator=generator) < uniform_fraction
        return torch.where(keep_uniform, uniform, t.clamp(self.t_eps, 1.0))

    def levels(self, n_levels: int, t_min: float, t_max: float) -> np.ndarray:
        """``n_levels`` sigmas, geometric between sigma(t_min) and sigma(t_max) (ascending), float32."""
        if n_levels < 1 or not 0.0 <= t_min <= t_max <= 1.0:
            raise InputError(f"score_norms: need n_levels >= 1 and 0 <= t_min <= t_max <= 1, got "
                             f"{n_levels}, {t_min}, {t_max}")
        t = np.linspace(t_min, t_max, n_levels) if n_levels > 1 else np.array([t_min])
        return (self.sigma_min * (self.sigma_max / self.sigma_min) ** t).astype(np.float32)


def dsm_loss(
    score_fn,
    x: torch.Tensor,
    sigma: torch.Tensor,
    z: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-batch DSM loss || sigma s(x + sigma z, sigma) + z ||^2: ``reduction`` over voxels, mean over the batch.

    ``"sum"`` is the paper's formula; ``"mean"`` (the authors' code) divides it by the number of voxels
    x channels, which keeps gradient norms comparable across image sizes (and grad clipping meaningful).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise InputError(f"config score.loss_reduction: expected one of {LOSS_REDUCTIONS}, got {reduction!r}")
    shape = (-1,) + (1,) * (x.ndim - 1)
    s = sigma.reshape(shape)
    residual = s * score_fn(x + s * z, sigma) + z
    per_sample = residual.pow(2).flatten(1)
    per_sample = per_sample.sum(1) if reduction == "sum" else per_sample.mean(1)
    return per_sample.mean()


def estimate_sigma_max(images: np.ndarray, percentile: float = 99.0) -> float:
    """The ``percentile`` of pairwise Euclidean distances between images (Song & Ermon 2020, technique 1).

    ``images`` is (N, ...) float; N >= 2. Each distance is sqrt(sum((a - b)^2)) in float64 with numpy's
    pairwise summation, whose order is fixed by the code: the same bits on every CPU. Not the Gram-matrix
    trick (||a||^2 - 2 a.b + ||b||^2) of sklearn's ``pairwise_distances``: its BLAS product depends on the
    kernel OpenBLAS picks for the CPU (``OPENBLAS_CORETYPE`` SkylakeX vs Haswell changed the last bits of
    sigma_max, which the model file stores), and it loses precision to cancellation.
    """
    if len(images) < 2:
        raise InputError("score.sigma_max: auto needs at least 2 training images")
    flat = images.reshape(len(images), -1)  # float64 a chunk at a time: the images once, not twice more
    rows = max(1, PAIRWISE_CHUNK_VALUES // flat.shape[1])
    upper = []  # the upper triangle, row by row (np.triu_indices' order)
    for i in range(len(flat) - 1):
        image = flat[i].astype(np.float64)
        for start in range(i + 1, len(flat), rows):
            diff = flat[start:start + rows].astype(np.float64) - image
            upper.append(np.sqrt((diff * diff).sum(axis=1)))
    return float(np.percentile(np.concatenate(upper), percentile))


def estimate_noise_sd(image: np.ndarray, mask: np.ndarray) -> float:
    """Robust SD of the voxel noise of one (C, X, Y, Z) image inside its brain mask (median over channels).

    Donoho's wavelet estimator in 3D: the finest Haar detail band HHH (the tensor product of [1, -1] on all
    three axes, undecimated) is blind to any signal that is constant along at least one axis, so on
    smooth anatomy it holds mostly noise; its median absolute value / 0.6745, divided by the filter norm
    sqrt(8), estimates the noise SD. Only positions whose whole 2x2x2 support lies in the brain mask count:
    ``skimage.restoration.estimate_sigma`` does the same over the whole array, where the constant
    background makes most coefficients exactly 0 and drags the median (and the estimate) to 0.
    """
    if image.ndim != 4 or image.shape[1:] != mask.shape:
        raise InputError(f"noise estimate: image {image.shape} and mask {mask.shape} do not match")
    inside = np.ones(tuple(n - 1 for n in mask.shape), bool)
    for dx, dy, dz in np.ndindex(2, 2, 2):  # the 2x2x2 support of the coefficient at each position
        inside &= mask[dx:dx + inside.shape[0], dy:dy + inside.shape[1], dz:dz + inside.shape[2]]
    if inside.sum() < 100:
        raise InputError(f"noise estimate: only {int(inside.sum())} interior brain voxels; is the mask empty?")
    sds = []
    for channel in image.astype(np.float64):
        d = channel
        for axis in range(3):
            d = np.diff(d, axis=axis)
        sds.append(MAD_TO_SD * np.median(np.abs(d[inside])) / math.sqrt(8.0))
    return float(np.median(sds))


def brain_intensity_sd(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean over channels of the in-brain intensity SD: the paper's "average standard deviation of the image
    intensities" (its sigma_min 0.06); recorded for comparison, not used as sigma_min (see
    :func:`auto_sigmas`)."""
    return float(np.mean([channel[mask].std() for channel in image]))


def auto_sigmas(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    sigma_min: float | str,
    sigma_max: float | str,
    max_images: int,
    rng: np.random.Generator,
) -> tuple[float, float, dict[str, float]]:
    """Resolve ``auto`` sigma_min / sigma_max from training images; return them and what was measured.

    sigma_max ``auto``: 99th percentile of pairwise distances between (at most ``max_images``, a seeded
    subset) training images. sigma_min ``auto``: the median over images of the estimated voxel NOISE SD
    (:func:`estimate_noise_sd`), floored at :data:`SIGMA_MIN_FLOOR`. Not the in-brain intensity SD: on
    [-1, 1]-scaled images that is several times the noise, and the lesion signal sits at the lowest levels
    (sigma of the order of the noise up to about 1), which a sigma_min that large would cut off
    (benchmarks/README.md). The paper's 0.06 is, on its scaling, of the size of the noise, which is what the
    lowest level must resolve.

    ``images`` and ``masks`` are indexed only at the picked images, so they may be sequences that read
    from disk (:class:`~spatial_msma.disk_stack.DiskStack`, :class:`~spatial_msma.score.train.BrainMasks`):
    the memory used is bounded by ``max_images``, not by the training set.
    """
    n = len(images)
    pick = np.sort(rng.choice(n, size=min(n, max_images), replace=False))
    measured: dict[str, float] = {"n_images_used": float(len(pick))}
    noise, spread = [], []
    for i in pick:  # each image and mask read once: they may be read from disk on demand
        image, mask = images[i], masks[i]
        noise.append(estimate_noise_sd(image, mask))
        spread.append(brain_intensity_sd(image, mask))
    measured["noise_sd_median"] = float(np.median(noise))
    measured["brain_intensity_sd_mean"] = float(np.mean(spread))
    if sigma_max == "auto":
        sigma_max = estimate_sigma_max(np.stack([images[i] for i in pick]))
        measured["sigma_max_auto"] = sigma_max
    if sigma_min == "auto":
        sigma_min = max(measured["noise_sd_median"], SIGMA_MIN_FLOOR)
        measured["sigma_min_auto"] = sigma_min
    for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(value, str) or not value > 0:
            raise InputError(f"config score.{key}: expected a positive number or 'auto', got {value!r}")
    return float(sigma_min), float(sigma_max), measured
