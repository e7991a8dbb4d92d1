"""Registration check of the label-map cohort: each subject's own label map, carried to the template by the
subject's registration, against the template's tissue classes.

The template side (:func:`template_classes`, on the template's 1 mm grid) comes from the MNI tissue
probability maps of :mod:`spatial_msma.template`: each voxel takes the most probable of background, grey
matter, white matter and CSF (argmax; background = 1 - GM - WM - CSF, at least 0). The template has no
ventricle map, so its ventricles are the lateral ventricles: CSF-class voxels after a binary opening (6-
neighbourhood, 2 iterations: removes the thin sulcal and fissure CSF, keeps the ventricles' bodies) inside
the box :data:`VENTRICLE_BOX` (MNI mm around the lateral ventricles' bodies, frontal horns and atria; the
temporal horns, 3rd and 4th ventricle are too thin or too near the cisterns to separate from outer CSF).

The subject side (:func:`subject_classes`) groups the labels as :data:`spatial_msma.anatomies.DICE_TISSUES`:
white matter, grey matter (cortex, cerebellar cortex and the deep grey nuclei) and the lateral ventricles
(4/43), the ventricles in the same box. Dice per tissue: ``2 |S & T| / (|S| + |T|)``.

Dice after an affine registration to a template is not near 1 for grey matter (folding differs between brains
and the template's grey-matter map is broad): it is a check that a registration did not fail, by comparison
across subjects and against :data:`DEFAULT_MIN_DICE`, not a measure of alignment quality in itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from .anatomies import DICE_TISSUES, MAX_LABEL
from .template import load_template

#: Class codes of both sides: 0 = anything else.
CLASSES = {"wm": 1, "gm": 2, "ventricles": 3}
#: (low, high) MNI mm per axis (x, y, z) of the region the ventricle Dice is taken in, on both sides.
VENTRICLE_BOX = ((-30.0, 30.0), (-45.0, 35.0), (0.0, 35.0))
#: A subject below any of these is flagged (config registration_qc.min_dice overrides them).
DEFAULT_MIN_DICE = {"wm": 0.45, "gm": 0.4, "ventricles": 0.15}


def _box(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Voxels of an axis-aligned grid inside :data:`VENTRICLE_BOX`."""
    inside = np.ones(tuple(shape), bool)
    for axis, (lo, hi) in enumerate(VENTRICLE_BOX):
        world = np.arange(shape[axis]) * affine[axis, axis] + affine[axis, 3]
        keep = (world >= lo) & (world <= hi)
        inside &= keep.reshape([-1 if a == axis else 1 for a in range(3)])
    return inside


@functools.cache
def template_classes() -> np.ndarray:
    """The template's tissue classes (uint8, :data:`CLASSES` codes) on its 1 mm grid (module docstring)."""
    template = load_template()
    background = np.clip(1.0 - template.gm - template.wm - template.csf, 0.0, None)
    winner = np.argmax(np.stack([background, template.gm, template.wm, template.csf]), axis=0)
    classes = np.zeros(winner.shape, np.uint8)
    classes[winner == 2] = CLASSES["wm"]
    classes[winner == 1] = CLASSES["gm"]
    csf = ndimage.binary_opening(winner == 3, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    classes[csf & _box(winner.shape, template.affine)] = CLASSES["ventricles"]
    return classes


def write_template_classes(path: str | Path) -> None:
    """The template classes as a uint8 NIfTI (rule template_tissues), read by every preprocessing job."""
    from .io import atomic_path

    img = nib.Nifti1Image(template_classes(), load_template().affine)
    img.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


@functools.cache
def _label_classes() -> np.ndarray:
    lookup = np.zeros(MAX_LABEL, np.uint8)
    for name, labels in DICE_TISSUES.items():
        lookup[list(labels)] = CLASSES[name]
    return lookup


def subject_classes(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A label map on the template grid (``affine``: axis-aligned) as :data:`CLASSES` codes, ventricles only in
    :data:`VENTRICLE_BOX`."""
    labels = np.asarray(labels)
    classes = _label_classes()[np.clip(np.rint(labels).astype(np.int64), 0, MAX_LABEL - 1)]
    classes[(classes == CLASSES["ventricles"]) & ~_box(labels.shape, affine)] = 0
    return classes


def dice_scores(subject: np.ndarray, template: np.ndarray) -> dict[str, float]:
    """Dice of each class of :data:`CLASSES` between two class images of one grid (NaN where both are empty)."""
    out = {}
    for name, code in CLASSES.items():
        s, t = subject == code, template == code
        total = int(s.sum()) + int(t.sum())
        out[name] = 2.0 * int((s & t).sum()) / total if total else float("nan")
    return out


def registration_dice(labels_path: str | Path, to_template: list[str], classes_path: str | Path) -> dict[str, float]:
    """Carry a subject's label map (its T1w's space) to the template grid of ``classes_path`` through the
    transforms ``to_template`` (nearest neighbour) and return its Dice per tissue."""
    import ants

    reference = ants.image_read(str(classes_path))
    labels = ants.image_read(str(labels_path)).astype("float32")
    moved = ants.apply_transforms(reference, labels, to_template, interpolator="nearestNeighbor")
    affine = ants.to_nibabel_nifti(reference).affine
    return dice_scores(subject_classes(moved.numpy(), affine), reference.numpy().astype(np.uint8))


def summarise(tables: Sequence[str | Path], min_dice: Mapping[str, float],
              logger: logging.Logger | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-subject tables (one row each) as one, with ``flagged`` (any tissue below its ``min_dice``) and
    ``below`` (which); and the summary: per tissue the median, the worst subject and its Dice, and how many
    are flagged. Flagged subjects are logged as warnings, not dropped."""
    logger = logger or logging.getLogger(__name__)
    rows = pd.concat([pd.read_csv(path, sep="\t") for path in tables], ignore_index=True)
    rows = rows.sort_values("participant_id", ignore_index=True)
    thresholds = {**DEFAULT_MIN_DICE, **min_dice}
    below = [[name for name in CLASSES if row[f"dice_{name}"] < thresholds[name]] for _, row in rows.iterrows()]
    rows["flagged"] = [bool(b) for b in below]
    rows["below"] = [",".join(b) for b in below]
    summary = []
    for name in CLASSES:
        column = rows[f"dice_{name}"]
        worst = int(column.idxmin())
        summary.append({"tissue": name, "n": int(column.notna().sum()), "median": float(column.median()),
                        "worst": float(column.min()), "worst_subject": rows.participant_id[worst],
                        "min_dice": thresholds[name], "flagged": int((column < thresholds[name]).sum())})
    for _, row in rows[rows.flagged].iterrows():
        values = ", ".join(f"{name} {row[f'dice_{name}']:.3f}" for name in CLASSES)
        logger.warning("registration check: %s below the threshold in %s (Dice %s); kept, look at its scans",
                       row.participant_id, row.below, values)
    logger.info("registration Dice (median / worst): %s", "; ".join(
        f"{s['tissue']} {s['median']:.3f} / {s['worst']:.3f} ({s['worst_subject']})" for s in summary))
    return rows, pd.DataFrame(summary)
