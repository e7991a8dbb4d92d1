"""Template space -> the patient's own scan: resampling through the inverted registration, the per-lesion
table and the overlay figure.

Why the heatmap and the mask are carried differently: the heatmap is a continuous map, resampled linearly
onto the T1w grid for viewing and for the per-lesion scores. The lesion mask is segmented on the template
grid, where the deployable threshold was fitted (a healthy-voxel FPR of template voxels) and where the
post-processing's voxel counts (smallest component, dilation radius) mean what they meant in the evaluation,
then carried with ANTs' ``genericLabel`` interpolation (each output voxel takes the label of the largest
linearly interpolated weight): smooth borders at the T1w's resolution, no blur-then-threshold of the
heatmap that would change which voxels pass the threshold, and the template-space detections unchanged.

What is one lesion is decided on the template grid too: the segmentation's connected components are labelled
there (the evaluation's ``component_connectivity_metrics``) and the LABEL image is carried (:func:`carry_labels`),
so every native voxel keeps its lesion's id. Relabelling the carried mask on the finer T1w grid would not give
the same lesions: two template voxels that touch only at an edge or a corner (one lesion with 26-connectivity)
come apart once resampled, as the interpolated weight between them falls below one half. The per-lesion
table, the native lesion-id image and the apply check's counting all use the carried ids.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import ants
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from nibabel.orientations import apply_orientation, io_orientation  # noqa: E402
from scipy import ndimage  # noqa: E402

from spatial_msma.io import save_figure  # noqa: E402

LESION_COLUMNS = ("lesion", "volume_mm3", "voxels", "x_mm", "y_mm", "z_mm", "peak_score", "mean_score",
                  "threshold", "protocol")


def to_native(volume: np.ndarray, affine: np.ndarray, fixed: ants.ANTsImage, transforms: list[str],
              invert: list[bool], interpolator: str) -> np.ndarray:
    """A volume on a template grid (``affine``) pulled onto the grid of ``fixed`` through ``transforms``
    (the inverse registration: :class:`~spatial_msma.preprocess.Preprocessed`); returns the array in the
    voxel order of the scan ``fixed`` was read from, so it takes that scan's affine unchanged."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")  # else ITK warns that it assumes mm
    moving = ants.from_nibabel_nifti(image)
    out = ants.apply_transforms(fixed, moving, transforms, interpolator=interpolator, whichtoinvert=invert,
                                defaultvalue=0)
    return out.numpy().astype(np.float32)


def _one_id_per_cell(labels: np.ndarray) -> bool:
    """Whether no 2x2x2 block of ``labels`` (the 8 voxels a linear interpolation weighs) holds two different
    ids: true of connected components labelled with 26-connectivity, whose voxels never touch another's."""
    padded = np.pad(np.asarray(labels, dtype=np.int64), 1)
    highest = lowest = None
    for offset in np.ndindex(2, 2, 2):
        block = padded[tuple(slice(o, o + n + 1) for o, n in zip(offset, labels.shape, strict=True))]
        nonzero = np.where(block > 0, block, np.iinfo(np.int64).max)
        highest = block if highest is None else np.maximum(highest, block)
        lowest = nonzero if lowest is None else np.minimum(lowest, nonzero)
    return not np.any((highest > 0) & (lowest < highest))


def carry_labels(labels: np.ndarray, affine: np.ndarray, fixed: ants.ANTsImage, transforms: list[str],
                 invert: list[bool]) -> np.ndarray:
    """A label image on a template grid (0 = background, one id per lesion) carried onto the grid of ``fixed``
    as ``genericLabel`` carries it (:func:`to_native`): every output voxel takes one of the input ids, none is
    mixed or relabelled. An id can vanish (no output voxel wins it: outside the scan's field of view, or
    thinner than its voxels).

    ``genericLabel`` costs one pass over the output grid per id (about 45 ms per id onto a 1 mm head). When
    no interpolation cell holds two ids (26-connected components), it is computed in three passes for any
    number of ids, with the same result: a voxel is a lesion voxel where the mask carried with
    ``genericLabel`` is, and its id is linear(ids) / linear(mask) there, since the only id in its cell
    is the one the linear weights multiply."""
    carry = functools.partial(to_native, affine=affine, fixed=fixed, transforms=transforms, invert=invert)
    if not _one_id_per_cell(labels):
        return np.rint(carry(labels, interpolator="genericLabel")).astype(np.int32)
    inside = labels > 0
    mask = carry(inside, interpolator="genericLabel") > 0.5
    weight = carry(inside, interpolator="linear")
    ids = carry(labels, interpolator="linear")
    return np.where(mask, np.rint(ids / np.maximum(weight, 1e-6)), 0).astype(np.int32)


