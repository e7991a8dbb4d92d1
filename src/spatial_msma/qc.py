"""Quality-control figures of the preprocessed cohort: what a user looks at before trusting the data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import read_channels, read_mask, save_figure  # noqa: E402

CHANNELS = ("T1", "T2")


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre``, oriented for display (RAS arrays)."""
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def cohort_montage(subjects: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str):
    """One row per subject: T1 and T2 in three planes through the brain's centre, brain mask outlined.

    ``subjects`` holds (label, image (2, X, Y, Z) in [-1, 1], mask (X, Y, Z) bool). Every panel uses the same
    grey scale ([-1, 1]) so differences in contrast between subjects are visible, not normalised away.
    """
    n = len(subjects)
    fig, axes = plt.subplots(n, 6, figsize=(13, 2.3 * n + 0.6), squeeze=False)
    for row, (label, image, mask) in enumerate(subjects):
        centre = [int(round(c)) for c in np.argwhere(mask).mean(axis=0)]
        for c, name in enumerate(CHANNELS):
            for p, (img_slice, mask_slice) in enumerate(zip(_planes(image[c], centre), _planes(mask, centre),
                                                            strict=True)):
                ax = axes[row, 3 * c + p]
                ax.imshow(img_slice, origin="lower", cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                ax.contour(mask_slice, levels=[0.5], colors="tab:red", linewidths=0.6)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{name} {('axial', 'coronal', 'sagittal')[p]}", fontsize=9)
        axes[row, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def cohort_figure(images: Sequence[str], masks: Sequence[str], out_path: str, n_subjects: int, seed: int) -> None:
    """Pick ``n_subjects`` at random (seeded) and save their montage to ``out_path``."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(images), size=min(n_subjects, len(images)), replace=False).tolist())
    panels = []
    for i in chosen:
        image, _ = read_channels(images[i])
        mask, _ = read_mask(masks[i])
        panels.append((Path(images[i]).name.removesuffix(".nii.gz"), image, mask))
    shape = "x".join(map(str, panels[0][2].shape))
    fig = cohort_montage(panels, f"Preprocessed cohort: {len(panels)} of {len(images)} subjects, cropped grid {shape}")
    save_figure(fig, out_path)
