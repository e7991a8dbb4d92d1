"""Thresholding and post-processing shared by every method: one definition, used everywhere.

Order (paper, "Inference"): mask the heatmap with the brain, threshold, remove connected components
smaller than ``min_component_voxels`` (face connectivity in the paper), optionally drop components that
touch the brain rim (the authors' code; a config switch), then dilate with a radius-1 ball.
Morphology is scipy.ndimage with skimage's ``ball`` footprints, the same operators the authors' code
used through skimage.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from skimage.morphology import ball as _skimage_ball

from spatial_msma.evaluation.config import EvaluationConfig


@functools.lru_cache(maxsize=8)
def structure(connectivity: int) -> np.ndarray:
    """3D neighbourhood for component labelling: 1 -> 6, 2 -> 18, 3 -> 26 neighbours."""
    return ndimage.generate_binary_structure(3, connectivity)


@functools.lru_cache(maxsize=8)
def ball(radius: int) -> np.ndarray:
    """Ball footprint of the given voxel radius (radius 1 = centre plus the 6 face neighbours)."""
    return _skimage_ball(radius).astype(bool)


def label_components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected-component labels (0 = background) and their count."""
    labels, n = ndimage.label(mask, structure=structure(connectivity))
    return labels, int(n)


def remove_small_components(mask: np.ndarray, min_voxels: int, connectivity: int) -> np.ndarray:
    """Drop connected components with fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1 or not mask.any():
        return mask.astype(bool, copy=True)
    labels, n = label_components(mask, connectivity)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def drop_components_touching(mask: np.ndarray, region: np.ndarray, connectivity: int) -> np.ndarray:
    """Drop every connected component of ``mask`` that shares at least one voxel with ``region``."""
    if not mask.any():
        return mask.astype(bool, copy=True)
    labels, n = label_components(mask, connectivity)
    touching = np.zeros(n + 1, dtype=bool)
    touching[np.unique(labels[region & mask])] = True
    touching[0] = True
    return ~touching[labels]


def erode(brain: np.ndarray, radius: int) -> np.ndarray:
    """Brain mask eroded by a ball of ``radius`` voxels (outside the array counts as outside the brain)."""
    if radius == 0:
        return brain.astype(bool, copy=True)
    return ndimage.binary_erosion(brain, structure=ball(radius), border_value=0)


def brain_rim(brain: np.ndarray, radius: int) -> np.ndarray:
    """The brain's outer shell: the mask minus its erosion by ``radius`` voxels (the code's skull rim)."""
    return brain & ~erode(brain, radius)


def rim_for(region: np.ndarray, cfg: EvaluationConfig) -> np.ndarray | None:
    """The rim whose touching components are dropped, or None when ``drop_rim_components`` is off."""
    return brain_rim(region, cfg.rim_radius) if cfg.drop_rim_components else None


def post_process(binary: np.ndarray, cfg: EvaluationConfig, rim: np.ndarray | None = None) -> np.ndarray:
    """Small-component removal, optional rim-component removal, then dilation with a ball."""
    conn = cfg.component_connectivity_postprocess
    out = remove_small_components(binary, cfg.min_component_voxels, conn)
    if rim is not None:
        out = drop_components_touching(out, rim, conn)
    if cfg.dilation_radius > 0 and out.any():
        out = ndimage.binary_dilation(out, structure=ball(cfg.dilation_radius))
    return out


def segment(
    heatmap: np.ndarray, brain: np.ndarray, threshold: float, cfg: EvaluationConfig, rim: np.ndarray | None = None
) -> np.ndarray:
    """Brain-masked ``heatmap > threshold``, post-processed: the predicted lesion mask of every method."""
    return post_process((heatmap > threshold) & brain, cfg, rim)


def prepare_reference(
    gt: np.ndarray, region: np.ndarray, cfg: EvaluationConfig, rim: np.ndarray | None = None
) -> np.ndarray:
    """Ground truth as scored: restricted to the evaluated region, components under ``min_lesion_voxels``
    dropped (the authors' evaluator: they are not lesions to find), and rim-touching components dropped when
    that switch is on."""
    gt = gt.astype(bool) & region
    gt = remove_small_components(gt, cfg.min_lesion_voxels, cfg.lesion_connectivity)
    if rim is None:
        return gt
    return drop_components_touching(gt, rim, cfg.component_connectivity_postprocess)
