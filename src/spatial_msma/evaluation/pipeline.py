"""File-level evaluation steps, one per workflow script: fit deployable thresholds, score one method.

Images are matched by the file names of the data contract (``{id}.nii.gz`` heatmaps, ``{volume}_mask.nii.gz``
lesion masks, ``{subject}_brainmask.nii.gz`` brain masks; a lesioned volume ``{subject}_draw-{k}`` uses its
subject's brain mask), never by list order, so a reordered or partial input list is an error that names
the image instead of a silent mismatch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import (
    SIZE_BIN_NAMES,
    SurfaceDistances,
    best_dice,
    component_counts,
    dice,
    image_score,
    lesion_contrast,
    monai_distances,
    voxel_auroc_auprc,
    voxel_size,
)
from spatial_msma.evaluation.postprocess import (
    erode,
    label_components,
    prepare_reference,
    rim_for,
    segment,
)
from spatial_msma.evaluation.thresholds import fpr_thresholds, oracle_threshold
from spatial_msma.io import InputError, load_nifti, write_json, write_table
from spatial_msma.lesions.volumes import DRAW_SEPARATOR, IMAGE_SUFFIX, subject_of
from spatial_msma.lesions.volumes import LESION_MASK_SUFFIX as MASK_SUFFIX
from spatial_msma.progress import Progress
from spatial_msma.protocols import protocol_name

HEATMAP_SUFFIX = ".nii.gz"
BRAINMASK_SUFFIX = "_brainmask.nii.gz"
__all__ = ["IMAGE_SUFFIX", "MASK_SUFFIX"]  # the figures read lesioned images and masks by the same contract

PathLike = str | os.PathLike


def subject_from_path(path: PathLike, suffix: str) -> str:
    """Image id of a contract file name, e.g. ``results/lesions/sub-01_draw-1_mask.nii.gz`` -> ``sub-01_draw-1``."""
    name = Path(path).name
    if not name.endswith(suffix) or len(name) == len(suffix):
        raise InputError(f"{path}: expected a file named <subject>{suffix}")
    return name[: -len(suffix)]


def by_subject(paths: Sequence[PathLike], suffix: str) -> dict[str, Path]:
    """Map image id -> path; an id listed twice with two paths is an error (the same path twice is one file:
    the draws of a subject list its brain mask once each)."""
    out: dict[str, Path] = {}
    for p in dict.fromkeys(str(p) for p in paths):
        subject = subject_from_path(p, suffix)
        if subject in out:
            raise InputError(f"subject {subject} is listed twice: {out[subject]} and {p}")
        out[subject] = Path(p)
    return out


def lookup(table: Mapping[str, Path], subject: str, what: str) -> Path:
    """``table[subject]``, or an InputError saying which file kind the subject lacks."""
    if subject not in table:
        raise InputError(f"{subject}: no {what} among the inputs")
    return table[subject]


@dataclass(frozen=True)
class Case:
    """One image's heatmap and lesion mask restricted to its evaluated region, and the shared affine.

    ``image_id`` is the subject, or ``{subject}_draw-{k}`` for a lesioned volume; ``brain`` is the region
    every metric and threshold uses (the brain mask eroded by ``erosion_radius``); ``heatmap`` is 0 outside
    it; ``lesion`` is the full simulated mask (the scored reference is made from it by
    :func:`~spatial_msma.evaluation.postprocess.prepare_reference`).
    """

    image_id: str
    heatmap: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray | None
    affine: np.ndarray

    @property
    def subject(self) -> str:
        return subject_of(self.image_id)

    @property
    def draw(self) -> int:
        """The lesion draw (1-based) of a lesioned volume, 0 for a lesion-free image."""
        return int(self.image_id.rsplit(DRAW_SEPARATOR, 1)[1]) if DRAW_SEPARATOR in self.image_id else 0


def load_case(
    image_id: str, heatmap_path: PathLike, brain_path: PathLike, lesion_path: PathLike | None = None,
    erosion_radius: int = 0,
) -> Case:
    """Read and cross-check a heatmap, its brain mask and (optionally) its lesion mask; the case's region is
    the brain mask eroded by ``erosion_radius`` voxels."""
    heat_img = load_nifti(heatmap_path, ndim=3, what="heatmap")
    brain_img = load_nifti(brain_path, ndim=3, what="brain mask")
    imgs = [(heatmap_path, heat_img), (brain_path, brain_img)]
    if lesion_path is not None:
        imgs.append((lesion_path, load_nifti(lesion_path, ndim=3, what="lesion mask")))
    for path, img in imgs[1:]:
        if img.shape != heat_img.shape:
            raise InputError(f"{path}: shape {img.shape} differs from heatmap {heatmap_path} {heat_img.shape}")
        if not np.allclose(img.affine, heat_img.affine, atol=1e-3):
            raise InputError(f"{path}: affine differs from heatmap {heatmap_path}; not on the same grid")
    brain = brain_img.get_fdata(dtype=np.float32) > 0.5
    if erosion_radius:
        brain = erode(brain, erosion_radius)
    if not brain.any():
        raise InputError(f"brain mask {brain_path}: empty" + (f" after erosion by {erosion_radius} voxels (config "
                                                              "evaluation.erosion_radius)" if erosion_radius else ""))
    heatmap = np.where(brain, heat_img.get_fdata(dtype=np.float32), 0.0).astype(np.float32)
    lesion = imgs[2][1].get_fdata(dtype=np.float32) > 0.5 if lesion_path is not None else None
    return Case(image_id, heatmap, brain, lesion, heat_img.affine)


def load_region_case(image_id: str, heatmap_path: PathLike, brain_path: PathLike, cfg: EvaluationConfig,
                     lesion_path: PathLike | None = None) -> Case:
    """:func:`load_case` on the evaluated region of ``cfg``: the brain eroded by ``erosion_radius`` (the authors'
    evaluator). Every metric and every threshold fit uses it: the skull-stripping border, where every detector
    lights up, is neither a place to fit a false-positive rate on nor one to apply it to."""
    return load_case(image_id, heatmap_path, brain_path, lesion_path, cfg.erosion_radius)


def evaluate_subject(case: Case, cfg: EvaluationConfig, threshold: float | None = None) -> dict:
    """All metrics for one lesioned volume; ``threshold=None`` runs the per-volume oracle search.

    ``case`` comes from :func:`load_region_case`: everything is measured inside the evaluated region. An
    empty prediction has no surface: its distances are NaN and ``missed`` is 1, so a table can report it
    instead of dropping the volume or scoring it 0. Lesions the reference drops as too small to find
    (``min_lesion_voxels``) still appear in the size-bin counts, so the table shows what was left out.
    """
    if case.lesion is None:
        raise ValueError(f"image {case.image_id}: evaluate_subject needs a lesion mask")
    rim = rim_for(case.brain, cfg)
    reference = prepare_reference(case.lesion, case.brain, cfg, rim)
    if threshold is None:
        threshold, _, _ = oracle_threshold(case.heatmap, case.brain, reference, cfg, rim)
    prediction = segment(case.heatmap, case.brain, threshold, cfg, rim)
    spacing = voxel_size(case.affine)
    voxel_volume = float(abs(np.linalg.det(case.affine[:3, :3])))
    hd99, msd = monai_distances(reference, prediction)
    if np.allclose(spacing, spacing[0], rtol=1e-4):  # isotropic: mm distances are voxel distances scaled
        hd99_mm, msd_mm = hd99 * spacing[0], msd * spacing[0]
    else:
        hd99_mm, msd_mm = monai_distances(reference, prediction, spacing=spacing)
    counts = component_counts(reference, prediction, voxel_volume, cfg.component_connectivity_metrics)
    all_lesions = component_counts(case.lesion & case.brain, prediction, voxel_volume,
                                   cfg.component_connectivity_metrics)
    auroc, auprc = voxel_auroc_auprc(case.heatmap, reference, case.brain)
    row = {
        "subject": case.subject,
        "volume": case.image_id,
        "draw": case.draw,
        "threshold": float(threshold),
        "missed": int(not prediction.any()),
        "hd99": hd99,
        "msd": msd,
        "hd99_mm": hd99_mm,
        "msd_mm": msd_mm,
        "sym_msd": SurfaceDistances(reference).symmetric_msd(prediction),
        "tpr": counts.tpr,
        "ppv": counts.ppv,
        "n_gt_components": counts.gt_detected + counts.gt_missed,
        "gt_detected": counts.gt_detected,
        "gt_missed": counts.gt_missed,
        "n_pred_components": counts.pred_tp + counts.pred_fp,
        "pred_tp": counts.pred_tp,
        "pred_fp": counts.pred_fp,
        "dice": dice(reference, prediction),
        "best_dice": best_dice(case.heatmap, reference, case.brain),
        "auroc": auroc,
        "auprc": auprc,
        "contrast": lesion_contrast(case.heatmap, reference, case.brain),
        "image_score": image_score(case.heatmap, case.brain, cfg.image_score_percentile),
        "gt_voxels": int(reference.sum()),
        "n_small_lesions_left_out": all_lesions.gt_detected + all_lesions.gt_missed - counts.gt_detected
        - counts.gt_missed,
        "pred_voxels": int(prediction.sum()),
        "voxel_mm": float(spacing.mean()),
        "voxel_volume_mm3": voxel_volume,
    }
    if not np.isfinite(row["sym_msd"]):
        row["sym_msd"] = float("nan")
    for name, tp, fn in zip(SIZE_BIN_NAMES, all_lesions.bin_detected, all_lesions.bin_missed, strict=True):
        row[f"bin_{name}_tp"] = tp
        row[f"bin_{name}_fn"] = fn
    return row


def load_thresholds(path: PathLike, method: str | None = None) -> dict:
    """Read a thresholds JSON written by :func:`fit_method_thresholds`, checking it belongs to ``method``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"thresholds file {path}: unreadable ({err})") from err
    if not isinstance(data, dict) or "protocols" not in data or "method" not in data:
        raise InputError(f"thresholds file {path}: not a thresholds JSON (no 'method'/'protocols' keys)")
    if method is not None and data["method"] != method:
        raise InputError(f"thresholds file {path}: fitted for method {data['method']!r}, not {method!r}")
    return data