def lesion_table(labels: np.ndarray, heatmap: np.ndarray, affine: np.ndarray, threshold: float,
                 protocol: str) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per lesion id present in ``labels`` (0 = background; the template-grid components carried by
    :func:`carry_labels`, so a lesion that the finer grid shows in pieces is one row): volume, centroid in
    world mm (the scan's affine), peak and mean of ``heatmap`` over its voxels, and the threshold that made it.
    Rows run largest first and are numbered 1..n in that order (``lesion``); returns the table and ``labels``
    renumbered to that column. An id without a voxel gets no row."""
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    voxels = counts[ids]
    centres = np.asarray(ndimage.center_of_mass(labels > 0, labels, ids), dtype=np.float64).reshape(-1, 3)
    world = (affine[:3, :3] @ centres.T).T + affine[:3, 3]
    table = pd.DataFrame({"volume_mm3": voxels * float(abs(np.linalg.det(affine[:3, :3]))), "voxels": voxels,
                          "x_mm": world[:, 0], "y_mm": world[:, 1], "z_mm": world[:, 2],
                          "peak_score": np.asarray(ndimage.maximum(heatmap, labels, ids), dtype=np.float64),
                          "mean_score": np.asarray(ndimage.mean(heatmap, labels, ids), dtype=np.float64),
                          "threshold": threshold, "protocol": protocol}, columns=LESION_COLUMNS[1:])
    order = np.lexsort((-table["peak_score"].to_numpy(), -table["volume_mm3"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "lesion", np.arange(1, len(table) + 1))
    numbering = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    numbering[ids[order]] = table["lesion"].to_numpy()
    table = table.round({"volume_mm3": 2, "x_mm": 2, "y_mm": 2, "z_mm": 2, "peak_score": 4, "mean_score": 4})
    return table, numbering[labels]


def _ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array in RAS+ voxel order (display only: left on the left of an axial slice, up is anterior)."""
    return apply_orientation(volume, io_orientation(affine))


def _slices(lesions: np.ndarray, brain: np.ndarray, n: int) -> list[int]:
    """Axial slices to show: through the largest lesions (by id of ``lesions``), else evenly through the
    brain."""
    if lesions.any():
        sizes = np.bincount(lesions.ravel())
        chosen: list[int] = []
        for k in np.argsort(sizes[1:])[::-1] + 1:
            if not sizes[k]:
                break
            z = int(round(np.argwhere(lesions == k)[:, 2].mean()))
            if all(abs(z - c) > 2 for c in chosen):
                chosen.append(z)
            if len(chosen) == n:
                break
        return sorted(chosen)
    z = np.flatnonzero(brain.any(axis=(0, 1)))
    return [int(v) for v in np.linspace(z[0], z[-1], n + 2)[1:-1].round()] if z.size else [lesions.shape[2] // 2]


def overlay_figure(t1: np.ndarray, t2: np.ndarray, heatmap: np.ndarray, lesions: np.ndarray, affine: np.ndarray,
                   title: str, path: str | Path, n_slices: int = 3) -> None:
    """Axial slices (through the largest lesions of the label image ``lesions``) of the T1w, the T2w on the
    T1w grid, and the heatmap over the T1w, lesion outlines in red: one PNG per subject."""
    t1, t2, heatmap, lesions = (_ras(v, affine) for v in (t1, t2, heatmap, lesions))
    mask = lesions > 0
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[np.argsort(io_orientation(affine)[:, 0])]
    aspect = zooms[1] / zooms[0]
    brain = heatmap != 0
    slices = _slices(lesions, brain, n_slices)
    inside = heatmap[brain]
    vmin, vmax = (np.percentile(inside, [50, 99.9]) if inside.size else (0.0, 1.0))
    fig, axes = plt.subplots(len(slices), 3, figsize=(9.6, 3.4 * len(slices)), squeeze=False)
    for row, z in zip(axes, slices, strict=True):
        for ax, (name, image) in zip(row, (("T1w", t1), ("T2w", t2), ("heatmap (NLL)", t1)), strict=True):
            plane = image[:, :, z].T
            lo, hi = np.percentile(plane, [1, 99.5])
            ax.imshow(plane, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect)
            if name.startswith("heatmap"):
                plane_heat = heatmap[:, :, z].T
                heat = np.ma.masked_where(~brain[:, :, z].T | (plane_heat <= vmin), plane_heat)
                ax.imshow(heat, cmap="hot", origin="lower", vmin=vmin, vmax=vmax, alpha=0.7, aspect=aspect)
            if mask[:, :, z].any():
                ax.contour(mask[:, :, z].T, levels=[0.5], colors="red", linewidths=0.9)
            ax.set_title(f"{name}, axial slice {z}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def refusal_figure(subject: str, reason: str, path: str | Path) -> None:
    """The overlay slot of a refused subject: its refusal message, so the report shows why."""
    fig, ax = plt.subplots(figsize=(8, 2.4))
    ax.axis("off")
    ax.text(0.0, 0.95, f"{subject}: refused", fontsize=12, fontweight="bold", va="top", transform=ax.transAxes)
    ax.text(0.0, 0.7, textwrap.fill(reason, 100), fontsize=9, va="top", family="monospace", transform=ax.transAxes)
    save_figure(fig, path)
