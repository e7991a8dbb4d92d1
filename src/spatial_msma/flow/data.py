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
from collections.abc import Callable, Iterable, Iterator, Sequence
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


@dataclass(frozen=True)
class SubjectVoxels:
    """One subject's voxels as the per-voxel Gaussian fit reads them: features (N, L') before
    standardisation and voxel indices (N, 3) int64 (a :class:`SubjectData` without its image)."""

    features: np.ndarray
    index: np.ndarray


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


def iter_subjects(manifest: str | os.PathLike, image_paths: Sequence[str | os.PathLike],
                  log_transform: bool, log_eps: float, levels: np.ndarray | None = None,
                  max_sigma: float | None = None) -> Iterator[SubjectData]:
    """The set a score-norm manifest lists, with its images in the same order, one subject at a time (a
    paper-sized set does not fit in memory); all share one grid, affine and list of sigmas
    (:meth:`~spatial_msma.score.cache.CacheSet.caches` checks it). ``levels`` None: the first cache's
    :func:`level_selection` under ``max_sigma``, used for all."""
    caches = read_manifest(manifest)
    if len(caches) != len(image_paths):
        raise InputError(f"flow: {len(caches)} score-norm files in {manifest} but {len(image_paths)} images")
    if not len(caches):
        raise InputError(f"flow: no subjects in {manifest}")
    for cache, image_path in zip(caches.caches(), image_paths, strict=True):
        if levels is None:
            levels = level_selection(cache.sigmas, max_sigma)
        yield subject_data(cache, image_path, levels, log_transform, log_eps)


def subsample_voxels(subjects: Iterable[SubjectData], n: int | None, seed: int) -> Iterator[SubjectData]:
    """Keep at most ``n`` seeded random in-brain voxels per subject (all when ``n`` is None), subject by
    subject (the ``i``-th subject's draw depends on ``seed`` and ``i`` only)."""
    for i, subj in enumerate(subjects):
        if n is None or subj.index.shape[0] <= n:
            yield subj
            continue
        keep = np.sort(np.random.default_rng([seed, 11, i]).choice(subj.index.shape[0], size=n, replace=False))
        yield dataclasses.replace(subj, features=subj.features[keep], index=subj.index[keep])


def feature_stats(blocks: Callable[[], Iterable[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-level mean and SD over every training voxel (float64 sums); SD floored so constant levels work.

    ``blocks()`` yields the subjects' (N_s, L) features one subject at a time; it is called twice (the mean,
    then the squared deviations from it), so only one subject's features are in memory. The sums run in
    subject order as over a list of all subjects: the same floats.
    """
    count, total = 0, 0
    for features in blocks():
        count += features.shape[0]
        total = total + features.sum(0, dtype=np.float64)
    mean = total / count
    var = sum(((features - mean) ** 2).sum(0, dtype=np.float64) for features in blocks()) / count
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32)
