"""Spatial-MSMA heatmaps: per-voxel negative log-likelihood of the patch score norms, brain-masked.

A heatmap has the grid and affine of the input (the cropped template space), holds the NLL in nats of
the standardised log norms at every in-brain voxel (values may be negative: a density above 1) and 0
outside the brain. By default (``heatmap_jacobian: false``) the per-voxel constants of the density are
left out: the flow's log-Jacobian of ``input_norm: voxel`` (-sum log s_p) and the voxel Gaussian's
0.5 log|cov_p|. They depend on the voxel alone, so they add the healthy cohort's variability map (high at
tissue borders) to every image, lesion or not; leaving them out raised the lesioned-validation voxel
AUROC of both models (benchmarks/README.md, "How the defaults were chosen").

One-sided scoring (``one_sided: true``, the default): each level is scored at max(f, typical f), where
the typical value is the model's conditional mode (the flow's heaviest base mode pushed through the
flow; the voxel Gaussian's mean), so norms LOWER than expected no longer count as anomalous. Why: the
lesion signal of the score norms is one-sided (higher norms, shared by all low levels), and a two-sided
NLL loses much of its AUROC to the healthy regions whose norms are lower than typical. One-sided scoring
won on synthetic caches with that structure and on the lesioned validation split (benchmarks/README.md).
Caveat: if lesions raise only SOME levels (breaking the cross-level pattern), two-sided wins, so check it
on the lesioned validation set of real data (``one_sided: false`` switches it off).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from scipy import ndimage

from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.data import SubjectData, load_subject
from spatial_msma.flow.gaussian import VoxelGaussian, voxel_gaussian_from_payload
from spatial_msma.flow.model import SpatialFlow, flow_from_payload, load_payload
from spatial_msma.io import InputError
from spatial_msma.score.cache import CacheSet, cache_path, read_manifest
from spatial_msma.training import resolve_device

if TYPE_CHECKING:
    from spatial_msma.detector import Case

DensityModel = SpatialFlow | VoxelGaussian


def load_density_model(path: str | os.PathLike) -> tuple[DensityModel, FlowConfig]:
    """Read a flow or voxel-Gaussian model file; returns the model and the config it was trained with."""
    payload = load_payload(path)
    cfg = FlowConfig.from_dict(payload["config"])
    model = flow_from_payload(payload) if payload["kind"] == "flow" else voxel_gaussian_from_payload(payload)
    return model, cfg


@torch.no_grad()
def flow_space_mode_map(model: SpatialFlow, index: np.ndarray, g: torch.Tensor | None, chunk: int, stride: int,
                        device: torch.device) -> np.ndarray:
    """The flow's typical point (flow input units) at voxels ``index`` (N, 3), for the one-sided score.

    Pushing the base mode through autoregressive layers costs D passes per layer, ~10x a density
    evaluation, so with ``stride`` > 1 it is evaluated only on the lattice of every ``stride``-th voxel
    (the corners of the cells holding ``index``) and interpolated trilinearly (``ndimage.map_coordinates``).
    The interpolated quantity is the flow-space mode, which varies only through the context; with
    ``input_norm: voxel`` the exact per-voxel mean/SD are applied afterwards.
    """

    def evaluate(points: np.ndarray) -> np.ndarray:
        parts = []
        for s in range(0, len(points), chunk):
            idx = torch.from_numpy(points[s:s + chunk]).to(device)
            context = model.context(idx, g.expand(len(idx), -1) if g is not None else None)
            parts.append(model.flow_space_mode(context, len(idx)).cpu().numpy())
        return np.concatenate(parts)

    if stride == 1:
        return evaluate(index)
    lower = index // stride
    corners = np.unique((lower[:, None, :] + np.indices((2, 2, 2)).reshape(3, 8).T[None]).reshape(-1, 3), axis=0)
    values = evaluate(corners * stride)
    coarse = np.zeros((values.shape[1], *(corners.max(0) + 1)), dtype=np.float32)
    coarse[(slice(None), *corners.T)] = values.T
    coords = (index / stride).T
    return np.stack([ndimage.map_coordinates(level, coords, order=1) for level in coarse], axis=1)


@torch.no_grad()
def subject_heatmap(model: DensityModel, subject: SubjectData, one_sided: bool, chunk: int,
                    device: torch.device | None = None, mode_stride: int = 1, jacobian: bool = True) -> np.ndarray:
    """(X, Y, Z) float32 NLL map of one subject (0 outside its brain mask); the flow runs on ``device``
    (default CPU); ``mode_stride``: see :func:`flow_space_mode_map`; ``jacobian``: keep the per-voxel
    constants of the density (flow ``heatmap_jacobian``)."""
    meta = model.meta
    x = (subject.features - np.asarray(meta.feature_mean, np.float32)) / np.asarray(meta.feature_std, np.float32)
    out = np.zeros(subject.mask.shape, dtype=np.float32)
    if isinstance(model, VoxelGaussian):
        nll = np.concatenate([model.nll(x[s:s + chunk], subject.index[s:s + chunk], one_sided, jacobian)
                              for s in range(0, len(x), chunk)])
    else:
        device = device or torch.device("cpu")
        model = model.to(device).eval()
        g = model.image_features(torch.from_numpy(subject.image[None]).to(device))
        mode = flow_space_mode_map(model, subject.index, g, chunk, mode_stride, device) if one_sided else None
        parts = []
        for s in range(0, len(x), chunk):
            xb = torch.from_numpy(x[s:s + chunk]).to(device)
            index = torch.from_numpy(subject.index[s:s + chunk]).to(device)
            context = model.context(index, g.expand(len(xb), -1) if g is not None else None)
            typical = None if mode is None else model.from_flow_space(torch.from_numpy(mode[s:s + chunk]).to(device),
                                                                       index)
            parts.append(model.score(xb, index, context, typical, jacobian).cpu().numpy())
        nll = np.concatenate(parts)
    if not np.isfinite(nll).all():
        raise FloatingPointError(f"heatmap of {subject.name}: non-finite NLL at {int((~np.isfinite(nll)).sum())} "
                                 "voxels")
    i, j, k = subject.index.T
    out[i, j, k] = nll
    return out


@dataclass(frozen=True)
class FlowDetector:
    """A trained flow or voxel-Gaussian model, the scoring keys of the ``flow`` section, and the score-norm
    cache of the set it scores (a case's norms are its subject's file in the set's manifest).

    From the scoring config only ``one_sided``, ``mode_stride``, ``heatmap_jacobian``, ``chunk_voxels`` and
    ``device`` are used; the model file itself says whether it is a flow or the voxel Gaussian, and which
    features and levels it expects.
    """

    model: DensityModel
    train_cfg: FlowConfig
    scoring: FlowConfig
    norms: CacheSet
    device: torch.device
    steps_per_image: ClassVar[int] = 1

    @classmethod
    def load(cls, model_path: str | os.PathLike, cfg: FlowConfig | Mapping[str, Any] | None,
             norms_manifest: str | os.PathLike) -> FlowDetector:
        model, train_cfg = load_density_model(model_path)
        scoring = cfg if isinstance(cfg, FlowConfig) else FlowConfig.from_dict(cfg)
        return cls(model, train_cfg, scoring, read_manifest(norms_manifest), resolve_device(scoring.device))

    @property
    def label(self) -> str:
        return f"{type(self.model).__name__} heatmaps"

    def settings(self) -> str:
        s = self.scoring
        return (f"one_sided={s.one_sided}, jacobian={s.heatmap_jacobian}, mode_stride {s.mode_stride}, "
                f"{len(self.model.meta.levels)} levels, device {self.device}")

    def heatmap(self, case: Case) -> np.ndarray:
        if case.image_id not in self.norms.subjects:
            raise InputError(f"score-norm manifest {self.norms.manifest}: no subject {case.image_id}")
        norm_path = cache_path(self.norms.manifest, case.image_id)
        subject = load_subject(norm_path, case.image_path, np.asarray(self.model.meta.levels),
                               self.train_cfg.log_transform, self.train_cfg.log_eps)
        self.model.meta.check_compatible(subject.sigmas, subject.mask.shape, subject.affine,
                                         f"score-norm cache {norm_path}")
        if not np.array_equal(subject.mask, case.brain):
            raise InputError(f"score-norm cache {norm_path}: its mask differs from the brain mask of {case.image_id}")
        s = self.scoring
        return subject_heatmap(self.model, subject, s.one_sided, s.chunk_voxels, self.device, s.mode_stride,
                               s.heatmap_jacobian)
