"""MS-MIST-style lesion simulation in template space, at a finer grid than the working one.

The paper made its test set with MS-MIST (the 3D Slicer MSLesionSimulator), which cannot be installed
here, so this module re-implements its model with a seeded generator:

* **Shapes and sizes.** MS-MIST draws real lesion masks from a database binned by volume (50-100,
  100-500, 500-1000, 1000-5000, >5000 mm^3) until the lesion load is met. We either make irregular
  blobs (a randomly rotated, randomly elongated ellipsoid distance field plus smooth noise, carved to
  the exact voxel count) with sizes drawn across the same bins (``source: simulated``), or take the
  connected components of user masks from a folder (``source: folder``). Lesions are placed in white
  matter, with a configurable share of centres drawn near the ventricles, never overlapping or touching,
  never outside the brain, until the load (mL, measured at the fine grid) is met.
* **Resolution.** Lesions are made on a grid ``grid_mm`` fine (default 1 mm) that subdivides each
  working voxel, then area-averaged to the working grid as a soft label; the ground truth is the soft
  label >= ``mask_threshold``. At a 4 mm working grid a quarter of the lesions made at 1 mm vanish from
  the ground truth (measurements.md); making them finer keeps the size mix honest and lets the table
  say which lesions survive.
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
  under the soft label S; this brightens T1 lesions back towards WM (measurements.md: lesion T1 0.79
  vs clean 0.82), so lesions become nearly T2-only. ``none`` applies no enhancement.
  Results are clipped to [-1, 1], the range of the cropped images.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from spatial_msma import io
from spatial_msma.template import Template, load_template

DEFAULT_CONFIG: dict = {
    "source": "simulated",
    "folder": None,
    "load_ml": 20.0,
    "grid_mm": 1.0,
    "size_bins_mm3": [50, 100, 500, 1000, 5000, 15000],
    "bin_weights": [0.3, 0.4, 0.15, 0.12, 0.03],
    "wm_prior_min": 0.5,
    "periventricular_bias": 0.5,
    "periventricular_scale_mm": 8.0,
    "wm_threshold_sd": 1.5,
    "contrast": {"t1": {"mean": 0.791, "sd": 0.139}, "t2": {"mean": 1.374, "sd": 0.353}},
    "lesion_variability_sd": 0.5,
    "border_sigma_mm": 0.75,
    "enhancement": {"factor": 1.5, "mode": "contrast"},
    "mask_threshold": 0.5,
}
ENHANCEMENT_MODES = ("contrast", "code", "none")
CHANNELS = ("t1", "t2")

# Voxels whose template WM prior exceeds this (inside the brain) give the subject's WM intensity statistics.
_WM_STATS_PRIOR = 0.9
# The ventricles of the template: CSF (>= 0.5) at least this deep inside the brain mask, in components of
# at least this volume. Sulcal CSF lies closer to the surface; the lateral ventricles are ~50 mm deep.
_VENTRICLE_DEPTH_MM = 30.0
_VENTRICLE_MIN_MM3 = 500.0
# Lesions may fill at most this share of the eligible white matter: beyond it non-overlapping placement of
# irregular shapes fails long before the volume runs out, so a larger load is a configuration error.
_MAX_WM_FILL = 0.25
# A placed lesion must keep this share of its drawn voxels after carving to eligible, free white matter.
_MIN_KEPT = 0.8
# Shape of simulated blobs: log-sd of the ellipsoid axis ratios, amplitude and correlation length (in
# units of the equivalent radius) of the smooth noise that makes the outline irregular.
_ASPECT_LOG_SD = 0.3
_IRREGULARITY = 0.35
_NOISE_SCALE = 0.4
# Consecutive failed placements before giving up with an error.
_MAX_FAILURES = 200


# ----------------------------------------------------------------------------------------------- config
def resolve_config(cfg: Mapping | None) -> dict:
    """Merge a ``lesions`` config section over :data:`DEFAULT_CONFIG` and validate it.

    Raises :class:`io.InputError` naming the offending key (``lesions.<key>``), so a typo in a YAML file
    is reported at the start of a run, not as a silently ignored setting.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise io.InputError(f"lesions.{unknown[0]}: unknown key (known: {', '.join(sorted(DEFAULT_CONFIG))})")
    out = {**DEFAULT_CONFIG, **cfg}
    out["contrast"] = _resolve_contrast(cfg.get("contrast"))
    enh = dict(cfg.get("enhancement") or {})
    bad = sorted(set(enh) - {"factor", "mode"})
    if bad:
        raise io.InputError(f"lesions.enhancement.{bad[0]}: unknown key (known: factor, mode)")
    out["enhancement"] = {**DEFAULT_CONFIG["enhancement"], **enh}

    if out["source"] not in ("simulated", "folder"):
        raise io.InputError(f"lesions.source: {out['source']!r} is not one of 'simulated', 'folder'")
    if out["source"] == "folder" and not out["folder"]:
        raise io.InputError("lesions.folder: required when lesions.source is 'folder'")
    for key in ("load_ml", "grid_mm", "periventricular_scale_mm", "wm_threshold_sd"):
        _positive(out, key)
    for key in ("lesion_variability_sd", "border_sigma_mm"):
        _positive(out, key, allow_zero=True)
    for key, lo_open in (("wm_prior_min", False), ("periventricular_bias", False), ("mask_threshold", True)):
        value = _number(out, key)
        if not (0.0 < value <= 1.0 if lo_open else 0.0 <= value <= 1.0):
            raise io.InputError(f"lesions.{key}: {value} must lie in {'(0' if lo_open else '[0'}, 1]")
    edges = [float(e) for e in _sequence(out, "size_bins_mm3")]
    weights = [float(w) for w in _sequence(out, "bin_weights")]
    if len(edges) < 2 or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise io.InputError(f"lesions.size_bins_mm3: {edges} must be >= 2 increasing positive bin edges")
    if len(weights) != len(edges) - 1 or min(weights) < 0 or sum(weights) <= 0:
        raise io.InputError(
            f"lesions.bin_weights: {weights} must be {len(edges) - 1} non-negative weights (one per size bin)"
        )
    out["size_bins_mm3"], out["bin_weights"] = edges, weights
    mode = out["enhancement"]["mode"]
    if mode not in ENHANCEMENT_MODES:
        raise io.InputError(f"lesions.enhancement.mode: {mode!r} is not one of {', '.join(ENHANCEMENT_MODES)}")
    factor = out["enhancement"]["factor"]
    if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 0:
        raise io.InputError(f"lesions.enhancement.factor: {factor!r} must be a positive number")
    return out


