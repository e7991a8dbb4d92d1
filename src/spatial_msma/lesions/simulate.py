"""MS-MIST-style lesions for one subject in template space, made at a finer grid than the working one.

:func:`simulate_lesions` works on arrays, :func:`simulate_subject_files` on the cropped files; both give
the lesion table (one row per lesion). The random stream is seeded per subject (:func:`subject_seed`) and
drawn in a fixed order (placement, then contrasts), so the same inputs give the same bytes on every
machine and in every process.

The model:

* **Shapes and sizes.** MS-MIST draws real lesion masks from a database binned by volume (50-100,
  100-500, 500-1000, 1000-5000, >5000 mm^3) until the lesion load is met. We either make irregular
  blobs (a randomly rotated, randomly elongated ellipsoid distance field plus smooth noise, carved to
  the exact voxel count) with sizes drawn across the same bins (``source: simulated``), or take the
  connected components of user masks from a folder (``source: folder``). Lesions are placed in white
  matter, with a configurable share of centres drawn near the ventricles, never overlapping or touching,
  never outside the brain, until the load (mL, measured at the fine grid) is met.
* **Resolution.** Lesions are made on a grid ``grid_mm`` fine (default 1 mm) that subdivides each
  working voxel, then area-averaged to the working grid as a soft label; the ground truth is the soft
  label >= ``mask_threshold``. At a coarse working grid many small lesions made at 1 mm vanish from the
  ground truth; making them finer keeps the size mix honest and lets the table say which lesions survive.
* **Intensity (MS-MIST).** Only voxels whose intensity looks like white matter in every channel
  (mean +- ``wm_threshold_sd`` sd of the subject's own WM) may hold lesion; per lesion and modality a
  multiplicative contrast is drawn around MS-MIST's means (T1 0.791, T2 1.374) with
  ``lesion_variability_sd`` times their sd (0.139, 0.353), kept on its side of 1; the lesion's mask is
  smoothed with a Gaussian of ``border_sigma_mm``, so its border blends into the tissue. Contrast is
  applied on a positive scale ``p = (x + 1) / 2`` and mapped back. That scale puts zero at the darkest
  in-brain intensity (the 0.01 percentile), not at physical zero, so a tissue near the bottom of the
  window (e.g. T2 white matter when the brain mask holds no darker voxels) changes little.
* **The paper's x1.5 enhancement**, two variants (``enhancement.mode``):
  ``contrast`` (default, ours): the lesion's deviation from the clean image is multiplied by the
  factor, ``p' = p * (1 + factor * D)``; T1 lesions stay darker and T2 lesions brighter than WM.
  ``code`` (the authors' code): the normalised [-1, 1] image is multiplied by ``1 + (factor - 1) * S``
  under the soft label S; this brightens dark T1 lesions back towards WM, so lesions become nearly
  T2-only. ``none`` applies no enhancement. Results are clipped to [-1, 1], the range of the cropped images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd

from spatial_msma import io
from spatial_msma.lesions.config import CHANNELS, LesionsConfig
from spatial_msma.lesions.grids import FineGrid, block_mean, fine_grid, resample_to_grid, upsample_nearest
from spatial_msma.lesions.intensity import apply_contrast, lesion_intensities, wm_intensity_filter
from spatial_msma.lesions.placement import place_lesions, start_placement, ventricle_map
from spatial_msma.lesions.shapes import LibraryLesion, load_lesion_library
from spatial_msma.template import Template, load_template


def subject_seed(seed: int, subject: str) -> int:
    """A 64-bit seed from (global seed, subject id) via SHA-256: stable across platforms and processes.

    Python's ``hash()`` of a string is salted per process, so it would give different lesions per run.
    """
    digest = hashlib.sha256(f"{int(seed)}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass
class LesionSimulation:
    """Everything one subject's simulation produced (arrays on the working grid unless named fine)."""

    image: np.ndarray  # (C, X, Y, Z) float32, lesioned
    soft: np.ndarray  # (X, Y, Z) float32 soft lesion label in [0, 1]
    mask: np.ndarray  # (X, Y, Z) bool ground truth
    lesions: pd.DataFrame  # one row per lesion
    fine_labels: np.ndarray  # fine grid int32, lesion id per sub-voxel (0 = none)
    fine: FineGrid
    wm_stats: dict  # channel -> (mean, sd) of the subject's white matter

    def summary(self, subject: str) -> dict:
        """The subject's row of the summary table."""
        working_volume = self.fine.voxel_volume * float(np.prod(self.fine.k))
        return summary_row(subject, self.lesions, self.mask, working_volume)


def summary_row(subject: str, table: pd.DataFrame, mask: np.ndarray, working_voxel_mm3: float) -> dict:
    """Lesion count (all, visible at the working grid, under 500 mm^3) and load at the fine and working grid."""
    return {
        "subject": subject,
        "n_lesions": len(table),
        "n_lesions_working": int(table["survives"].astype(bool).sum()),
        "n_lesions_under_500mm3": int((table["volume_mm3"] < 500).sum()),
        "load_ml_fine": round(float(table["volume_mm3"].sum()) / 1000.0, 4),
        "load_ml_working": round(float(mask.sum()) * working_voxel_mm3 / 1000.0, 4),
    }


