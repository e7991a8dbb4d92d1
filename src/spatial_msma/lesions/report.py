"""The lesion summary over the lesioned subjects: one table row per subject and a figure of a few.

Read back from the files the simulation wrote, so the summary describes exactly the images the methods see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from spatial_msma import io
from spatial_msma.lesions.simulate import summary_row

PathLike = str | os.PathLike
Paths = Sequence[PathLike]


def summarise_lesions(
    tables: Paths, masks: Paths, images: Paths, out_table: PathLike, out_figure: PathLike, n_show: int = 4,
    logger: logging.Logger | None = None,
) -> pd.DataFrame:
    """Summary table (subject, lesion count, load at the fine and working grid) and the lesion figure.

    Inputs are parallel lists per subject (the subject id is read from the lesion table; a table with no
    lesions takes it from the mask file name). The figure shows the first ``n_show`` subjects.
    """
    logger = logger or logging.getLogger(__name__)
    if not (len(tables) == len(masks) == len(images)) or not tables:
        raise io.InputError(
            f"summarise_lesions: need equal, non-empty lists, got {len(tables)}, {len(masks)}, {len(images)}"
        )
    rows = []
    for table_path, mask_path in zip(tables, masks, strict=True):
        table = pd.read_csv(table_path, sep="\t")
        mask, affine = io.read_mask(mask_path)
        subject = str(table["subject"].iloc[0]) if len(table) else Path(mask_path).name.split("_mask")[0]
        rows.append(summary_row(subject, table, mask, float(abs(np.linalg.det(affine[:3, :3])))))
    summary = pd.DataFrame(rows)
    io.write_table(summary, out_table)
    plot_lesions(images[:n_show], masks[:n_show], list(summary["subject"][:n_show]), out_figure)
    logger.info(
        "%d subjects: %.1f lesions, %.2f mL (fine) / %.2f mL (working grid) on average",
        len(summary), summary["n_lesions"].mean(), summary["load_ml_fine"].mean(), summary["load_ml_working"].mean(),
    )
    return summary


def plot_lesions(images: Paths, masks: Paths, subjects: Sequence[str], out_figure: PathLike) -> None:
    """Axial T1 and T2 slices (the slice with most lesion voxels) with lesion outlines in magenta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 5.6), squeeze=False)
    for col, (image_path, mask_path, subject) in enumerate(zip(images, masks, subjects, strict=True)):
        image, affine = io.read_channels(image_path)
        mask, _ = io.read_mask(mask_path)
        ornt = nib.orientations.io_orientation(affine)  # display in RAS: anterior up, right on the right
        image = np.stack([nib.orientations.apply_orientation(c, ornt) for c in image])
        mask = nib.orientations.apply_orientation(mask, ornt)
        z = int(np.argmax(mask.sum(axis=(0, 1)))) if mask.any() else mask.shape[2] // 2
        for row, name in enumerate(("T1", "T2")):
            ax = axes[row, col]
            ax.imshow(image[row, :, :, z].T, cmap="gray", origin="lower", vmin=-1, vmax=1, interpolation="nearest")
            if mask[:, :, z].any():
                ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors="magenta", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(f"{subject}\nz={z}", fontsize=8)
    fig.suptitle("Simulated lesions (ground truth outlined in magenta)", fontsize=10)
    io.save_figure(fig, out_figure)
