"""Score-norm caches and images as per-voxel training/scoring data for the flow and the Gaussian ablation.

The flow models the feature vector ``f = log(patch_norm + eps)`` per voxel (one entry per noise level).
Why the log: patch score norms are positive and spread over orders of magnitude across levels (they
scale roughly like 1/sigma) and across tissue; the log makes each level roughly symmetric and puts all
levels on one additive scale, so a spline with fixed tail bounds covers them after standardisation.
The density (and the NLL heatmap) is that of the standardised log features, in nats.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spatial_msma.io import InputError, read_channels

NORM_KEYS = ("patch_norms", "image_norms", "sigmas", "mask", "affine")


@dataclass(frozen=True)
class NormCache:
    """One subject's cached score norms (the data contract's npz), validated."""

    path: Path
    patch_norms: np.ndarray  # (L, X, Y, Z) float32
    sigmas: np.ndarray  # (L,) float32
    mask: np.ndarray  # (X, Y, Z) bool
    affine: np.ndarray  # (4, 4) float64


def read_norm_cache(path: str | os.PathLike) -> NormCache:
    """Read and check a score-norm npz: keys present, shapes consistent, values finite and >= 0."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"score norms {path}: file does not exist")
    try:
        with np.load(path) as npz:
            missing = [k for k in NORM_KEYS if k not in npz.files]
            if missing:
                raise InputError(f"score norms {path}: missing key(s) {missing} (has {sorted(npz.files)})")
            norms = np.asarray(npz["patch_norms"], dtype=np.float32)
            sigmas = np.asarray(npz["sigmas"], dtype=np.float32)
            mask = np.asarray(npz["mask"]).astype(bool)
            affine = np.asarray(npz["affine"], dtype=np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"score norms {path}: unreadable npz ({type(err).__name__}: {err})") from err
    if norms.ndim != 4:
        raise InputError(f"score norms {path}: patch_norms must be (L, X, Y, Z), got {norms.shape}")
    if sigmas.shape != (norms.shape[0],):
        raise InputError(f"score norms {path}: sigmas has shape {sigmas.shape}, patch_norms has "
                         f"{norms.shape[0]} levels")
    if mask.shape != norms.shape[1:]:
        raise InputError(f"score norms {path}: mask shape {mask.shape} != patch_norms grid {norms.shape[1:]}")
    if affine.shape != (4, 4):
        raise InputError(f"score norms {path}: affine must be 4x4, got {affine.shape}")
    if not mask.any():
        raise InputError(f"score norms {path}: the brain mask is empty")
    inside = norms[:, mask]
    if not np.isfinite(inside).all() or (inside < 0).any():
        raise InputError(f"score norms {path}: patch_norms inside the mask must be finite and >= 0")
    return NormCache(path, norms, sigmas, mask, affine)


def level_selection(sigmas: np.ndarray, max_sigma: float | None) -> np.ndarray:
    """Indices of the noise levels the model uses: all, or those with sigma <= ``max_sigma``.

    The prototype found the lesion signal only at the low levels and adding the high ones hurt, so
    ``max_sigma`` lets a config drop them without recomputing the cache.
    """
    keep = np.arange(len(sigmas)) if max_sigma is None else np.flatnonzero(sigmas <= max_sigma)
    if keep.size == 0:
        raise InputError(f"flow.max_sigma: {max_sigma} keeps no level (sigmas {sigmas.tolist()})")
    return keep


def transform_norms(norms: np.ndarray, log_transform: bool, eps: float) -> np.ndarray:
    """The feature transform, applied along any trailing layout: ``log(norm + eps)`` or the norms as is."""
    norms = np.asarray(norms, dtype=np.float32)
    return np.log(norms + np.float32(eps)) if log_transform else norms


@dataclass(frozen=True)
class SubjectData:
    """One image's in-brain voxels: features (N, L') before standardisation, voxel indices (N, 3), image."""

    name: str
    features: np.ndarray
    index: np.ndarray
    image: np.ndarray  # (C, X, Y, Z) float32
    mask: np.ndarray
    affine: np.ndarray
    sigmas: np.ndarray  # all levels of the cache


