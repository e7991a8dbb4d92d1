"""The per-voxel Gaussian ablation (``voxel_gaussian``): no flow, no context network.

At every voxel, the mean and full covariance of the standardised log patch norms over all training
subjects, pooled over the ``pool``^3 neighbourhood (the density model that first showed the lesion signal
in the score norms, see benchmarks/README.md). It is both a Table-1 ablation row and the yardstick the
flow's validation NLL must beat (same features, same units).
The pooled sums use ``scipy.ndimage.uniform_filter``; voxels with fewer than 2L pooled samples fall back
to the mean/covariance over all training voxels, so every in-brain voxel of a new image gets a density.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from spatial_msma.flow.data import SubjectData, SubjectVoxels
from spatial_msma.flow.model import ModelMeta, meta_from_dict, meta_to_dict
from spatial_msma.training import save_torch


@dataclass(frozen=True)
class VoxelGaussian:
    """Per-voxel N(mean, cov) of standardised features: mean (X,Y,Z,L), precision (X,Y,Z,L,L), log|cov|,
    and the per-level SD sqrt(diag cov) (X,Y,Z,L) that the flow's ``input_norm: voxel`` uses."""

    meta: ModelMeta
    mean: np.ndarray
    precision: np.ndarray
    logdet: np.ndarray
    std: np.ndarray

    def nll(self, x: np.ndarray, index: np.ndarray, one_sided: bool, logdet: bool = True) -> np.ndarray:
        """NLL (nats) of standardised features x (N, L) at voxels ``index`` (N, 3).

        ``one_sided``: the deviation below the mean is set to 0 level-wise (x scored at max(x, mean), the
        same rule as the flow's), so only norms higher than expected raise the score. ``logdet=False``
        leaves out the per-voxel 0.5 log|cov_p| (the counterpart of the flow's ``jacobian=False``).
        """
        i, j, k = index.T
        diff = x.astype(np.float64) - self.mean[i, j, k]
        if one_sided:
            diff = np.maximum(diff, 0.0)
        maha = np.einsum("nl,nlm,nm->n", diff, self.precision[i, j, k], diff)
        dim = x.shape[1]
        constant = self.logdet[i, j, k] if logdet else 0.0
        return (0.5 * (maha + constant + dim * math.log(2 * math.pi))).astype(np.float32)


def fit_voxel_gaussian(subjects: Iterable[SubjectData | SubjectVoxels], meta: ModelMeta, pool: int,
                       ridge: float) -> VoxelGaussian:
    """Pooled per-voxel mean/covariance of the standardised features of ``subjects``, read once, one at a
    time (the sums are per voxel, so memory does not grow with the number of subjects).

    ``ridge`` is added to every covariance diagonal (standardised units): pooled samples at a voxel
    are strongly correlated, so without it near-singular covariances give absurd NLLs. The fallback for
    voxels with too few pooled samples, the mean/covariance over all training voxels, comes from the same
    (unpooled) float64 sums: E[x x^T] - E[x] E[x]^T, not ``np.cov`` of all voxels stacked (which held the
    whole set in memory; its BLAS product gave other last bits).
    """
    mean_f = np.asarray(meta.feature_mean, dtype=np.float32)
    std_f = np.asarray(meta.feature_std, dtype=np.float32)
    shape = tuple(meta.shape)
    dim = len(meta.levels)
    pairs = [(a, b) for a in range(dim) for b in range(a, dim)]
    count = np.zeros(shape)
    s1 = np.zeros((dim, *shape))
    s2 = np.zeros((len(pairs), *shape))
    for subj in subjects:
        x = (subj.features - mean_f) / std_f
        i, j, k = subj.index.T
        count[i, j, k] += 1
        s1[:, i, j, k] += x.T
        for p, (a, b) in enumerate(pairs):
            s2[p, i, j, k] += x[:, a].astype(np.float64) * x[:, b]
    total = count.sum()
    global_mean = s1.sum(axis=(1, 2, 3)) / total
    global_cov = np.empty((dim, dim))
    for p, (a, b) in enumerate(pairs):
        global_cov[a, b] = global_cov[b, a] = s2[p].sum() / total - global_mean[a] * global_mean[b]
    volume = float(pool**3)

    def pooled(arr: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(arr, size=pool, mode="constant") * volume

    n = pooled(count)
    s1 = np.stack([pooled(a) for a in s1], axis=-1)  # (X,Y,Z,L)
    second = np.empty((*shape, dim, dim))
    for p, (a, b) in enumerate(pairs):
        second[..., a, b] = second[..., b, a] = pooled(s2[p])

    enough = n >= 2 * dim
    safe_n = np.where(enough, n, 1.0)[..., None]
    mean = np.where(enough[..., None], s1 / safe_n, global_mean)
    cov = second / safe_n[..., None] - mean[..., :, None] * mean[..., None, :]
    cov = np.where(enough[..., None, None], cov, global_cov)
    cov = cov + ridge * np.eye(dim)
    sign, logdet = np.linalg.slogdet(cov)
    if (sign <= 0).any():
        raise ValueError("voxel_gaussian: a covariance is not positive definite; raise flow.gaussian_ridge")
    std = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    return VoxelGaussian(meta, mean.astype(np.float32), np.linalg.inv(cov).astype(np.float32),
                         logdet.astype(np.float32), std.astype(np.float32))


def save_voxel_gaussian(model: VoxelGaussian, path: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write atomically in the same container format as the flow (``torch.save``, ``kind`` key)."""
    payload = {"kind": "voxel_gaussian", "config": config, "meta": meta_to_dict(model.meta),
               "mean": torch.from_numpy(model.mean), "precision": torch.from_numpy(model.precision),
               "logdet": torch.from_numpy(model.logdet), "std": torch.from_numpy(model.std)}
    save_torch(payload, path)


def voxel_gaussian_from_payload(payload: dict[str, Any]) -> VoxelGaussian:
    return VoxelGaussian(meta_from_dict(payload["meta"]), payload["mean"].numpy(),
                         payload["precision"].numpy(), payload["logdet"].numpy(), payload["std"].numpy())
