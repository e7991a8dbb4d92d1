"""The built-in synthetic cohort: healthy-looking T1w/T2w heads, in BIDS + ABCD format.

No real paediatric cohort can be downloaded (ABCD and HCP-D need data-use agreements), so the default config
makes one, from one of two anatomies (config ``synthetic.anatomy``):

``mni152``: each subject is the MNI template anatomy pushed through a random smooth deformation, a global and a
ventricular size change and a rigid pose change, given per-tissue contrast jitter, a synthetic scalp and skull
(so skull-stripping has work to do), a smooth bias field and Rician noise. Every subject is the same brain.

``labelmaps``: each subject is one of 20 real heads (SynthSeg's label maps, :mod:`spatial_msma.anatomies`;
subject ``i`` gets anatomy ``perm[i % 20]`` of a seeded permutation, so every anatomy makes ``n_subjects / 20``
subjects) under a random smooth deformation, a size change and a head pose, painted with the per-tissue
T1w/T2w model of :data:`spatial_msma.anatomies.TISSUES` with per-subject contrast jitter, blurred for partial
volume, given a bias field and Rician noise. Its label map in subject space is written too
(``derivatives/synthetic-labels/``), for the registration check of the preprocessing. FreeSurfer's lesion
labels 25/57 are painted as white matter: this is the healthy cohort.

Either way the scans are written at 1 mm in the subject's own (scanner) space. A CBCL table in ABCD
``mh_p_cbcl.csv`` layout comes with it: a known set of subjects above the t-score cut-off, a follow-up event
that must be ignored, one missing score, and a few deliberately broken image files, so every exclusion path of
the cohort stage runs in every demo.

Everything is drawn from ``numpy.random.default_rng([seed, index])`` per subject (the anatomy order from
``[seed, 30_000]``), so a subject's bytes depend only on the seed and its index, not on how many workers made
the cohort or in which order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from .anatomies import anatomy_files, anatomy_name, intensity_tables, load_anatomy, tissue_index
from .cohort import CBCL_SCORES, CBCL_SUMMARIES, CBCL_SYNDROMES, LABELS_DERIVATIVE
from .io import atomic_path, write_json, write_table
from .template import load_template

BASELINE_EVENT = "baseline_year_1_arm_1"
FOLLOWUP_EVENT = "1_year_follow_up_y_arm_1"
SESSION = "baselineYear1Arm1"
BROKEN_KINDS = ("missing_t2w", "truncated_t1w", "nan_t2w", "4d_t1w")
ANATOMIES = ("mni152", "labelmaps")
#: Partial-volume blur of the label-map heads: Gaussian sd in mm (FWHM 1.4 mm, about a 1 mm voxel's extent).
PARTIAL_VOLUME_SD_MM = 0.6
#: Seed-stream offset of the anatomy permutation (subjects use [seed, index], the CBCL table [seed, 10_000]).
ANATOMY_STREAM = 30_000


@dataclass(frozen=True)
class SyntheticSettings:
    """Knobs of the synthetic cohort (the ``synthetic`` config section)."""

    n_subjects: int = 60
    anatomy: str = "mni152"
    voxel_mm: float = 1.0
    fraction_above_cutoff: float = 0.1
    broken: tuple[str, ...] = BROKEN_KINDS
    deformation_mm: float = 3.0
    brain_scale_sd: float = 0.05
    ventricle_scale_range: tuple[float, float] = (0.75, 1.6)
    rotation_deg: float = 5.0
    translation_mm: float = 5.0
    tissue_contrast_sd: float = 0.06
    bias_strength: float = 0.15
    noise_sd: float = 0.025

    @classmethod
    def from_config(cls, cfg: dict) -> SyntheticSettings:
        values = dict(cfg)
        for key in ("broken", "ventricle_scale_range"):
            if key in values:
                values[key] = tuple(values[key])
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise KeyError(f"synthetic: unknown key(s) {unknown}")
        if values.get("anatomy", "mni152") not in ANATOMIES:
            raise KeyError(f"synthetic.anatomy: {values['anatomy']!r} is not one of {list(ANATOMIES)}")
        bad = sorted(set(values.get("broken", ())) - set(BROKEN_KINDS))
        if bad:
            raise KeyError(f"synthetic.broken: unknown kind(s) {bad}; choose from {list(BROKEN_KINDS)}")
        return cls(**values)


def subject_ids(n: int) -> list[str]:
    """ABCD-style GUIDs as the CBCL table spells them (``NDAR_INV...``); BIDS labels drop the underscore."""
    return [f"NDAR_INVS{i:04d}SYN" for i in range(n)]


def bids_label(guid: str) -> str:
    return guid.replace("_", "")


# ----------------------------------------------------------------------------------------------- anatomy


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], control: int, amplitude: float) -> np.ndarray:
    """A smooth random field with ``amplitude`` sd: noise on a ``control``^3 grid, cubic-upsampled to a coarse
    grid (1/4 size), then trilinearly to ``shape`` (two steps because cubic zoom of a full 1 mm volume is slow).
    The sd is set on the coarse grid: trilinear upsampling is linear, so that costs no pass over the full grid."""
    coarse = rng.standard_normal((control, control, control))
    mid_shape = [max(control, s // 4) for s in shape]
    mid = ndimage.zoom(coarse, [m / control for m in mid_shape], order=3, mode="nearest")
    mid *= amplitude / max(float(mid.std()), 1e-6)
    return torch.nn.functional.interpolate(
        torch.from_numpy(mid.astype(np.float32))[None, None], size=tuple(shape), mode="trilinear", align_corners=True
    )[0, 0].numpy()


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@functools.cache
def _template_extras() -> tuple[np.ndarray, np.ndarray]:
    """Per-template constants: distance (mm) outside the brain, used to paint CSF rim, skull and scalp around
    every subject, and the world centre of the lateral ventricles (CSF-dense voxels near the midline)."""
    template = load_template()
    dist = ndimage.distance_transform_edt(~template.brain).astype(np.float32)
    ijk = np.argwhere(template.csf > 0.8)
    world = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]
    deep = world[(np.abs(world[:, 0]) < 25) & (np.abs(world[:, 1] + 15) < 30) & (np.abs(world[:, 2] - 15) < 20)]
    return dist, deep.mean(axis=0).astype(np.float32)


@functools.cache
def _template_maps() -> torch.Tensor:
    """The maps every subject samples (T1, GM, WM, CSF, distance outside the brain) as one contiguous
    ``(1, 5, D, H, W)`` float32 tensor for grid_sample, stacked once per process: they are the same for every
    subject, so stacking them anew per subject is wasted work. Only read, so threads may share it."""
    template = load_template()
    dist, _ = _template_extras()
    return torch.from_numpy(np.stack([template.t1, template.gm, template.wm, template.csf, dist]))[None]


def _outer_sum(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``x[i] + y[j] + z[k]`` on the ``(len(x), len(y), len(z))`` grid, as float32, in one full-size pass."""
    x, y, z = (np.asarray(a, np.float32) for a in (x, y, z))
    return (x[:, None, None] + y[None, :, None]) + z[None, None, :]