def deployable_threshold(thresholds: dict, protocol: str, path: PathLike = "thresholds") -> float:
    """The fixed threshold of a deployable protocol (``fpr05`` ...) from a thresholds JSON."""
    if protocol not in thresholds["protocols"]:
        raise InputError(
            f"{path}: no protocol {protocol!r}; it holds {sorted(thresholds['protocols'])}"
            " (refit the thresholds after changing evaluation.fpr_levels)"
        )
    return float(thresholds["protocols"][protocol]["threshold"])


def evaluate_method(
    heatmaps: Sequence[PathLike],
    lesion_masks: Sequence[PathLike],
    brain_masks: Sequence[PathLike],
    method: str,
    protocol: str,
    cfg: EvaluationConfig,
    out_csv: PathLike,
    thresholds_json: PathLike | None = None,
    logger: logging.Logger | None = None,
) -> pd.DataFrame:
    """Score one method under one protocol on every lesioned test volume; write the per-volume CSV.

    ``protocol`` is ``oracle`` (per-volume threshold search) or a deployable protocol from
    ``cfg.protocols`` whose fixed threshold is read from ``thresholds_json``.
    """
    logger = logger or logging.getLogger("spatial_msma")
    if protocol not in cfg.protocols:
        raise InputError(f"protocol {protocol!r}: expected one of {cfg.protocols}")
    fixed = None
    if protocol != "oracle":
        if thresholds_json is None:
            raise InputError(f"protocol {protocol}: needs the method's thresholds JSON")
        fixed = deployable_threshold(load_thresholds(thresholds_json, method), protocol, thresholds_json)
    heat_by = by_subject(heatmaps, HEATMAP_SUFFIX)
    masks_by = by_subject(lesion_masks, MASK_SUFFIX)
    brains_by = by_subject(brain_masks, BRAINMASK_SUFFIX)
    volumes = sorted(heat_by)
    if not volumes:
        raise InputError(f"method {method}: no heatmaps to evaluate")
    logger.info("evaluating %s / %s on %d volumes of %d subjects (threshold %s)", method, protocol, len(volumes),
                len({subject_of(v) for v in volumes}), "per-volume oracle" if fixed is None else f"{fixed:.6g}")
    progress = Progress(len(volumes), f"evaluate {method}/{protocol}", logger)
    rows = []
    for i, volume in enumerate(volumes, 1):
        case = load_region_case(volume, heat_by[volume], lookup(brains_by, subject_of(volume), "brain mask"), cfg,
                                lookup(masks_by, volume, "lesion mask"))
        rows.append({"method": method, "protocol": protocol, **evaluate_subject(case, cfg, fixed)})
        progress.update(i)
    frame = pd.DataFrame(rows)
    write_table(frame, out_csv)
    logger.info("%s / %s: %d volumes, %d missed, mean HD99 %.3f, MSD %.3f, TPR %.3f, PPV %.3f -> %s",
                method, protocol, len(frame), int(frame["missed"].sum()), frame["hd99"].mean(),
                frame["msd"].mean(), frame["tpr"].mean(), frame["ppv"].mean(), out_csv)
    return frame