def _resolve_contrast(user: Mapping | None) -> dict:
    out = {name: dict(spec) for name, spec in DEFAULT_CONFIG["contrast"].items()}
    for name, spec in (user or {}).items():
        if not isinstance(spec, Mapping):
            raise io.InputError(f"lesions.contrast.{name}: expected a mapping with mean and sd")
        bad = sorted(set(spec) - {"mean", "sd"})
        if bad:
            raise io.InputError(f"lesions.contrast.{name}.{bad[0]}: unknown key (known: mean, sd)")
        out[name] = {**out.get(name, {}), **spec}
        if set(out[name]) != {"mean", "sd"}:
            raise io.InputError(f"lesions.contrast.{name}: needs both mean and sd")
        if not out[name]["mean"] > 0 or not out[name]["sd"] >= 0:
            raise io.InputError(f"lesions.contrast.{name}: mean must be > 0 and sd >= 0, got {out[name]}")
    return out


def _number(cfg: dict, key: str) -> float:
    value = cfg[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise io.InputError(f"lesions.{key}: {value!r} is not a number")
    return float(value)


def _positive(cfg: dict, key: str, allow_zero: bool = False) -> None:
    value = _number(cfg, key)
    if value < 0 or (value == 0 and not allow_zero):
        raise io.InputError(f"lesions.{key}: {value} must be {'>= 0' if allow_zero else '> 0'}")


def _sequence(cfg: dict, key: str) -> list:
    value = cfg[key]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise io.InputError(f"lesions.{key}: {value!r} must be a list of numbers")
    return list(value)


def subject_seed(seed: int, subject: str) -> int:
    """A 64-bit seed from (global seed, subject id) via SHA-256: stable across platforms and processes.

    Python's ``hash()`` of a string is salted per process, so it would give different lesions per run.
    """
    digest = hashlib.sha256(f"{int(seed)}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def size_bin_label(volume_mm3: float, edges: Sequence[float]) -> str:
    """The MS-MIST size bin of a volume: ``"50-100"`` ... and ``">5000"`` for the open last bin."""
    if volume_mm3 < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in zip(edges[:-2], edges[1:-1], strict=False):
        if volume_mm3 < hi:
            return f"{lo:g}-{hi:g}"
    return f">{edges[-2]:g}"


# ------------------------------------------------------------------------------------------------ grids
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
    belongs to one working voxel), which is the partial-volume model of a real acquisition.
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


# --------------------------------------------------------------------------------------- template maps
@dataclass(frozen=True)
class VentricleMap:
    """Distance (mm) to the template's ventricles on a 2 mm subsample of the template grid."""

    distance: np.ndarray
    affine: np.ndarray

    def at_world(self, points_mm: np.ndarray) -> np.ndarray:
        """Distances at (n, 3) world points, trilinear."""
        ijk = nib.affines.apply_affine(np.linalg.inv(self.affine), points_mm).T
        return ndi.map_coordinates(self.distance, ijk, order=1, mode="nearest")


def ventricle_map(template: Template) -> VentricleMap:
    """Ventricles = deep CSF of the template (see the ``_VENTRICLE_*`` constants); distance map around them.

    Computed on every second template voxel: the map only weights where lesion centres go, and 2 mm
    keeps the two distance transforms at a tenth of a second.
    """
    brain = template.brain[::2, ::2, ::2]
    csf = template.csf[::2, ::2, ::2]
    affine = template.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    depth = ndi.distance_transform_edt(brain, sampling=2.0)
    deep_csf = (csf >= 0.5) & (depth >= _VENTRICLE_DEPTH_MM)
    labels, n = ndi.label(deep_csf)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * 8.0
    keep = np.flatnonzero(sizes >= _VENTRICLE_MIN_MM3)
    ventricles = np.isin(labels, keep[keep > 0])
    if not ventricles.any():
        return VentricleMap(np.full(brain.shape, np.inf, dtype=np.float32), affine)
    distance = ndi.distance_transform_edt(~ventricles, sampling=2.0).astype(np.float32)
    return VentricleMap(distance, affine)


# ------------------------------------------------------------------------------------ lesion library
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
        data = np.asarray(img.dataobj) > 0.5
        labels, n = ndi.label(data, structure=np.ones((3, 3, 3)))
        voxel_volume = float(abs(np.linalg.det(img.affine[:3, :3])))
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            comp = labels[box] == index
            volume = float(comp.sum()) * voxel_volume
            if volume < min_volume_mm3:
                continue
            start = np.array([s.start for s in box], dtype=np.float64)
            box_affine = img.affine @ _translation(start)
            centroid = nib.affines.apply_affine(box_affine, np.argwhere(comp).mean(axis=0))
            lesions.append(LibraryLesion(comp.astype(np.float32), box_affine, centroid, volume, f"{path.name}#{index}"))
    if not lesions:
        raise io.InputError(
            f"lesions.folder {folder}: no lesion component of at least {min_volume_mm3:g} mm^3 in {len(files)} masks"
        )
    return lesions


def _translation(offset: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


# ----------------------------------------------------------------------------------------- simulation
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


@dataclass
class _Placement:
    """Mutable state of the placement loop on the fine grid."""

    grid: FineGrid
    allowed: np.ndarray  # fine bool
    labels: np.ndarray  # fine int32
    centre_p: np.ndarray  # probability per working voxel (flat, over centre_index)
    centre_index: np.ndarray  # flat working indices with p > 0
    working_shape: tuple[int, int, int]


def simulate_lesions(
    image: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    cfg: Mapping | None,
    seed: int,
    subject: str,
    template: Template | None = None,
    library: Sequence[LibraryLesion] | None = None,
    channels: Sequence[str] = CHANNELS,
) -> LesionSimulation:
    """Add MS-MIST-style lesions to one subject's template-space image (see the module docstring).

    ``image`` is (C, X, Y, Z) in [-1, 1] with -1 outside ``brain``; ``channels`` names its channels as in
    ``cfg['contrast']``. The random stream is seeded by :func:`subject_seed` (``seed``, ``subject``), so
    the same inputs give the same bytes. ``library`` overrides reading ``cfg['folder']`` (folder source).
    """
    cfg = resolve_config(cfg)
    image = np.asarray(image, dtype=np.float32)
    brain = np.asarray(brain, dtype=bool)
    if image.ndim != 4 or image.shape[1:] != brain.shape:
        raise io.InputError(f"image shape {image.shape} does not match brain mask shape {brain.shape}")
    if image.shape[0] != len(channels):
        raise io.InputError(f"image has {image.shape[0]} channels, expected {len(channels)} ({', '.join(channels)})")
    missing = [c for c in channels if c not in cfg["contrast"]]
    if missing:
        raise io.InputError(f"lesions.contrast.{missing[0]}: no contrast given for this image channel")
    extra = sorted(set(cfg["contrast"]) - set(channels))
    if extra:
        raise io.InputError(f"lesions.contrast.{extra[0]}: not a channel of the image ({', '.join(channels)})")
    template = template or load_template()
    if cfg["source"] == "folder" and library is None:
        library = load_lesion_library(cfg["folder"], min_volume_mm3=cfg["size_bins_mm3"][0])
    rng = np.random.default_rng(subject_seed(seed, subject))

    grid = fine_grid(brain.shape, affine, cfg["grid_mm"])
    wm_fine = resample_to_grid(template.wm, template.affine, grid.shape, grid.affine)
    wm_working = block_mean(wm_fine, grid.k)
    wm_ok, wm_stats = wm_intensity_filter(image, brain, wm_working, cfg["wm_threshold_sd"], channels)
    allowed = (wm_fine >= cfg["wm_prior_min"]) & upsample_nearest(brain & wm_ok, grid.k)
    del wm_fine
    capacity_ml = float(allowed.sum()) * grid.voxel_volume / 1000.0
    if cfg["load_ml"] > _MAX_WM_FILL * capacity_ml:
        raise io.InputError(
            f"lesions.load_ml: {cfg['load_ml']:g} mL is more than the white matter can hold: this image has "
            f"{capacity_ml:.1f} mL of eligible white matter, of which at most {_MAX_WM_FILL:.0%} "
            f"({_MAX_WM_FILL * capacity_ml:.1f} mL) can take non-overlapping lesions"
        )

    vents = ventricle_map(template)
    centres = nib.affines.apply_affine(affine, np.indices(brain.shape).reshape(3, -1).T)
    distance = vents.at_world(centres).reshape(brain.shape)
    centre_p = _centre_probabilities(block_mean(allowed, grid.k), distance, cfg)
    labels = np.zeros(grid.shape, dtype=np.int32)
    state = _Placement(grid, allowed, labels, centre_p[centre_p > 0], np.flatnonzero(centre_p), brain.shape)
    if cfg["source"] == "simulated":
        rows = _place_simulated(state, cfg, rng)
    else:
        rows = _place_library(state, cfg, rng, library)

    soft, deviation, rows = _lesion_intensities(state, rows, cfg, rng, brain, channels)
    lesioned = apply_contrast(image, soft, deviation, cfg["enhancement"])
    mask = soft >= cfg["mask_threshold"]
    table = pd.DataFrame(rows, columns=_table_columns(channels))
    if len(table):
        table["distance_to_ventricles_mm"] = np.round(vents.at_world(table[["x_mm", "y_mm", "z_mm"]].to_numpy()), 2)
    table.insert(0, "subject", subject)
    return LesionSimulation(lesioned, soft, mask, table, state.labels, grid, wm_stats)


def _table_columns(channels: Sequence[str]) -> list[str]:
    """Per-lesion table: id, origin, size bin, fine-grid volume, centroid (MNI mm), contrasts, working grid."""
    return [
        "lesion", "source", "size_bin", "volume_mm3", "x_mm", "y_mm", "z_mm", "distance_to_ventricles_mm",
        *[f"contrast_{c}" for c in channels], "working_voxels", "volume_mm3_working", "survives",
    ]


def wm_intensity_filter(
    image: np.ndarray, brain: np.ndarray, wm_prior: np.ndarray, k_sd: float, channels: Sequence[str] = CHANNELS
) -> tuple[np.ndarray, dict]:
    """MS-MIST's WM threshold: voxels whose intensity lies within mean +- k sd of the subject's WM, per channel.

    The statistics come from the subject's own image where the template WM prior exceeds 0.9 (inside the
    brain), so a lesion is only painted where the tissue already looks like white matter in every
    channel, not into partial-volume GM or CSF that the prior still calls WM.
    """
    reference = brain & (wm_prior > _WM_STATS_PRIOR)
    if reference.sum() < 10:
        raise io.InputError(
            f"image: only {int(reference.sum())} brain voxels have a template WM prior > {_WM_STATS_PRIOR}; "
            "is the image in template (MNI) space?"
        )
    ok = np.ones(brain.shape, dtype=bool)
    stats = {}
    for name, channel in zip(channels, image, strict=True):
        mean, sd = float(channel[reference].mean()), float(channel[reference].std())
        ok &= np.abs(channel - mean) <= k_sd * sd
        stats[name] = (mean, sd)
    return ok, stats


def _centre_probabilities(allowed_frac: np.ndarray, distance: np.ndarray, cfg: dict) -> np.ndarray:
    """Where lesion centres go: a mixture of uniform over eligible WM and a periventricular component.

    ``periventricular_bias`` is the mixture weight, i.e. the expected share of centres drawn from the
    component that decays as exp(-distance / scale) away from the ventricles.
    """
    uniform = allowed_frac.astype(np.float64).ravel()
    near = uniform * np.exp(-np.nan_to_num(distance.ravel(), posinf=1e9) / cfg["periventricular_scale_mm"])
    bias = cfg["periventricular_bias"] if near.sum() > 0 else 0.0
    p = (1.0 - bias) * uniform / uniform.sum()
    if bias > 0:
        p += bias * near / near.sum()
    return p / p.sum()


def _draw_centre(state: _Placement, rng: np.random.Generator) -> np.ndarray:
    """A fine-grid voxel: a working voxel drawn by the centre probabilities, then a sub-voxel in it."""
    flat = state.centre_index[rng.choice(state.centre_index.size, p=state.centre_p)]
    working = np.array(np.unravel_index(flat, state.working_shape))
    return working * np.asarray(state.grid.k) + rng.integers(0, state.grid.k)


def _box(centre: np.ndarray, half: np.ndarray, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _carve(state: _Placement, box: tuple[slice, ...], score: np.ndarray, n_target: int) -> np.ndarray | None:
    """The lesion's sub-voxels: the ``n_target`` best-scoring eligible, free ones, largest component.

    Free means not within one sub-voxel of another lesion (26-neighbourhood), so lesions never overlap
    or touch at the fine grid. Returns None when less than ``_MIN_KEPT`` of the target survives.
    """
    grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, state.grid.shape, strict=True))
    near = ndi.maximum_filter(state.labels[grown] > 0, size=3)
    inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown, strict=True))
    candidate = state.allowed[box] & ~near[inner] & np.isfinite(score)
    n_candidates = int(candidate.sum())
    if n_candidates < _MIN_KEPT * n_target:
        return None
    flat = np.flatnonzero(candidate)
    if n_candidates > n_target:
        flat = flat[np.argpartition(-score.ravel()[flat], n_target - 1)[:n_target]]
    chosen = np.zeros(score.shape, dtype=bool)
    chosen.ravel()[flat] = True
    labels, n = ndi.label(chosen, structure=np.ones((3, 3, 3)))
    if n > 1:
        chosen = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return chosen if chosen.sum() >= _MIN_KEPT * n_target else None