def load_subject(norm_path: str | os.PathLike, image_path: str | os.PathLike, levels: np.ndarray | None,
                 log_transform: bool, log_eps: float, max_sigma: float | None = None) -> SubjectData:
    """Read one (norm cache, image) pair and check they describe the same grid.

    ``levels`` (indices) fixes the level subset; None derives it from ``max_sigma`` (training does this
    once and stores it in the model so scoring uses the same levels).
    """
    cache = read_norm_cache(norm_path)
    image, img_affine = read_channels(image_path)
    if image.shape[1:] != cache.mask.shape:
        raise InputError(f"image {image_path}: grid {image.shape[1:]} != score-norm grid {cache.mask.shape} "
                         f"of {cache.path}")
    if not np.allclose(img_affine, cache.affine, atol=1e-3):
        raise InputError(f"image {image_path}: affine differs from the one in {cache.path}")
    if levels is None:
        levels = level_selection(cache.sigmas, max_sigma)
    if levels.max() >= cache.sigmas.size:
        raise InputError(f"score norms {cache.path}: has {cache.sigmas.size} levels, the model uses "
                         f"level indices up to {int(levels.max())}")
    index = np.argwhere(cache.mask).astype(np.int64)
    norms = cache.patch_norms[levels][:, cache.mask].T  # (N, L')
    features = transform_norms(norms, log_transform, log_eps)
    return SubjectData(Path(norm_path).stem, np.ascontiguousarray(features), index, image, cache.mask,
                       cache.affine, cache.sigmas)


def load_subjects(norm_paths: Sequence[str | os.PathLike], image_paths: Sequence[str | os.PathLike],
                  log_transform: bool, log_eps: float, levels: np.ndarray | None = None,
                  max_sigma: float | None = None) -> list[SubjectData]:
    """Load a set of subjects; all must share one grid, affine and list of sigmas (one template space)."""
    if len(norm_paths) != len(image_paths):
        raise InputError(f"flow: {len(norm_paths)} score-norm files but {len(image_paths)} images")
    if not norm_paths:
        raise InputError("flow: no subjects given")
    subjects: list[SubjectData] = []
    for norm_path, image_path in zip(norm_paths, image_paths, strict=True):
        subj = load_subject(norm_path, image_path, levels, log_transform, log_eps, max_sigma)
        if levels is None:
            levels = level_selection(subj.sigmas, max_sigma)
        if subjects:
            ref = subjects[0]
            if subj.mask.shape != ref.mask.shape or not np.allclose(subj.affine, ref.affine, atol=1e-3):
                raise InputError(f"score norms {norm_path}: grid/affine differ from {norm_paths[0]}")
            if not np.allclose(subj.sigmas, ref.sigmas, rtol=1e-5):
                raise InputError(f"score norms {norm_path}: sigmas differ from {norm_paths[0]}")
        subjects.append(subj)
    return subjects


def subsample_voxels(subjects: Sequence[SubjectData], n: int | None, seed: int) -> list[SubjectData]:
    """Keep at most ``n`` seeded random in-brain voxels per subject (all when ``n`` is None)."""
    if n is None:
        return list(subjects)
    out = []
    for i, subj in enumerate(subjects):
        if subj.index.shape[0] <= n:
            out.append(subj)
            continue
        keep = np.sort(np.random.default_rng([seed, 11, i]).choice(subj.index.shape[0], size=n, replace=False))
        out.append(dataclasses.replace(subj, features=subj.features[keep], index=subj.index[keep]))
    return out


def feature_stats(subjects: Sequence[SubjectData]) -> tuple[np.ndarray, np.ndarray]:
    """Per-level mean and SD over every training voxel (float64 sums); SD floored so constant levels work."""
    count = sum(s.features.shape[0] for s in subjects)
    mean = sum(s.features.sum(0, dtype=np.float64) for s in subjects) / count
    var = sum(((s.features - mean) ** 2).sum(0, dtype=np.float64) for s in subjects) / count
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32)
