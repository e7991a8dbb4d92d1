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

import numpy as np

from spatial_msma.io import InputError, read_channels
from spatial_msma.score.cache import AFFINE_ATOL, NormCache, read_manifest, read_norm_cache


def level_selection(sigmas: np.ndarray, max_sigma: float | None) -> np.ndarray:
    """Indices of the noise levels the model uses: all, or those with sigma <= ``max_sigma``.

    The lesion signal can sit at the low levels only, and then adding the high ones hurts (as it did before
    this workflow, see benchmarks/README.md), so ``max_sigma`` lets a config drop them without recomputing
    the cache.
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


def load_subject(norm_path: str | os.PathLike, image_path: str | os.PathLike, levels: np.ndarray,
                 log_transform: bool, log_eps: float) -> SubjectData:
    """Read one (norm cache, image) pair: see :func:`subject_data`."""
    return subject_data(read_norm_cache(norm_path), image_path, levels, log_transform, log_eps)


def subject_data(cache: NormCache, image_path: str | os.PathLike, levels: np.ndarray, log_transform: bool,
                 log_eps: float) -> SubjectData:
    """One image's features at the level indices ``levels``, after checking that the image lies on the
    cache's grid. Training picks the levels once (:func:`level_selection`) and stores them in the model, so
    scoring uses the same ones."""
    image, img_affine = read_channels(image_path)
    if image.shape[1:] != cache.mask.shape:
        raise InputError(f"image {image_path}: grid {image.shape[1:]} != score-norm grid {cache.mask.shape} "
                         f"of {cache.path}")
    if not np.allclose(img_affine, cache.affine, atol=AFFINE_ATOL):
        raise InputError(f"image {image_path}: affine differs from the one in {cache.path}")
    if levels.max() >= cache.sigmas.size:
        raise InputError(f"score-norm cache {cache.path}: has {cache.sigmas.size} levels, the model uses "
                         f"level indices up to {int(levels.max())}")
    index = np.argwhere(cache.mask).astype(np.int64)
    norms = cache.patch_norms[levels][:, cache.mask].T  # (N, L')
    features = transform_norms(norms, log_transform, log_eps)
    return SubjectData(cache.subject, np.ascontiguousarray(features), index, image, cache.mask, cache.affine,
                       cache.sigmas)


def load_subjects(manifest: str | os.PathLike, image_paths: Sequence[str | os.PathLike],
                  log_transform: bool, log_eps: float, levels: np.ndarray | None = None,
                  max_sigma: float | None = None) -> list[SubjectData]:
    """Load the set a score-norm manifest lists, with its images in the same order; all share one grid,
    affine and list of sigmas (:meth:`~spatial_msma.score.cache.CacheSet.caches` checks it)."""
    caches = read_manifest(manifest)
    if len(caches) != len(image_paths):
        raise InputError(f"flow: {len(caches)} score-norm files in {manifest} but {len(image_paths)} images")
    if not len(caches):
        raise InputError(f"flow: no subjects in {manifest}")
    subjects: list[SubjectData] = []
    for cache, image_path in zip(caches.caches(), image_paths, strict=True):
        if levels is None:
            levels = level_selection(cache.sigmas, max_sigma)
        subjects.append(subject_data(cache, image_path, levels, log_transform, log_eps))
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
