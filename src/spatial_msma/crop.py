"""The crop box: the union of the TRAINING subjects' brain masks, padded to a multiple of 8 voxels per axis.

Only training masks define it (the paper's "largest brain mask"), so validation and test subjects never
influence the geometry the models are trained on. The box is centred on the union's bounding box; where
padding runs past the template grid, the crop pads with background.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .io import InputError, read_mask


def crop_box(masks: Iterable[np.ndarray], multiple: int = 8) -> dict[str, list[int]]:
    """Bounding box of the union of ``masks``, grown symmetrically to a multiple of ``multiple`` per axis.

    Returns ``{"start": [...], "stop": [...], "shape": [...]}`` in voxel indices of the (shared) grid; start may
    be negative and stop may exceed the grid (the crop pads there).
    """
    union = None
    for mask in masks:
        union = mask.astype(bool) if union is None else union | mask.astype(bool)
    if union is None or not union.any():
        raise InputError("crop box: no training brain masks (or all empty)")
    idx = np.argwhere(union)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    size = hi - lo
    target = -(-size // multiple) * multiple
    extra = target - size
    start = lo - extra // 2
    stop = start + target
    return {"start": start.tolist(), "stop": stop.tolist(), "shape": target.tolist()}


def apply_crop(volume: np.ndarray, box: dict[str, list[int]], fill: float) -> np.ndarray:
    """Cut ``box`` out of the last three axes of ``volume``, padding with ``fill`` outside the grid."""
    start, stop = np.array(box["start"]), np.array(box["stop"])
    grid = np.array(volume.shape[-3:])
    out = np.full(volume.shape[:-3] + tuple(stop - start), fill, dtype=volume.dtype)
    src_lo, src_hi = np.maximum(start, 0), np.minimum(stop, grid)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    src = (...,) + tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
    dst = (...,) + tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))
    out[dst] = volume[src]
    return out


def cropped_affine(affine: np.ndarray, box: dict[str, list[int]]) -> np.ndarray:
    """Affine of the cropped grid: the same voxel size, origin moved to the box's first voxel."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(box["start"], dtype=np.float64) + affine[:3, 3]
    return out


def manifest(images: list[str], masks: list[str], participants: str) -> pd.DataFrame:
    """One row per cropped subject: split, shape, voxel size and brain volume, for a quick look at the cohort."""
    splits = pd.read_csv(participants, sep="\t").set_index("participant_id")["split"]
    rows = []
    for image_path, mask_path in zip(images, masks, strict=True):
        subject = Path(image_path).name.removesuffix(".nii.gz")
        header = nib.load(image_path).header
        mask, affine = read_mask(mask_path)
        voxel = float(abs(np.linalg.det(affine[:3, :3])))
        rows.append({"participant_id": subject, "split": splits[subject], "shape": "x".join(map(str, mask.shape)),
                     "channels": int(header.get_data_shape()[-1]), "voxel_mm": round(voxel ** (1 / 3), 4),
                     "brain_ml": round(mask.sum() * voxel / 1000.0, 1), "image": image_path, "mask": mask_path})
    return pd.DataFrame(rows)
