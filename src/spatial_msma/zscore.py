"""The intensity z-score: the simplest normative model there is, and the floor every learned detector must clear.

Per voxel and channel, the mean and standard deviation of the healthy TRAINING images; a test image's heatmap
is ``sum_c |x_c - mean_c| / sd_c`` inside its brain mask. The SD gets a floor (``sd_floor``, in the [-1, 1]
units of the preprocessed images) so voxels where every training subject happens to agree -- background
near the mask edge, say -- cannot produce unbounded scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import InputError, read_channels, read_mask, write_nifti


def fit_zscore(images: Sequence[str | Path], sd_floor: float) -> dict[str, np.ndarray]:
    """Voxelwise mean and floored SD over ``images`` (each (C, X, Y, Z) on the shared cropped grid)."""
    stack = np.stack([read_channels(path)[0] for path in images]).astype(np.float64)
    if stack.shape[0] < 2:
        raise InputError(f"z-score model: needs at least 2 training images, got {stack.shape[0]}")
    return {
        "mean": stack.mean(axis=0).astype(np.float32),
        "sd": np.maximum(stack.std(axis=0, ddof=1), sd_floor).astype(np.float32),
        "n_images": np.array(stack.shape[0]),
    }


def zscore_heatmap(image: np.ndarray, brain: np.ndarray, model: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over channels of |x - mean| / sd, zero outside the brain."""
    if image.shape != model["mean"].shape:
        raise InputError(f"z-score heatmap: image shape {image.shape} != model shape {model['mean'].shape}")
    score = (np.abs(image - model["mean"]) / model["sd"]).sum(axis=0)
    return np.where(brain, score, 0.0).astype(np.float32)


def write_zscore_heatmaps(model_path: str | Path, images: Sequence[str | Path], masks: Sequence[str | Path],
                          out_dir: str | Path, logger: logging.Logger | None = None) -> None:
    """Heatmaps for a set of images, written as ``out_dir/{subject}.nii.gz`` with each image's affine."""
    logger = logger or logging.getLogger(__name__)
    model = dict(np.load(model_path))
    for image_path, mask_path in zip(images, masks, strict=True):
        image, affine = read_channels(image_path)
        brain, _ = read_mask(mask_path)
        subject = Path(mask_path).name.removesuffix("_brainmask.nii.gz")
        write_nifti(zscore_heatmap(image, brain, model), affine, Path(out_dir) / f"{subject}.nii.gz")
    logger.info("z-score heatmaps for %d images in %s", len(images), out_dir)
