"""Quality-control figures of the preprocessed cohort: what a user looks at before trusting the data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from .io import load_nifti, read_channels, read_mask, save_figure  # noqa: E402

CHANNELS = ("T1", "T2")


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre``, oriented for display (RAS arrays)."""
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def _raw_planes(path: str) -> tuple[list[np.ndarray], float]:
    """Axial and sagittal slices of a raw scan (as read, RAS-reoriented) through the head, and its display
    maximum (99.5th percentile). The axial slice is 25 mm above the centre of the head's voxels (T1w/T2w above
    a tenth of that maximum), which falls through the brain rather than the face or neck."""
    img = nib.as_closest_canonical(load_nifti(path, ndim=3, what="scan"))
    volume = np.asarray(img.dataobj, dtype=np.float32)
    high = float(np.percentile(volume, 99.5)) or 1.0
    centre = np.argwhere(volume > 0.1 * high).mean(axis=0)
    x = int(round(centre[0]))
    z = int(min(volume.shape[2] - 1, round(centre[2] + 25.0 / abs(img.affine[2, 2]))))
    return [volume[:, :, z].T, volume[x, :, :].T], high


def cohort_montage(subjects: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str,
                   raw: Sequence[tuple[str, str]] | None = None):
    """One row per subject: T1 and T2 in three planes through the brain's centre, brain mask outlined; with
    ``raw`` ((T1w path, T2w path) per subject) first the raw scans, axial and sagittal, as the cohort stage
    read them.

    ``subjects`` holds (label, image (2, X, Y, Z) in [-1, 1], mask (X, Y, Z) bool). Every preprocessed panel
    uses the same grey scale ([-1, 1]) so differences in contrast between subjects are visible, not normalised
    away; each raw panel runs from 0 to its scan's 99.5th percentile.
    """
    n = len(subjects)
    n_raw = 4 if raw is not None else 0
    fig, axes = plt.subplots(n, n_raw + 6, figsize=(13 + 1.9 * n_raw, 2.3 * n + 0.6), squeeze=False)
    for row, (label, image, mask) in enumerate(subjects):
        if raw is not None:
            for c, (name, path) in enumerate(zip(("T1w", "T2w"), raw[row], strict=True)):
                planes, high = _raw_planes(path)
                for p, img_slice in enumerate(planes):
                    ax = axes[row, 2 * c + p]
                    ax.imshow(img_slice, origin="lower", cmap="gray", vmin=0, vmax=high, interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if row == 0:
                        ax.set_title(f"raw {name} {('axial', 'sagittal')[p]}", fontsize=9)
        centre = [int(round(c)) for c in np.argwhere(mask).mean(axis=0)]
        for c, name in enumerate(CHANNELS):
            for p, (img_slice, mask_slice) in enumerate(zip(_planes(image[c], centre), _planes(mask, centre),
                                                            strict=True)):
                ax = axes[row, n_raw + 3 * c + p]
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


def cohort_figure(images: Sequence[str], masks: Sequence[str], out_path: str, n_subjects: int, seed: int,
                  raw: Sequence[tuple[str, str]] | None = None, anatomies: Mapping[str, str] | None = None) -> None:
    """Pick ``n_subjects`` at random (seeded) and save their montage to ``out_path``; ``raw`` (T1w, T2w) per
    image adds the raw scans, ``anatomies`` (subject -> anatomy) names each row's anatomy."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(images), size=min(n_subjects, len(images)), replace=False).tolist())
    panels = []
    for i in chosen:
        image, _ = read_channels(images[i])
        mask, _ = read_mask(masks[i])
        label = Path(images[i]).name.removesuffix(".nii.gz")
        if anatomies and anatomies.get(label):
            label = f"{label}\n{anatomies[label]}"
        panels.append((label, image, mask))
    shape = "x".join(map(str, panels[0][2].shape))
    title = f"Preprocessed cohort: {len(panels)} of {len(images)} subjects, cropped grid {shape}"
    if raw is not None:
        title = f"Cohort: {len(panels)} of {len(images)} subjects, raw scans (subject space) and preprocessed " \
                f"(template space, cropped grid {shape})"
    fig = cohort_montage(panels, title, raw=None if raw is None else [raw[i] for i in chosen])
    save_figure(fig, out_path)
