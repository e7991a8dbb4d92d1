"""The fine grid lesions are made on, and the ways between it, the working grid and other volumes.

Lesions are made on a grid that splits every working voxel into whole sub-voxels, so going back to the
working grid is an exact block mean: the partial-volume model of a real acquisition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class FineGrid:
    """A grid that splits every working voxel into ``k`` sub-voxels per axis (same field of view)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    k: tuple[int, int, int]
    voxel_mm: np.ndarray  # (3,) sub-voxel edge lengths
    voxel_volume: float  # mm^3


def fine_grid(working_shape: Sequence[int], working_affine: np.ndarray, grid_mm: float) -> FineGrid:
    """Subdivide the working grid so sub-voxels are as close to ``grid_mm`` as an integer split allows.

    Integer subdivision makes area-averaging to the working grid an exact block mean (every sub-voxel
    belongs to one working voxel).
    """
    working_mm = np.linalg.norm(np.asarray(working_affine)[:3, :3], axis=0)
    k = tuple(max(1, round(float(v) / grid_mm)) for v in working_mm)
    scale = np.eye(4)
    for axis, kk in enumerate(k):
        scale[axis, axis] = 1.0 / kk
        scale[axis, 3] = (1.0 / kk - 1.0) / 2.0  # fine voxel centres inside their parent voxel
    affine = np.asarray(working_affine, dtype=np.float64) @ scale
    shape = tuple(int(s) * kk for s, kk in zip(working_shape, k, strict=True))
    voxel_mm = working_mm / np.asarray(k)
    return FineGrid(shape, affine, k, voxel_mm, float(abs(np.linalg.det(affine[:3, :3]))))


def block_mean(arr: np.ndarray, k: Sequence[int]) -> np.ndarray:
    """Average non-overlapping k-blocks: fine grid -> working grid (area averaging)."""
    x, y, z = (s // kk for s, kk in zip(arr.shape, k, strict=True))
    return arr.reshape(x, k[0], y, k[1], z, k[2]).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def upsample_nearest(arr: np.ndarray, k: Sequence[int]) -> np.ndarray:
    """Each working voxel's value on all of its sub-voxels (working grid -> fine grid)."""
    for axis, kk in enumerate(k):
        arr = np.repeat(arr, kk, axis=axis)
    return arr


def resample_to_grid(
    volume: np.ndarray, volume_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray, order: int = 1
) -> np.ndarray:
    """Sample a volume (e.g. a template map) at the voxel centres of another grid; outside -> 0."""
    matrix = np.linalg.inv(volume_affine) @ affine
    return ndi.affine_transform(
        np.asarray(volume, dtype=np.float32), matrix, output_shape=tuple(shape), order=order, mode="constant"
    )


def translation(offset: np.ndarray) -> np.ndarray:
    """The 4x4 affine that shifts by ``offset``."""
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def box_around(centre: np.ndarray, half: np.ndarray, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The voxels within ``half`` of ``centre`` per axis, cut to the grid."""
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def box_start(box: tuple[slice, ...]) -> np.ndarray:
    """The first voxel of a box."""
    return np.array([s.start for s in box])


def box_shape(box: tuple[slice, ...]) -> tuple[int, ...]:
    """The shape of a box."""
    return tuple(s.stop - s.start for s in box)
