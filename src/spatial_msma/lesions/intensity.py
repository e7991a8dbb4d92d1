"""MS-MIST's intensity model: which voxels may hold lesion, each lesion's contrast, and painting it.

Lesions go only where the subject's own image looks like white matter, take a per-lesion multiplicative
contrast per channel drawn around MS-MIST's means, blend in through smoothed borders, and get the paper's
enhancement in one of its two variants (:mod:`~spatial_msma.lesions.simulate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from spatial_msma import io
from spatial_msma.lesions.config import CHANNELS, Enhancement, LesionsConfig
from spatial_msma.lesions.grids import FineGrid, block_mean, box_start

# Voxels whose template WM prior exceeds this (inside the brain) give the subject's WM intensity statistics.
_WM_STATS_PRIOR = 0.9


def wm_intensity_filter(
    image: np.ndarray, brain: np.ndarray, wm_prior: np.ndarray, k_sd: float, channels: Sequence[str] = CHANNELS
) -> tuple[np.ndarray, dict]:
    """MS-MIST's WM threshold: voxels whose intensity lies within mean +- k sd of the subject's WM, per channel.

    The statistics come from the subject's own image where the template WM prior exceeds 0.9 (inside the
    brain), so a lesion is only painted where the tissue already looks like white matter in every
    channel, not into partial-volume GM or CSF that the prior still calls WM.
    """
    reference = brain & (wm_prior > _WM_STATS_PRIOR)
    if reference.sum() < 10:
        raise io.InputError(
            f"image: only {int(reference.sum())} brain voxels have a template WM prior > {_WM_STATS_PRIOR}; "
            "is the image in template (MNI) space?"
        )
    ok = np.ones(brain.shape, dtype=bool)
    stats = {}
    for name, channel in zip(channels, image, strict=True):
        mean, sd = float(channel[reference].mean()), float(channel[reference].std())
        ok &= np.abs(channel - mean) <= k_sd * sd
        stats[name] = (mean, sd)
    return ok, stats


def draw_contrast(rng: np.random.Generator, mean: float, sd: float, variability: float) -> float:
    """One lesion's multiplicative contrast: ``N(mean, variability * sd)``, kept on the side of 1 ``mean`` is on.

    MS-MIST's mean +- sd were measured over real lesions that are all hypointense on T1 and hyperintense
    on T2; a plain normal draw would make some lesions of the opposite kind (at the full sd, about 7 % of
    T1 and 14 % of T2 draws), which are not MS lesions, so such draws are redrawn (a truncated normal). A
    factor also stays >= 0.05 so intensities stay positive.
    """
    spread = variability * sd
    for _ in range(1000):
        value = float(rng.normal(mean, spread))
        if value >= 0.05 and (mean == 1.0 or (value < 1.0) == (mean < 1.0)):
            return value
    return float(mean)


def lesion_intensities(
    labels: np.ndarray,
    grid: FineGrid,
    cfg: LesionsConfig,
    rng: np.random.Generator,
    brain: np.ndarray,
    channels: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Per lesion: contrast draws, smoothed soft label and contrast deviation, area-averaged per working voxel.

    ``labels`` holds lesion ids 1..n on the fine grid. The lesion mask is smoothed with ``border_sigma_mm``
    at the fine grid and block-averaged, which gives partial-volume borders at the working grid; its
    deviation map is ``(c - 1)`` times that soft label for the lesion's contrast ``c`` per channel
    (:func:`draw_contrast`). Work is done in each lesion's bounding box, grown by the smoothing reach and
    aligned to whole working voxels. Returns the soft label, the deviation per channel and, per lesion,
    its table columns (contrasts, and what survives at the working grid).
    """
    k = np.asarray(grid.k)
    working_shape = brain.shape
    soft = np.zeros(working_shape, dtype=np.float32)
    deviation = np.zeros((len(channels), *working_shape), dtype=np.float32)
    sigma = cfg.border_sigma_mm / grid.voxel_mm
    margin = np.ceil(4.0 * sigma).astype(int) + 1
    working_volume = grid.voxel_volume * float(np.prod(k))
    columns = []
    for lesion_id, box in enumerate(ndi.find_objects(labels), start=1):
        lo = np.maximum((box_start(box) - margin) // k, 0)
        hi = np.minimum(-(-(np.array([s.stop for s in box]) + margin) // k), working_shape)
        fine_box = tuple(slice(int(a * kk), int(b * kk)) for a, b, kk in zip(lo, hi, k, strict=True))
        working_box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        inside = (labels[fine_box] == lesion_id).astype(np.float32)
        own = block_mean(_smooth(inside, sigma), grid.k) * brain[working_box]
        soft[working_box] += own
        row = {}
        for index, name in enumerate(channels):
            spec = cfg.contrast[name]
            contrast = draw_contrast(rng, spec.mean, spec.sd, cfg.lesion_variability_sd)
            deviation[index][working_box] += (contrast - 1.0) * own
            row[f"contrast_{name}"] = round(contrast, 4)
        survived = int((own >= cfg.mask_threshold).sum())
        row["working_voxels"] = survived
        row["volume_mm3_working"] = round(survived * working_volume, 3)
        row["survives"] = survived > 0
        columns.append(row)
    return np.minimum(soft, 1.0), deviation, columns


def _smooth(arr: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(arr, sigma, mode="constant") if np.any(sigma > 0) else arr


def apply_contrast(image: np.ndarray, soft: np.ndarray, deviation: np.ndarray, enhancement: Enhancement) -> np.ndarray:
    """Paint lesions: multiplicative contrast on ``p = (x + 1) / 2``, the chosen x1.5 variant, back to [-1, 1].

    ``deviation[c]`` is the area-averaged ``(contrast - 1) * smoothed mask`` per channel, ``soft`` the area-averaged
    lesion label; both are zero outside the brain, so voxels there keep their value.
    """
    factor, mode = enhancement.factor, enhancement.mode
    positive = (image + 1.0) / 2.0
    if mode == "contrast":
        lesioned = positive * (1.0 + factor * deviation)
    else:
        lesioned = positive * (1.0 + deviation)
    out = 2.0 * np.clip(lesioned, 0.0, 1.0) - 1.0
    if mode == "code":
        out = out * (1.0 + (factor - 1.0) * soft)
    return np.clip(out, -1.0, 1.0).astype(np.float32)