def fit_method_thresholds(
    healthy: dict[str, tuple[Sequence[PathLike], Sequence[PathLike]]],
    method: str,
    cfg: EvaluationConfig,
    out_json: PathLike,
    logger: logging.Logger | None = None,
) -> dict:
    """Fit the deployable thresholds of one method on its healthy heatmaps and write them as JSON.

    ``healthy`` maps a set name (``val``, ``test``) to (heatmap paths, brain-mask paths), read one image at
    a time (what grows with the sets is the pooled region values, 4 bytes a voxel). Voxels of all
    sets are pooled inside the evaluated region (:func:`load_region_case`), the region the thresholds are
    applied in. The JSON records per threshold the FPR reached on those voxels and, on the lesion-free
    ``test`` images, the realised voxel FPR of the raw threshold and of the post-processed segmentation
    (what a reader of the lesioned results should expect on healthy tissue) and the false-positive
    components per image, plus every healthy image's image-level score (the negatives of the image AUROC).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cases_total = sum(len(h) for h, _ in healthy.values())
    if cases_total == 0:
        raise InputError(f"method {method}: no healthy heatmaps to fit thresholds on")
    progress = Progress(cases_total, f"healthy voxels {method}", logger)
    # one image in memory at a time: pass 1 keeps only the region's voxel values and the image scores; the
    # lesion-free test images are read again once the thresholds are known
    loaders: dict[str, list[Callable[[], Case]]] = {}
    for set_name, (heatmaps, brain_masks) in healthy.items():
        heat_by, brains_by = by_subject(heatmaps, HEATMAP_SUFFIX), by_subject(brain_masks, BRAINMASK_SUFFIX)
        loaders[set_name] = [functools.partial(load_region_case, subject, heat_by[subject],
                                               lookup(brains_by, subject, f"{set_name} brain mask"), cfg)
                             for subject in sorted(heat_by)]
    values, scores = [], {}
    for set_name, set_loaders in loaders.items():
        scores[set_name] = {}
        for load in set_loaders:
            case = load()
            values.append(case.heatmap[case.brain])
            scores[set_name][case.image_id] = image_score(case.heatmap, case.brain, cfg.image_score_percentile)
            progress.update(len(values))
    pooled = np.concatenate(values)
    del values
    fitted = fpr_thresholds(pooled, cfg.fpr_levels)
    protocols = {}
    for level, thr in fitted.items():
        protocols[protocol_name(level)] = {
            "fpr_target": level,
            "threshold": thr,
            "fpr_achieved": float((pooled > thr).mean()),
        }
    test_rates: dict[str, tuple[list[float], list[float], list[int]]] = {name: ([], [], []) for name in protocols}
    for load in loaders.get("test", []):
        case = load()
        rim = rim_for(case.brain, cfg)
        for name, entry in protocols.items():
            raw, segmented, fp = test_rates[name]
            pred = segment(case.heatmap, case.brain, entry["threshold"], cfg, rim)
            raw.append(float((case.heatmap[case.brain] > entry["threshold"]).mean()))
            segmented.append(float(pred[case.brain].mean()))
            fp.append(label_components(pred, cfg.component_connectivity_metrics)[1])
    for name, entry in protocols.items():
        raw, segmented, fp = test_rates[name]
        entry["fpr_lesion_free_test"] = float(np.mean(raw)) if raw else None
        entry["fpr_lesion_free_test_segmented"] = float(np.mean(segmented)) if segmented else None
        entry["fp_components_per_lesion_free_test_image"] = float(np.mean(fp)) if fp else None
    result = {
        "method": method,
        "protocols": protocols,
        "n_voxels": int(pooled.size),
        "n_images": {set_name: len(set_loaders) for set_name, set_loaders in loaders.items()},
        "image_scores": scores,
        "config": cfg.to_dict(),
    }
    write_json(result, out_json)
    for name, entry in protocols.items():
        logger.info("%s %s: threshold %.6g, healthy FPR %.4f (fit), %s on the lesion-free test images (raw "
                    "threshold; %s after post-processing)", method, name, entry["threshold"], entry["fpr_achieved"],
                    entry["fpr_lesion_free_test"], entry["fpr_lesion_free_test_segmented"])
    return result