def make_subject(index: int, seed: int, settings: SyntheticSettings,
                 anatomies: Sequence[str | Path] | None = None) -> dict:
    """Draw one healthy subject. Returns float32 ``t1``/``t2`` on a 1 mm-ish subject grid, its ``affine`` and
    ``anatomy`` (its name); from label maps also ``labels``, the subject's label map on that grid (int16).
    ``anatomies``: the label-map files (default: the shipped ones)."""
    if settings.anatomy == "labelmaps":
        return _labelmap_subject(index, seed, settings, anatomies)
    return _mni_subject(index, seed, settings)


def _mni_subject(index: int, seed: int, settings: SyntheticSettings) -> dict:
    """One subject from the MNI template (``synthetic.anatomy: mni152``)."""
    rng = np.random.default_rng([seed, index])
    template = load_template()
    _, centre = _template_extras()
    vox = settings.voxel_mm
    shape = tuple(int(round(s / vox)) for s in template.t1.shape)
    # Subject grid: same field of view as the template, origin shifted by the pose change.
    rot = _rotation(rng, settings.rotation_deg)
    shift = rng.uniform(-settings.translation_mm, settings.translation_mm, 3)
    scale = np.clip(1.0 + settings.brain_scale_sd * rng.standard_normal(), 0.88, 1.1)
    aniso = np.clip(1.0 + 0.02 * rng.standard_normal(3), 0.95, 1.05)
    subj_affine = np.diag([vox, vox, vox, 1.0])
    subj_affine[:3, 3] = template.affine[:3, 3]

    # Scanner (subject) space -> head space: undo pose and brain size. The subject affine is diagonal, so each
    # head coordinate is a sum of one term per grid axis, built from the 1-D axis coordinates by broadcasting
    # (no (X, Y, Z, 3) meshgrid, no full-size matrix products). Kept relative to the ventricle centre.
    to_head = rot / (scale * aniso)  # row i: how world axis i moves the three head coordinates
    axes = [vox * np.arange(n) + subj_affine[i, 3] - shift[i] for i, n in enumerate(shape)]
    rel = [_outer_sum(axes[0] * to_head[0, j] - centre[j], axes[1] * to_head[1, j], axes[2] * to_head[2, j])
           for j in range(3)]
    # Ventricle size: radial stretch about the ventricles, fading out with distance.
    k = rng.uniform(*settings.ventricle_scale_range)
    falloff = np.zeros(shape, np.float32)
    for r, sigma in zip(rel, (22.0, 30.0, 18.0), strict=True):
        falloff += np.square(r / sigma)
    stretch = 1.0 + (1.0 / k - 1.0) * np.exp(-0.5 * falloff)
    # Head coordinates, plus a smooth non-linear deformation (a few mm) defined on the subject grid, mapped to
    # grid_sample's [-1, 1] template coordinates and written straight into its grid, in (x, y, z) = (W, H, D)
    # order for a (D, H, W) volume.
    tmpl_step = 2.0 / (np.diag(template.affine)[:3] * (np.array(template.t1.shape) - 1.0))
    tmpl_start = (centre - template.affine[:3, 3]) * tmpl_step - 1.0
    grid = np.empty((*shape, 3), np.float32)
    for j in range(3):
        coord = grid[..., 2 - j]
        np.multiply(rel[j], stretch, out=coord)
        coord += _smooth_field(rng, shape, 6, settings.deformation_mm)
        coord *= tmpl_step[j]
        coord += tmpl_start[j]
    del rel, falloff, stretch

    # Sample the template maps at head coordinates with one trilinear grid_sample call.
    with torch.no_grad():
        sampled = torch.nn.functional.grid_sample(
            _template_maps(), torch.from_numpy(grid)[None], mode="bilinear", padding_mode="border", align_corners=True
        )[0].numpy()
    del grid
    t1_tmpl, gm, wm, csf, dist = sampled

    # Tissue intensities with per-subject contrast jitter.
    # (Python floats, not float64 scalars: those would promote the float32 images to float64.)
    jitter = (1.0 + settings.tissue_contrast_sd * rng.standard_normal(6)).tolist()
    brain_frac = np.clip(gm + wm + csf, 0.0, 1.0)
    t1 = t1_tmpl * (1.0 + 0.5 * (jitter[0] - 1) * gm + 0.5 * (jitter[1] - 1) * wm)
    detail = t1_tmpl - ndimage.gaussian_filter(t1_tmpl, 1.5)
    t2 = (1.0 * jitter[2] * csf + 0.58 * jitter[3] * gm + 0.36 * jitter[4] * wm) - 0.6 * detail
    t2 = np.clip(t2, 0.0, None) * brain_frac

    # Scalp and skull around the brain: CSF rim (0-2 mm), skull (2-7 mm, dark), scalp (7-12 mm, fat bright on T1).
    thick = 1.0 + 0.15 * rng.standard_normal()
    outside = dist > 0.5
    rim = outside & (dist <= 2.0 * thick)
    skull = (dist > 2.0 * thick) & (dist <= 7.0 * thick)
    scalp = (dist > 7.0 * thick) & (dist <= 12.0 * thick)
    t1 = np.where(rim, 0.15, t1)
    t2 = np.where(rim, 0.95 * jitter[2], t2)
    t1 = np.where(skull, 0.05, t1)
    t2 = np.where(skull, 0.04, t2)
    t1 = np.where(scalp, 0.75 * jitter[5], t1)
    t2 = np.where(scalp, 0.45, t2)
    head_mask = dist <= 12.0 * thick
    t1 = np.where(head_mask, t1, 0.0)
    t2 = np.where(head_mask, t2, 0.0)

    out = {}
    for name, img in (("t1", t1), ("t2", t2)):
        bias = _smooth_field(rng, shape, 3, settings.bias_strength)
        img *= np.exp(bias, out=bias)
        noise = rng.standard_normal((2, *shape), dtype=np.float32)
        noise *= settings.noise_sd
        img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
        out[name] = np.where(dist <= 12.0 * thick + 3.0, img, 0.0)
    out["affine"] = subj_affine
    out["anatomy"] = "mni152"
    return out


