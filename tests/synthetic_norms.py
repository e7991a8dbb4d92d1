"""Test helper: synthetic score-norm sets with a known structure, for the flow's tests.

A set is written as the score stage writes it (cache files beside a manifest, through
:mod:`spatial_msma.score.cache`), with a 2-channel image per subject, for a small grid with an
ellipsoidal brain. Log patch norms per voxel and level are

    log n_l(p) = a_l + b_l * pattern(p) + c_l * s + e_l(p) [+ lesion / dip terms]

- ``pattern(p)`` a smooth function of position (so the position code carries information), plus
  ``anatomy`` x a fixed fine-grained random field (the same for every subject and set, like anatomy in
  template space: easy for a per-voxel model, hard for a smooth position code),
- ``s`` a per-subject factor that also sets the image intensity (so h(x) carries information),
- ``e(p)`` noise correlated across levels (correlation ``rho``),
- lesions (``lesioned=True``): blobs where the ``lesion_levels`` lowest levels (default: all) rise by
  ``lesion_shift`` (one-sided and shared by the low levels, as the prototype's real score norms showed),
- dips (every subject): blobs of healthy variation where all levels fall by ``dip_shift``; a two-sided
  density score flags them, a one-sided one should not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from spatial_msma.io import write_channels, write_nifti
from spatial_msma.score.cache import cache_path, write_manifest, write_norm_cache


@dataclass(frozen=True)
class SyntheticSet:
    manifest: Path
    norm_paths: list[Path]
    image_paths: list[Path]
    lesion_masks: list[np.ndarray]
    brain_mask: np.ndarray


def _blobs(shape: tuple[int, int, int], inside: np.ndarray, rng: np.random.Generator, n: int,
           radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    out = np.zeros(shape, dtype=bool)
    candidates = np.argwhere(inside)
    for _ in range(n):
        centre = candidates[rng.integers(len(candidates))]
        dist2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
        out |= dist2 <= radius**2
    return out & inside


def brain_ellipsoid(shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, np.float32) - 1) / 2
    return sum(((grid[a] - centre[a]) / (0.42 * shape[a])) ** 2 for a in range(3)) <= 1.0


def write_synthetic_set(directory: str | Path, n_subjects: int, seed: int,
                        shape: tuple[int, int, int] = (16, 24, 16), n_levels: int = 6, lesioned: bool = False,
                        lesion_shift: float = 1.5, dip_shift: float = 1.5, rho: float = 0.8,
                        lesion_levels: int | None = None, n_blobs: int = 2, radius: float = 2.5,
                        anatomy: float = 0.0,
                        prefix: str = "sub") -> SyntheticSet:
    """Write ``n_subjects`` (cache, image) pairs and the set's manifest under ``directory``; same seed -> same
    files."""
    directory = Path(directory)
    manifest = directory / "score_norms" / "manifest.tsv"
    rng = np.random.default_rng(seed)
    mask = brain_ellipsoid(shape)
    grid = np.indices(shape).astype(np.float32) / np.asarray(shape, np.float32)[:, None, None, None]
    pattern = np.sin(2 * np.pi * grid[0]) + np.cos(2 * np.pi * grid[1]) * grid[2]
    field = ndimage.gaussian_filter(np.random.default_rng(list(shape)).normal(size=shape), 1.0)
    pattern = pattern + anatomy * (field / field.std())
    levels = np.arange(n_levels, dtype=np.float32)
    a = 1.5 - 0.5 * levels  # norms fall with sigma
    b = np.linspace(0.8, 0.2, n_levels, dtype=np.float32)
    c = np.full(n_levels, 0.5, dtype=np.float32)
    sigmas = np.geomspace(0.06, 5.0, n_levels).astype(np.float32)
    cov = rho * np.ones((n_levels, n_levels)) + (1 - rho) * np.eye(n_levels)
    chol = np.linalg.cholesky(0.3 * cov).astype(np.float32)
    low = levels < (n_levels if lesion_levels is None else lesion_levels)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-30.0, -40.0, -20.0]
    names = [f"{prefix}-{i:03d}" for i in range(n_subjects)]
    norm_paths, image_paths, lesions = [], [], []
    for name in names:
        s = rng.normal()
        noise = np.einsum("lk,k...->l...", chol, rng.normal(size=(n_levels, *shape)).astype(np.float32))
        logn = a[:, None, None, None] + b[:, None, None, None] * pattern + c[:, None, None, None] * s + noise
        dips = _blobs(shape, mask, rng, n_blobs, radius)
        logn[:, dips] -= dip_shift
        lesion = _blobs(shape, mask & ~dips, rng, n_blobs, radius) if lesioned else np.zeros(shape, bool)
        logn[:, lesion] += np.where(low, lesion_shift, 0.0).astype(np.float32)[:, None]
        norms = np.exp(logn).astype(np.float16)
        norms[:, ~mask] = 0
        image = np.stack([0.5 * s + 0.3 * pattern, -0.5 * s + 0.2 * grid[2]]).astype(np.float32)
        image += 0.05 * rng.normal(size=image.shape).astype(np.float32)
        image[:, ~mask] = -1.0
        norm_path = cache_path(manifest, name)
        image_path = directory / "images" / f"{name}.nii.gz"
        write_norm_cache(norm_path, norms, np.sqrt((norms.astype(np.float32) ** 2).sum((1, 2, 3))), sigmas, mask,
                         affine)
        write_channels(image, affine, image_path)
        if lesioned:
            write_nifti(lesion, affine, directory / "lesions" / f"{name}_mask.nii.gz")
        norm_paths.append(norm_path)
        image_paths.append(image_path)
        lesions.append(lesion)
    write_manifest(manifest, names, image_paths)
    return SyntheticSet(manifest, norm_paths, image_paths, lesions, mask)
