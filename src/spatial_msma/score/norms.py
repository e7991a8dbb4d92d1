"""Multiscale score norms (the MSMA features), cached per image.

For an image x and noise level sigma_i the network's score is evaluated at the CLEAN image (no noise
added). The sigma-scaled score sigma_i s(x, sigma_i) is reduced over channels (signed sum, the authors'
choice, or the Euclidean norm) and then L2-normed over each 3x3x3 neighbourhood (stride 1, zero padding 1):
an L-vector per voxel, the "patch score norm". The whole-image norm per level is the L2 norm of the
sigma-scaled score over all channels and voxels (MSMA's image feature, independent of the channel switch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spatial_msma import io
from spatial_msma.io import InputError, as_path_list, check_number, config_section
from spatial_msma.progress import Progress
from spatial_msma.score.cache import cache_path, write_manifest, write_norm_cache
from spatial_msma.score.network import ScoreModel, load_score_model
from spatial_msma.training import resolve_device

CHANNEL_REDUCTIONS = ("sum", "norm")
CACHE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class NormsConfig:
    """The ``score_norms`` config section. ``batch_levels`` 0 sends all levels through the net at once.

    On a GPU that is fastest; on CPU chunks of a few levels win: at batch 1 torch takes its slow conv3d path
    for small inputs, and a batch of every level's full volume no longer fits the CPU cache.

    ``zero_outside_mask`` stores 0 outside the brain mask: no consumer reads those voxels, and runs of zeros
    compress, so the cache shrinks severalfold (what matters at the paper's scale).
    """

    n_levels: int = 10
    t_min: float = 0.01
    t_max: float = 0.8
    channel_reduction: str = "sum"
    dtype: str = "float16"
    batch_levels: int = 0
    zero_outside_mask: bool = True
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> NormsConfig:
        out = cls(**config_section(cls, cfg, "score_norms"))  # type: ignore[arg-type]
        if out.channel_reduction not in CHANNEL_REDUCTIONS:
            raise InputError(f"config score_norms.channel_reduction: expected one of {CHANNEL_REDUCTIONS}, "
                             f"got {out.channel_reduction!r}")
        if out.dtype not in CACHE_DTYPES:
            raise InputError(f"config score_norms.dtype: expected one of {CACHE_DTYPES}, got {out.dtype!r}")
        check_number(out.batch_levels, "score_norms.batch_levels", 0, integer=True)
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def patch_norms(scaled_score: torch.Tensor, channel_reduction: str = "sum") -> torch.Tensor:
    """(L, C, X, Y, Z) sigma-scaled scores -> (L, X, Y, Z) L2 norms over 3x3x3 neighbourhoods.

    ``sum``: the channels are added (signed) first, so a T1 and a T2 deviation of opposite sign can
    cancel, as in the authors' code; ``norm``: squared channels are added, nothing cancels.
    """
    if channel_reduction == "sum":
        squared = scaled_score.sum(1, keepdim=True).pow(2)
    elif channel_reduction == "norm":
        squared = scaled_score.pow(2).sum(1, keepdim=True)
    else:
        raise InputError(f"channel_reduction: expected one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}")
    summed = F.avg_pool3d(squared, kernel_size=3, stride=1, padding=1, count_include_pad=True) * 27.0
    return summed.clamp_min(0.0).sqrt()[:, 0]


def image_norms(scaled_score: torch.Tensor) -> torch.Tensor:
    """(L, C, X, Y, Z) -> (L,) L2 norm over every channel and voxel."""
    return scaled_score.flatten(1).norm(dim=1)


@torch.no_grad()
def score_norms(
    model: ScoreModel, image: np.ndarray, sigmas: np.ndarray, channel_reduction: str, batch_levels: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Patch norms (L, X, Y, Z) and image norms (L,) of one clean (C, X, Y, Z) image, float32.

    The L levels go through the network as one batch (or chunks of ``batch_levels``): one forward pass
    per chunk instead of one per level.
    """
    net = model.net
    net.check_image(image, "score norms")
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[None]
    sig = torch.from_numpy(np.asarray(sigmas, dtype=np.float32)).to(device)
    chunk = batch_levels if batch_levels > 0 else len(sig)
    patches, whole = [], []
    for start in range(0, len(sig), chunk):
        s = sig[start:start + chunk]
        scaled = net(x.expand(len(s), *x.shape[1:]).contiguous(), s) * s.reshape(-1, 1, 1, 1, 1)
        patches.append(patch_norms(scaled, channel_reduction).cpu())
        whole.append(image_norms(scaled).cpu())
    return torch.cat(patches).numpy(), torch.cat(whole).numpy()


def compute_score_norm_cache(
    model_path: str | os.PathLike,
    image_paths: Sequence[str | os.PathLike],
    mask_paths: Sequence[str | os.PathLike],
    manifest: str | os.PathLike,
    subjects: Sequence[str],
    cfg: Mapping[str, object] | NormsConfig,
    logger: logging.Logger | None = None,
) -> None:
    """Score norms of a set of images (a whole set per job: the imports cost seconds, one image less).

    ``mask_paths`` are the brain masks of the same subjects (a lesioned image keeps its subject's mask).
    Writes one cache file per subject beside ``manifest``, then the manifest (:mod:`spatial_msma.score.cache`).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, NormsConfig) else NormsConfig.from_dict(cfg)
    image_paths, mask_paths = as_path_list(image_paths), as_path_list(mask_paths)
    if not len(image_paths) == len(mask_paths) == len(subjects):
        raise InputError(f"score norms: {len(image_paths)} images, {len(mask_paths)} masks and "
                         f"{len(subjects)} subject ids must be the same number")
    device = resolve_device(cfg.device)
    model = load_score_model(model_path, device)
    sigmas = model.sde.levels(cfg.n_levels, cfg.t_min, cfg.t_max)
    logger.info("score norms of %d images at %d levels, sigma %.4g..%.4g (t %.3g..%.3g), channel %s, device %s",
                len(image_paths), cfg.n_levels, sigmas[0], sigmas[-1], cfg.t_min, cfg.t_max,
                cfg.channel_reduction, device)
    progress = Progress(len(image_paths), "score norms", logger)
    for k, (image_path, mask_path, subject) in enumerate(zip(image_paths, mask_paths, subjects, strict=True)):
        image, affine = io.read_channels(image_path)
        mask, _ = io.read_mask(mask_path)
        if mask.shape != image.shape[1:]:
            raise InputError(f"brain mask {mask_path}: shape {mask.shape} differs from image {image_path} "
                             f"{image.shape[1:]}")
        patch, whole = score_norms(model, image, sigmas, cfg.channel_reduction, cfg.batch_levels)
        if cfg.zero_outside_mask:
            patch = np.where(mask[None], patch, 0.0)
        write_norm_cache(cache_path(manifest, subject), patch, whole, sigmas, mask, affine, cfg.dtype)
        progress.update(k + 1)
    write_manifest(manifest, subjects, image_paths)
