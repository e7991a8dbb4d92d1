"""What a lesion looks like: an irregular simulated blob, or a lesion from a user's masks.

Both are given to placement as a score field over a box of the fine grid (higher = more inside), whose
best ``n_target`` sub-voxels are the lesion; placement then carves it to eligible, free white matter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from spatial_msma import io
from spatial_msma.lesions.grids import FineGrid, box_around, box_shape, box_start, translation

# Shape of simulated blobs: log-sd of the ellipsoid axis ratios, amplitude and correlation length (in
# units of the equivalent radius) of the smooth noise that makes the outline irregular.
_ASPECT_LOG_SD = 0.3
_IRREGULARITY = 0.35
_NOISE_SCALE = 0.4


def equivalent_radius(volume_mm3: float) -> float:
    """The radius of the ball of this volume (mm)."""
    return (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)


def blob_reach_mm(volume_mm3: float, grid: FineGrid) -> float:
    """How far a blob of this volume may reach from its centre: elongation and noise stretch it beyond
    the equivalent radius, and two sub-voxels keep its outline off the box's edge."""
    return equivalent_radius(volume_mm3) * 2.2 + 2.0 * grid.voxel_mm.max()


def blob_score(
    shape: tuple[int, int, int], centre: np.ndarray, voxel_mm: np.ndarray, volume: float, rng: np.random.Generator
) -> np.ndarray:
    """An irregular lesion's score field: higher = more inside. Top-N of it is the lesion.

    A randomly rotated ellipsoid with random axis ratios (MS lesions are ovoid) whose normalised radius is
    perturbed by smooth Gaussian noise, so outlines are lumpy rather than geometric.
    """
    radius = equivalent_radius(volume)
    aspect = np.exp(rng.normal(0.0, _ASPECT_LOG_SD, 3))
    axes = radius * aspect / np.prod(aspect) ** (1.0 / 3.0)
    rotation = Rotation.random(random_state=rng).as_matrix()
    offsets = (np.indices(shape).reshape(3, -1).T - centre) * voxel_mm
    local = offsets @ rotation / axes
    distance = np.sqrt((local**2).sum(axis=1)).reshape(shape)
    noise = ndi.gaussian_filter(rng.standard_normal(shape), _NOISE_SCALE * radius / voxel_mm, mode="wrap")
    noise /= max(float(noise.std()), 1e-9)
    return -distance + _IRREGULARITY * noise


@dataclass(frozen=True)
class LibraryLesion:
    """One connected component of a user lesion mask, kept on its own grid."""

    mask: np.ndarray  # float32 0/1, cropped to the component's bounding box
    affine: np.ndarray  # of the cropped box
    centroid_mm: np.ndarray
    volume_mm3: float
    source: str  # file name and component number


def load_lesion_library(folder: str | os.PathLike, min_volume_mm3: float = 0.0) -> list[LibraryLesion]:
    """Every connected component (26-connectivity) of every NIfTI mask in ``folder`` is one lesion.

    Components smaller than ``min_volume_mm3`` (the lowest size-bin edge) are dropped: MS-MIST's lesion
    database starts at 50 mm^3 and specks below it are segmentation noise, not lesions.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise io.InputError(f"lesions.folder {folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise io.InputError(f"lesions.folder {folder}: contains no NIfTI lesion masks (*.nii, *.nii.gz)")
    lesions: list[LibraryLesion] = []
    for path in files:
        img = io.load_nifti(path, ndim=3, what="lesion mask")
        values = np.asarray(img.dataobj)
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            # an intensity image thresholded at 0.5 would be one head-sized "lesion", reported as too large
            raise io.InputError(f"lesions.folder {folder}: {path.name} is not a lesion mask (values {low:g} to "
                                f"{high:g}; a mask holds 0 and 1, or probabilities in [0, 1])")
        data = values > 0.5
        labels, n = ndi.label(data, structure=np.ones((3, 3, 3)))
        voxel_volume = float(abs(np.linalg.det(img.affine[:3, :3])))
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            comp = labels[box] == index
            volume = float(comp.sum()) * voxel_volume
            if volume < min_volume_mm3:
                continue
            start = np.array([s.start for s in box], dtype=np.float64)
            box_affine = img.affine @ translation(start)
            centroid = nib.affines.apply_affine(box_affine, np.argwhere(comp).mean(axis=0))
            lesions.append(LibraryLesion(comp.astype(np.float32), box_affine, centroid, volume, f"{path.name}#{index}"))
    if not lesions:
        raise io.InputError(
            f"lesions.folder {folder}: no lesion component of at least {min_volume_mm3:g} mm^3 in {len(files)} masks"
        )
    return lesions


def library_footprint(
    lesion: LibraryLesion, grid: FineGrid, centre: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """A user lesion moved (unrotated) to a fine-grid centre: its box and its interpolated mask there."""
    world_centre = nib.affines.apply_affine(grid.affine, centre)
    corners = np.argwhere(np.ones((2, 2, 2))) * (np.array(lesion.mask.shape) - 1)
    corners = nib.affines.apply_affine(lesion.affine, corners)
    # The interpolated mask reaches one of the mask's voxels beyond its outer voxel centres.
    voxel_extent = np.abs(lesion.affine[:3, :3]).sum(axis=1)
    reach = np.abs(corners - lesion.centroid_mm).max(axis=0) + voxel_extent + grid.voxel_mm.max()
    box = box_around(centre, np.ceil(reach / grid.voxel_mm).astype(int), grid.shape)
    shift = translation(lesion.centroid_mm - world_centre)
    matrix = np.linalg.inv(lesion.affine) @ shift @ grid.affine @ translation(box_start(box))
    # grid-constant: interpolate towards 0 beyond the cropped box's edge voxels; "constant" cuts the
    # lesion at its outer voxel centres, half a mask voxel short on every side.
    inside = ndi.affine_transform(lesion.mask, matrix, output_shape=box_shape(box), order=1, mode="grid-constant")
    return box, inside


def footprint_score(inside: np.ndarray, n_target: int) -> np.ndarray:
    """A resampled user lesion as a score field: its interpolated value on the ``n_target`` sub-voxels most
    inside it, -inf elsewhere.

    Thresholding the interpolated mask at 0.5 does not keep its volume (a 2 mm cube sampled at 1 mm loses
    its faces to ties at 0.5: 729 of 1000 mm^3), and placement measures its minimum kept share against
    ``n_target``; taking the top ``n_target`` = the library volume in sub-voxels keeps the volume, so a
    placement is accepted only with that share of the user's lesion. A footprint clipped by the grid's
    edge has fewer voxels and is rejected there.
    """
    flat = np.flatnonzero(inside > 0)
    if flat.size > n_target:
        flat = flat[np.argpartition(-inside.ravel()[flat], n_target - 1)[:n_target]]
    score = np.full(inside.shape, -np.inf, dtype=np.float32)
    score.ravel()[flat] = inside.ravel()[flat]
    return score