def simulate_lesions(
    image: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    cfg: LesionsConfig | Mapping | None,
    seed: int,
    subject: str,
    template: Template | None = None,
    library: Sequence[LibraryLesion] | None = None,
    channels: Sequence[str] = CHANNELS,
) -> LesionSimulation:
    """Add MS-MIST-style lesions to one subject's template-space image (module docstring).

    ``image`` is (C, X, Y, Z) in [-1, 1] with -1 outside ``brain``; ``channels`` names its channels as in
    ``cfg.contrast``. The random stream is seeded by :func:`subject_seed` (``seed``, ``subject``), so
    the same inputs give the same bytes. ``library`` overrides reading ``cfg.folder`` (folder source).
    """
    cfg = cfg if isinstance(cfg, LesionsConfig) else LesionsConfig.from_dict(cfg)
    image = np.asarray(image, dtype=np.float32)
    brain = np.asarray(brain, dtype=bool)
    _check_channels(image, brain, cfg, channels)
    template = template or load_template()
    if cfg.source == "folder" and library is None:
        library = load_lesion_library(cfg.folder, min_volume_mm3=cfg.size_bins_mm3[0])
    rng = np.random.default_rng(subject_seed(seed, subject))

    grid = fine_grid(brain.shape, affine, cfg.grid_mm)
    wm_fine = resample_to_grid(template.wm, template.affine, grid.shape, grid.affine)
    wm_ok, wm_stats = wm_intensity_filter(image, brain, block_mean(wm_fine, grid.k), cfg.wm_threshold_sd, channels)
    allowed = (wm_fine >= cfg.wm_prior_min) & upsample_nearest(brain & wm_ok, grid.k)
    del wm_fine
    vents = ventricle_map(template)
    centres = nib.affines.apply_affine(affine, np.indices(brain.shape).reshape(3, -1).T)
    state = start_placement(grid, allowed, vents.at_world(centres).reshape(brain.shape), cfg)
    rows = place_lesions(state, cfg, rng, library)

    soft, deviation, columns = lesion_intensities(state.labels, grid, cfg, rng, brain, channels)
    lesioned = apply_contrast(image, soft, deviation, cfg.enhancement)
    mask = soft >= cfg.mask_threshold
    table = pd.DataFrame([{**row, **more} for row, more in zip(rows, columns, strict=True)],
                         columns=_table_columns(channels))
    if len(table):
        table["distance_to_ventricles_mm"] = np.round(vents.at_world(table[["x_mm", "y_mm", "z_mm"]].to_numpy()), 2)
    table.insert(0, "subject", subject)
    return LesionSimulation(lesioned, soft, mask, table, state.labels, grid, wm_stats)


def _check_channels(image: np.ndarray, brain: np.ndarray, cfg: LesionsConfig, channels: Sequence[str]) -> None:
    """The image matches the brain mask, and ``cfg.contrast`` names exactly the image's channels."""
    if image.ndim != 4 or image.shape[1:] != brain.shape:
        raise io.InputError(f"image shape {image.shape} does not match brain mask shape {brain.shape}")
    if image.shape[0] != len(channels):
        raise io.InputError(f"image has {image.shape[0]} channels, expected {len(channels)} ({', '.join(channels)})")
    missing = [c for c in channels if c not in cfg.contrast]
    if missing:
        raise io.InputError(f"lesions.contrast.{missing[0]}: no contrast given for this image channel")
    extra = sorted(set(cfg.contrast) - set(channels))
    if extra:
        raise io.InputError(f"lesions.contrast.{extra[0]}: not a channel of the image ({', '.join(channels)})")


def _table_columns(channels: Sequence[str]) -> list[str]:
    """Per-lesion table: id, origin, size bin, fine-grid volume, centroid (MNI mm), contrasts, working grid."""
    return [
        "lesion", "source", "size_bin", "volume_mm3", "x_mm", "y_mm", "z_mm", "distance_to_ventricles_mm",
        *[f"contrast_{c}" for c in channels], "working_voxels", "volume_mm3_working", "survives",
    ]


def simulate_subject_files(
    image_path: str | os.PathLike,
    brainmask_path: str | os.PathLike,
    out_image: str | os.PathLike,
    out_mask: str | os.PathLike,
    out_table: str | os.PathLike,
    cfg: LesionsConfig | Mapping | None,
    seed: int,
    subject: str,
    logger: logging.Logger | None = None,
) -> LesionSimulation:
    """One subject: read the cropped image and brain mask, simulate, write image, mask and lesion table."""
    logger = logger or logging.getLogger(__name__)
    t0 = time.monotonic()
    image, affine = io.read_channels(image_path)
    brain, mask_affine = io.read_mask(brainmask_path)
    if brain.shape != image.shape[1:] or not np.allclose(affine, mask_affine, atol=1e-3):
        raise io.InputError(f"brain mask {brainmask_path}: grid differs from image {image_path}")
    result = simulate_lesions(image, brain, affine, cfg, seed, subject)
    io.write_channels(result.image, affine, out_image)
    io.write_nifti(result.mask, affine, out_mask)
    io.write_table(result.lesions, out_table)
    summary = result.summary(subject)
    logger.info(
        "%s: %d lesions (%d visible at the working grid), load %.2f mL at %.2g mm, %.2f mL at the working grid, "
        "WM %s, %.1f s",
        subject, summary["n_lesions"], summary["n_lesions_working"], summary["load_ml_fine"],
        float(result.fine.voxel_mm.max()), summary["load_ml_working"],
        ", ".join(f"{c} {m:.3f}+-{s:.3f}" for c, (m, s) in result.wm_stats.items()), time.monotonic() - t0,
    )
    return result