def _blob_score(
    shape: tuple[int, int, int], centre: np.ndarray, voxel_mm: np.ndarray, volume: float, rng: np.random.Generator
) -> np.ndarray:
    """An irregular lesion's score field: higher = more inside. Top-N of it is the lesion.

    A randomly rotated ellipsoid with random axis ratios (MS lesions are ovoid) whose normalised radius is
    perturbed by smooth Gaussian noise, so outlines are lumpy rather than geometric.
    """
    radius = (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
    aspect = np.exp(rng.normal(0.0, _ASPECT_LOG_SD, 3))
    axes = radius * aspect / np.prod(aspect) ** (1.0 / 3.0)
    rotation = Rotation.random(random_state=rng).as_matrix()
    offsets = (np.indices(shape).reshape(3, -1).T - centre) * voxel_mm
    local = offsets @ rotation / axes
    distance = np.sqrt((local**2).sum(axis=1)).reshape(shape)
    noise = ndi.gaussian_filter(rng.standard_normal(shape), _NOISE_SCALE * radius / voxel_mm, mode="wrap")
    noise /= max(float(noise.std()), 1e-9)
    return -distance + _IRREGULARITY * noise


def _place_simulated(state: _Placement, cfg: dict, rng: np.random.Generator) -> list[dict]:
    """Draw sizes across the bins and place blobs until the load (fine grid) is met."""
    edges, weights = np.asarray(cfg["size_bins_mm3"]), np.asarray(cfg["bin_weights"])
    weights = weights / weights.sum()
    target = cfg["load_ml"] * 1000.0
    grid, rows, load, failures = state.grid, [], 0.0, 0
    while target - load >= edges[0]:
        b = rng.choice(weights.size, p=weights)
        volume = float(np.exp(rng.uniform(np.log(edges[b]), np.log(edges[b + 1]))))
        volume = max(min(volume, target - load), edges[0])
        n_target = max(1, round(volume / grid.voxel_volume))
        reach = (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0) * 2.2 + 2.0 * grid.voxel_mm.max()
        centre = _draw_centre(state, rng)
        box = _box(centre, np.ceil(reach / grid.voxel_mm).astype(int), grid.shape)
        start = np.array([s.start for s in box])
        shape = tuple(s.stop - s.start for s in box)
        chosen = _carve(state, box, _blob_score(shape, centre - start, grid.voxel_mm, volume, rng), n_target)
        if chosen is None:
            failures += 1
            if failures >= _MAX_FAILURES:
                raise _placement_error(cfg, load, len(rows))
            continue
        failures = 0
        load += _commit(state, box, chosen, rows, "simulated", cfg)
    return rows


def _place_library(
    state: _Placement, cfg: dict, rng: np.random.Generator, library: Sequence[LibraryLesion]
) -> list[dict]:
    """Place user lesions (each at a random WM centre, unrotated) until no remaining one fits the load.

    A component is drawn with probability proportional to its size bin's weight shared among the bin's
    components that still fit, which reproduces MS-MIST's bin-wise draw from its database.
    """
    edges, weights = cfg["size_bins_mm3"], np.asarray(cfg["bin_weights"])
    bins = np.array([min(int(np.searchsorted(edges, les.volume_mm3, side="right")) - 1, len(weights) - 1)
                     for les in library])
    volumes = np.array([les.volume_mm3 for les in library])
    target = cfg["load_ml"] * 1000.0
    if volumes.min() > target:
        raise io.InputError(
            f"lesions.folder {cfg['folder']}: the smallest lesion ({volumes.min():.0f} mm^3) exceeds "
            f"lesions.load_ml = {cfg['load_ml']:g} mL"
        )
    grid, rows, load, failures = state.grid, [], 0.0, 0
    while True:
        fits = volumes <= target - load
        p = np.where(fits, weights[bins], 0.0)
        for b in np.unique(bins[fits]):
            p[bins == b] /= np.count_nonzero(fits & (bins == b))
        if p.sum() <= 0:
            return rows
        lesion = library[rng.choice(len(library), p=p / p.sum())]
        centre = _draw_centre(state, rng)
        world_centre = nib.affines.apply_affine(grid.affine, centre)
        corners = np.argwhere(np.ones((2, 2, 2))) * (np.array(lesion.mask.shape) - 1)
        corners = nib.affines.apply_affine(lesion.affine, corners)
        # The interpolated mask reaches one of the mask's voxels beyond its outer voxel centres.
        voxel_extent = np.abs(lesion.affine[:3, :3]).sum(axis=1)
        reach = np.abs(corners - lesion.centroid_mm).max(axis=0) + voxel_extent + grid.voxel_mm.max()
        box = _box(centre, np.ceil(reach / grid.voxel_mm).astype(int), grid.shape)
        start = np.array([s.start for s in box], dtype=np.float64)
        shift = _translation(lesion.centroid_mm - world_centre)
        matrix = np.linalg.inv(lesion.affine) @ shift @ grid.affine @ _translation(start)
        shape = tuple(s.stop - s.start for s in box)
        # grid-constant: interpolate towards 0 beyond the cropped box's edge voxels; "constant" cuts the
        # lesion at its outer voxel centres, half a mask voxel short on every side.
        inside = ndi.affine_transform(lesion.mask, matrix, output_shape=shape, order=1, mode="grid-constant")
        n_target = max(1, round(lesion.volume_mm3 / grid.voxel_volume))
        chosen = _carve(state, box, _footprint_score(inside, n_target), n_target)
        if chosen is None:
            failures += 1
            if failures >= _MAX_FAILURES:
                raise _placement_error(cfg, load, len(rows))
            continue
        failures = 0
        load += _commit(state, box, chosen, rows, lesion.source, cfg)


def _footprint_score(inside: np.ndarray, n_target: int) -> np.ndarray:
    """A resampled user lesion as a score field: its interpolated value on the ``n_target`` sub-voxels most
    inside it, -inf elsewhere.

    Thresholding the interpolated mask at 0.5 does not keep its volume (a 2 mm cube sampled at 1 mm loses
    its faces to ties at 0.5: 729 of 1000 mm^3), and ``_carve`` measures ``_MIN_KEPT`` against
    ``n_target``; taking the top ``n_target`` = the library volume in sub-voxels keeps the volume, so a
    placement is accepted only with >= ``_MIN_KEPT`` of the user's lesion. A footprint clipped by the
    grid's edge has fewer voxels and is rejected there.
    """
    flat = np.flatnonzero(inside > 0)
    if flat.size > n_target:
        flat = flat[np.argpartition(-inside.ravel()[flat], n_target - 1)[:n_target]]
    score = np.full(inside.shape, -np.inf, dtype=np.float32)
    score.ravel()[flat] = inside.ravel()[flat]
    return score


def _placement_error(cfg: dict, load: float, n: int) -> io.InputError:
    return io.InputError(
        f"lesions.load_ml: could not place more lesions after {_MAX_FAILURES} tries ({n} lesions, "
        f"{load / 1000.0:.2f} of {cfg['load_ml']:g} mL placed): the white matter is too full or too "
        "fragmented for this load and these lesion sizes"
    )


def _commit(
    state: _Placement, box: tuple[slice, ...], chosen: np.ndarray, rows: list[dict], source: str, cfg: dict
) -> float:
    """Write an accepted lesion into the fine label map and start its table row; returns its volume."""
    lesion_id = len(rows) + 1
    state.labels[box][chosen] = lesion_id
    start = np.array([s.start for s in box])
    volume = float(chosen.sum()) * state.grid.voxel_volume
    centroid = nib.affines.apply_affine(state.grid.affine, np.argwhere(chosen).mean(axis=0) + start)
    rows.append({
        "lesion": lesion_id, "source": source, "size_bin": size_bin_label(volume, cfg["size_bins_mm3"]),
        "volume_mm3": round(volume, 3), "x_mm": round(float(centroid[0]), 2), "y_mm": round(float(centroid[1]), 2),
        "z_mm": round(float(centroid[2]), 2),
    })
    return volume


def _lesion_intensities(
    state: _Placement, rows: list[dict], cfg: dict, rng: np.random.Generator, brain: np.ndarray, channels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Per lesion: contrast draws, smoothed soft label and contrast deviation, area-averaged per working voxel.

    The lesion mask is smoothed with ``border_sigma_mm`` at the fine grid and block-averaged, which gives
    partial-volume borders at the working grid; its deviation map is ``(c - 1)`` times that soft label
    for the lesion's contrast ``c`` per channel (:func:`draw_contrast`). Work is done in each lesion's
    bounding box, grown by the smoothing reach and aligned to whole working voxels.
    """
    grid, k = state.grid, np.asarray(state.grid.k)
    working_shape = brain.shape
    soft = np.zeros(working_shape, dtype=np.float32)
    deviation = np.zeros((len(channels), *working_shape), dtype=np.float32)
    sigma = cfg["border_sigma_mm"] / grid.voxel_mm
    margin = np.ceil(4.0 * sigma).astype(int) + 1
    working_volume = grid.voxel_volume * float(np.prod(k))
    for row, box in zip(rows, ndi.find_objects(state.labels), strict=True):
        lo = np.maximum((np.array([s.start for s in box]) - margin) // k, 0)
        hi = np.minimum(-(-(np.array([s.stop for s in box]) + margin) // k), working_shape)
        fine_box = tuple(slice(int(a * kk), int(b * kk)) for a, b, kk in zip(lo, hi, k, strict=True))
        working_box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        inside = (state.labels[fine_box] == row["lesion"]).astype(np.float32)
        own = block_mean(_smooth(inside, sigma), grid.k) * brain[working_box]
        soft[working_box] += own
        for index, name in enumerate(channels):
            contrast = draw_contrast(rng, **cfg["contrast"][name], variability=cfg["lesion_variability_sd"])
            deviation[index][working_box] += (contrast - 1.0) * own
            row[f"contrast_{name}"] = round(contrast, 4)
        survived = int((own >= cfg["mask_threshold"]).sum())
        row["working_voxels"] = survived
        row["volume_mm3_working"] = round(survived * working_volume, 3)
        row["survives"] = survived > 0
    return np.minimum(soft, 1.0), deviation, rows


def draw_contrast(rng: np.random.Generator, mean: float, sd: float, variability: float) -> float:
    """One lesion's multiplicative contrast: ``N(mean, variability * sd)``, kept on the side of 1 ``mean`` is on.

    MS-MIST's mean +- sd were measured over real lesions that are all hypointense on T1 and hyperintense
    on T2; a plain normal draw would make some lesions of the opposite kind (7 % of T1 and 14 % of T2
    draws at the full sd), which are not MS lesions, so such draws are redrawn (a truncated normal). A
    factor also stays >= 0.05 so intensities stay positive.
    """
    spread = variability * sd
    for _ in range(1000):
        value = float(rng.normal(mean, spread))
        if value >= 0.05 and (mean == 1.0 or (value < 1.0) == (mean < 1.0)):
            return value
    return float(mean)


def _smooth(arr: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(arr, sigma, mode="constant") if np.any(sigma > 0) else arr


def apply_contrast(image: np.ndarray, soft: np.ndarray, deviation: np.ndarray, enhancement: Mapping) -> np.ndarray:
    """Paint lesions: multiplicative contrast on ``p = (x + 1) / 2``, the chosen x1.5 variant, back to [-1, 1].

    ``deviation[c]`` is the area-averaged ``(contrast - 1) * smoothed mask`` per channel, ``soft`` the area-averaged
    lesion label; both are zero outside the brain, so voxels there keep their value.
    """
    factor, mode = float(enhancement["factor"]), enhancement["mode"]
    positive = (image + 1.0) / 2.0
    if mode == "contrast":
        lesioned = positive * (1.0 + factor * deviation)
    else:
        lesioned = positive * (1.0 + deviation)
    out = 2.0 * np.clip(lesioned, 0.0, 1.0) - 1.0
    if mode == "code":
        out = out * (1.0 + (factor - 1.0) * soft)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ file level
def simulate_subject_files(
    image_path: str | os.PathLike,
    brainmask_path: str | os.PathLike,
    out_image: str | os.PathLike,
    out_mask: str | os.PathLike,
    out_table: str | os.PathLike,
    cfg: Mapping | None,
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


def summarise_lesions(
    tables: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    images: Sequence[str | os.PathLike],
    out_table: str | os.PathLike,
    out_figure: str | os.PathLike,
    n_show: int = 4,
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


def plot_lesions(
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    subjects: Sequence[str],
    out_figure: str | os.PathLike,
) -> None:
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