def anatomy_of(index: int, seed: int, n_anatomies: int) -> int:
    """Which label map subject ``index`` is made from: the anatomies in a seeded order, cycled, so each one
    makes ``n_subjects / n_anatomies`` subjects (rounded up or down)."""
    order = np.random.default_rng([seed, ANATOMY_STREAM]).permutation(n_anatomies)
    return int(order[index % n_anatomies])


def subject_anatomies(seed: int, settings: SyntheticSettings, anatomies: Sequence[str | Path] | None = None,
                      ) -> list[str]:
    """Each subject's anatomy name, in subject order (``mni152`` for every template subject)."""
    if settings.anatomy != "labelmaps":
        return ["mni152"] * settings.n_subjects
    files = list(anatomies) if anatomies is not None else anatomy_files()
    return [anatomy_name(files[anatomy_of(i, seed, len(files))]) for i in range(settings.n_subjects)]


@functools.cache
def _template_brain_centre() -> np.ndarray:
    """World position of the template brain's centroid: where each label-map brain's centre is placed."""
    template = load_template()
    return (np.argwhere(template.brain).mean(axis=0) @ template.affine[:3, :3].T + template.affine[:3, 3])


def _labelmap_subject(index: int, seed: int, settings: SyntheticSettings,
                      anatomies: Sequence[str | Path] | None) -> dict:
    """One subject from a real head's label map (``synthetic.anatomy: labelmaps``).

    The subject grid is the template's field of view at ``voxel_mm`` (the MNI cohort's). Every subject voxel
    is taken back through the head pose (rotation about the brain centre, translation), the size change
    (global scale and a small anisotropy) and a smooth deformation of a few mm into the anatomy, whose brain
    centre sits at the template's brain centre, and gets the label there (nearest neighbour). Labels become
    intensities through :data:`~spatial_msma.anatomies.TISSUES` with each tissue's T1w and T2w mean times
    ``1 + tissue_contrast_sd * z`` (z standard normal, clipped at +-2.5, drawn per tissue and modality);
    then a Gaussian partial-volume blur (:data:`PARTIAL_VOLUME_SD_MM`), a smooth multiplicative bias field and
    Rician noise, as for the template subjects. Noise is kept within 3 mm of the head; outside it is 0.
    """
    rng = np.random.default_rng([seed, index])
    files = list(anatomies) if anatomies is not None else anatomy_files()
    anatomy = load_anatomy(str(files[anatomy_of(index, seed, len(files))]))
    template = load_template()
    centre = _template_brain_centre()
    vox = settings.voxel_mm
    shape = tuple(int(round(s / vox)) for s in template.t1.shape)
    rot = _rotation(rng, settings.rotation_deg)
    shift = rng.uniform(-settings.translation_mm, settings.translation_mm, 3)
    scale = np.clip(1.0 + settings.brain_scale_sd * rng.standard_normal(), 0.88, 1.1)
    aniso = np.clip(1.0 + 0.02 * rng.standard_normal(3), 0.95, 1.05)
    subj_affine = np.diag([vox, vox, vox, 1.0])
    subj_affine[:3, 3] = template.affine[:3, 3]

    # Subject voxel -> head coordinates relative to the brain centre (pose and size undone), built per axis from
    # 1-D axis coordinates by broadcasting; plus the deformation; then the anatomy's voxel index (its affine is
    # diagonal, RAS+), rounded: nearest neighbour. Out of the label map's box: background.
    to_head = rot / (scale * aniso)  # row i: how world axis i moves the three head coordinates
    axes = [vox * np.arange(n) + subj_affine[i, 3] - shift[i] - centre[i] for i, n in enumerate(shape)]
    dims = anatomy.labels.shape
    flat = np.zeros(shape, np.int64)
    inside = np.ones(shape, bool)
    for j in range(3):
        coord = _outer_sum(axes[0] * to_head[0, j], axes[1] * to_head[1, j], axes[2] * to_head[2, j])
        coord += _smooth_field(rng, shape, 6, settings.deformation_mm)
        coord += float(anatomy.centre[j] - anatomy.origin[j])
        coord /= float(anatomy.spacing[j])
        index_j = np.rint(coord, out=coord).astype(np.int64)
        del coord
        inside &= (index_j >= 0) & (index_j < dims[j])
        flat *= dims[j]
        flat += index_j
        del index_j
    flat[~inside] = 0
    labels = anatomy.labels.ravel()[flat]
    labels[~inside] = 0
    del flat, inside

    # Tissue intensities with per-subject contrast jitter: one (T1w, T2w) lookup row per label value.
    _, means = intensity_tables()
    jitter = 1.0 + settings.tissue_contrast_sd * np.clip(rng.standard_normal(means.shape), -2.5, 2.5)
    lookup = np.vstack([np.zeros((1, 2)), means * jitter]).astype(np.float32)[tissue_index()]
    near_head = ndimage.uniform_filter((labels > 0).astype(np.float32), size=2 * int(round(3.0 / vox)) + 1) > 1e-4
    out = {}
    for c, name in enumerate(("t1", "t2")):
        img = ndimage.gaussian_filter(lookup[:, c][labels], PARTIAL_VOLUME_SD_MM / vox, truncate=3.0)
        bias = _smooth_field(rng, shape, 3, settings.bias_strength)
        img *= np.exp(bias, out=bias)
        noise = rng.standard_normal((2, *shape), dtype=np.float32)
        noise *= settings.noise_sd
        img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
        out[name] = np.where(near_head, img, np.float32(0.0))
    out["affine"] = subj_affine
    out["labels"] = labels
    out["anatomy"] = anatomy.name
    return out


