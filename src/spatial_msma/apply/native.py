"""Template space -> the patient's own scan: resampling through the inverted registration, the per-lesion
table and the overlay figure.

Why the heatmap and the mask are carried differently: the heatmap is a continuous map, resampled linearly
onto the T1w grid for viewing and for the per-lesion scores. The lesion mask is segmented on the template
grid, where the deployable threshold was fitted (a healthy-voxel FPR of template voxels) and where the
post-processing's voxel counts (smallest component, dilation radius) mean what they meant in the evaluation,
then carried with ANTs' ``genericLabel`` interpolation (each output voxel takes the label of the largest
linearly interpolated weight): smooth borders at the T1w's resolution, no blur-then-threshold of the
heatmap that would change which voxels pass the threshold, and the template-space detections unchanged.
"""

from __future__ import annotations

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

from spatial_msma.evaluation.postprocess import label_components  # noqa: E402
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


def lesion_table(mask: np.ndarray, heatmap: np.ndarray, affine: np.ndarray, threshold: float, protocol: str,
                 connectivity: int) -> pd.DataFrame:
    """One row per connected lesion of ``mask`` (largest first): volume, centroid in world mm (the scan's
    affine), peak and mean of ``heatmap`` over it, and the threshold that made it."""
    labels, n = label_components(mask, connectivity)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    rows = []
    for k in range(1, n + 1):
        index = np.argwhere(labels == k)
        scores = heatmap[labels == k]
        centre = affine @ np.append(index.mean(axis=0), 1.0)
        rows.append({"volume_mm3": len(index) * voxel_mm3, "voxels": len(index), "x_mm": centre[0],
                     "y_mm": centre[1], "z_mm": centre[2], "peak_score": float(scores.max()),
                     "mean_score": float(scores.mean()), "threshold": threshold, "protocol": protocol})
    table = pd.DataFrame(rows, columns=LESION_COLUMNS[1:])
    table = table.sort_values(["volume_mm3", "peak_score"], ascending=False, ignore_index=True)
    table.insert(0, "lesion", np.arange(1, len(table) + 1))
    return table.round({"volume_mm3": 2, "x_mm": 2, "y_mm": 2, "z_mm": 2, "peak_score": 4, "mean_score": 4})


def _ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array in RAS+ voxel order (display only: left on the left of an axial slice, up is anterior)."""
    return apply_orientation(volume, io_orientation(affine))


def _slices(mask: np.ndarray, brain: np.ndarray, n: int) -> list[int]:
    """Axial slices to show: through the largest lesions, else evenly through the brain."""
    if mask.any():
        labels, count = label_components(mask, 3)
        sizes = np.bincount(labels.ravel())[1:]
        chosen: list[int] = []
        for k in np.argsort(sizes)[::-1]:
            z = int(round(np.argwhere(labels == k + 1)[:, 2].mean()))
            if all(abs(z - c) > 2 for c in chosen):
                chosen.append(z)
            if len(chosen) == n:
                break
        return sorted(chosen)
    z = np.flatnonzero(brain.any(axis=(0, 1)))
    return [int(v) for v in np.linspace(z[0], z[-1], n + 2)[1:-1].round()] if z.size else [mask.shape[2] // 2]


def overlay_figure(t1: np.ndarray, t2: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                   title: str, path: str | Path, n_slices: int = 3) -> None:
    """Axial slices (through the largest lesions) of the T1w, the T2w on the T1w grid, and the heatmap over
    the T1w, lesion outlines in red: one PNG per subject."""
    t1, t2, heatmap, mask = (_ras(v, affine) for v in (t1, t2, heatmap, mask.astype(np.uint8)))
    mask = mask > 0
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[np.argsort(io_orientation(affine)[:, 0])]
    aspect = zooms[1] / zooms[0]
    brain = heatmap != 0
    slices = _slices(mask, brain, n_slices)
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