# ------------------------------------------------------------------------------------------------ writing


def _save_scan(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save like a scanner export: int16 counts (0..1000 for the template's white matter) in a gzipped NIfTI."""
    counts = np.clip(np.round(data * 1000.0), 0, 32767).astype(np.int16)
    img = nib.Nifti1Image(counts, affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _break_scan(kind: str, t1_path: Path, t2_path: Path, affine: np.ndarray) -> None:
    """Damage one subject's files the way real cohorts are damaged."""
    if kind == "missing_t2w":
        t2_path.unlink()
    elif kind == "truncated_t1w":
        raw = t1_path.read_bytes()
        t1_path.write_bytes(raw[: len(raw) // 3])
    elif kind == "nan_t2w":
        data = np.asanyarray(nib.load(str(t2_path)).dataobj).astype(np.float32)
        data[data.shape[0] // 2, :, :] = np.nan
        img = nib.Nifti1Image(data, affine)
        img.set_data_dtype(np.float32)
        nib.save(img, str(t2_path))
    elif kind == "4d_t1w":
        data = np.asanyarray(nib.load(str(t1_path)).dataobj)
        img = nib.Nifti1Image(np.stack([data, data], axis=-1), affine)
        img.set_data_dtype(np.int16)
        nib.save(img, str(t1_path))


def scan_paths(bids_dir: Path, guid: str) -> tuple[Path, Path]:
    label = bids_label(guid)
    anat = bids_dir / f"sub-{label}" / f"ses-{SESSION}" / "anat"
    stem = f"sub-{label}_ses-{SESSION}_run-01"
    return anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_T2w.nii.gz"


def labels_path(bids_dir: Path, guid: str) -> Path:
    """A label-map subject's labels in its scans' space: a BIDS derivative (``_dseg``), outside ``sub-*/`` so
    the scan finder never sees it."""
    label = bids_label(guid)
    return (Path(bids_dir) / LABELS_DERIVATIVE / f"sub-{label}" / f"ses-{SESSION}" / "anat"
            / f"sub-{label}_ses-{SESSION}_run-01_dseg.nii.gz")


def _save_labels(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.asarray(labels, np.int16), affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def cbcl_table(seed: int, settings: SyntheticSettings, guids: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """A plausible ABCD ``mh_p_cbcl.csv``: baseline and follow-up rows, a known set of subjects above 66.

    Returns the table and the GUIDs placed above the cut-off at baseline. Healthy t-scores are drawn from a
    floor-heavy distribution (syndromes floor at 50, as the CBCL's are) and capped at 66; each chosen subject
    gets one random score pushed to 67-85. One healthy subject loses one score (missing value).
    """
    rng = np.random.default_rng([seed, 10_000])
    n = len(guids)
    n_above = int(round(settings.fraction_above_cutoff * n))
    above = sorted(rng.choice(n, size=n_above, replace=False).tolist())
    rows = []
    for event in (BASELINE_EVENT, FOLLOWUP_EVENT):
        for i, guid in enumerate(guids):
            row = {"src_subject_id": guid, "eventname": event, "interview_age": int(rng.integers(108, 131))}
            for col in CBCL_SYNDROMES:
                row[col] = float(min(66, max(50, round(50 + abs(rng.normal(0, 5))))))
            for col in CBCL_SUMMARIES:
                row[col] = float(min(66, max(24, round(rng.normal(46, 9)))))
            if event == BASELINE_EVENT and i in above:
                row[CBCL_SCORES[int(rng.integers(len(CBCL_SCORES)))]] = float(rng.integers(67, 86))
            if event == FOLLOWUP_EVENT:
                # Follow-up scores may exceed the cut-off; they must not affect a baseline filter.
                row[CBCL_SYNDROMES[0]] = float(rng.integers(50, 80))
            rows.append(row)
    table = pd.DataFrame(rows)
    healthy = [i for i in range(n) if i not in above]
    missing = healthy[int(rng.integers(len(healthy)))]
    baseline_row = (table.src_subject_id == guids[missing]) & (table.eventname == BASELINE_EVENT)
    table.loc[baseline_row, CBCL_SUMMARIES[2]] = np.nan
    return table, [guids[i] for i in above]


def write_cohort(out_dir: str | Path, seed: int, settings: SyntheticSettings, threads: int = 1,
                 logger: logging.Logger | None = None, anatomy_dir: str | Path | None = None) -> None:
    """Write the BIDS folder (``sub-*/ses-*/anat``), ``phenotype/mh_p_cbcl.csv`` and a ground-truth key.

    ``truth.json`` records which subjects were placed above the cut-off and which were broken (and how), so
    tests can check the cohort stage against what was planted rather than against itself. ``participants.tsv``
    names each subject's anatomy (``mni152`` for all template subjects, else the label map's name); label-map
    subjects also get their label map under ``derivatives/synthetic-labels/`` (from ``anatomy_dir``, default
    the shipped ``resources/anatomies``).
    """
    logger = logger or logging.getLogger(__name__)
    out = Path(out_dir)
    anatomies = anatomy_files(anatomy_dir) if settings.anatomy == "labelmaps" else None
    guids = subject_ids(settings.n_subjects)
    table, above = cbcl_table(seed, settings, guids)
    # Broken subjects: drawn among those that would otherwise be included, one per requested kind.
    rng = np.random.default_rng([seed, 20_000])
    complete = table[table.eventname == BASELINE_EVENT].dropna()
    candidates = [g for g in complete.src_subject_id if g not in above]
    if len(settings.broken) > len(candidates):
        raise ValueError(f"synthetic.broken: {len(settings.broken)} broken subjects need as many healthy subjects")
    broken = dict(zip(rng.choice(candidates, size=len(settings.broken), replace=False).tolist(), settings.broken,
                      strict=True))

    def build(index: int) -> None:
        guid = guids[index]
        subj = make_subject(index, seed, settings, anatomies)
        t1_path, t2_path = scan_paths(out, guid)
        _save_scan(subj["t1"], subj["affine"], t1_path)
        _save_scan(subj["t2"], subj["affine"], t2_path)
        if "labels" in subj:
            _save_labels(subj["labels"], subj["affine"], labels_path(out, guid))
        if guid in broken:
            _break_scan(broken[guid], t1_path, t2_path, subj["affine"])
        logger.info("synthetic subject %d/%d written (%s)", index + 1, len(guids), bids_label(guid))

    # Torch and numpy release the GIL in the heavy calls, so threads give a real speed-up here.
    torch.set_num_threads(1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(build, range(len(guids))))

    write_table(table, out / "phenotype" / "mh_p_cbcl.csv")
    write_json({"Name": "spatial-msma synthetic cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
                "GeneratedBy": [{"Name": "spatial-msma", "Description": f"synthetic cohort, seed {seed}"}]},
               out / "dataset_description.json")
    if anatomies is not None:
        write_json({"Name": "spatial-msma synthetic cohort: label maps in subject space", "BIDSVersion": "1.9.0",
                    "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "spatial-msma", "Description": "each subject's anatomy label map "
                                     "(FreeSurfer/SynthSeg label numbers) on its scans' grid"}]},
                   out / LABELS_DERIVATIVE / "dataset_description.json")
    participants = pd.DataFrame({"participant_id": [f"sub-{bids_label(g)}" for g in guids],
                                 "anatomy": subject_anatomies(seed, settings, anatomies)})
    write_table(participants, out / "participants.tsv")
    write_json({"seed": seed, "above_cutoff": [f"sub-{bids_label(g)}" for g in above],
                "broken": {f"sub-{bids_label(g)}": kind for g, kind in sorted(broken.items())}},
               out / "truth.json")
