"""Figures: a Figure-2 style montage of heatmaps per method, and FROC-style detection curves.

Heatmaps of different methods live on unrelated scales, so each panel is shown clipped to the
[90th, 99.9th] percentile of that subject's in-brain values (the paper clips at the 90th percentile:
the colour range is the top 10 % of anomaly scores) with one shared colour bar of that normalised scale.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import component_counts
from spatial_msma.evaluation.pipeline import (
    BRAINMASK_SUFFIX,
    HEATMAP_SUFFIX,
    IMAGE_SUFFIX,
    MASK_SUFFIX,
    by_subject,
    load_case,
    load_thresholds,
    lookup,
)
from spatial_msma.evaluation.postprocess import prepare_reference, rim_for, segment
from spatial_msma.io import InputError, read_channels, read_mask, save_figure
from spatial_msma.methods import display_name, method_order
from spatial_msma.progress import Progress
from spatial_msma.protocols import protocol_name

PathLike = str | os.PathLike
CLIP_PERCENTILES = (90.0, 99.9)
LESION_COLOUR = "magenta"


def heatmaps_by_method(paths: Sequence[PathLike]) -> dict[str, dict[str, Path]]:
    """Group ``results/heatmaps/{method}/{set}/{subject}.nii.gz`` paths by method, then subject."""
    grouped: dict[str, list[PathLike]] = {}
    for p in paths:
        grouped.setdefault(Path(p).parent.parent.name, []).append(p)
    return {m: by_subject(grouped[m], HEATMAP_SUFFIX) for m in method_order(grouped)}


def lesion_slice(lesion: np.ndarray) -> int:
    """Axial slice index with the largest lesion area (the middle slice if there is no lesion)."""
    area = lesion.sum(axis=(0, 1))
    return int(area.argmax()) if area.any() else lesion.shape[2] // 2


def clip_scale(heatmap: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Map the heatmap to [0, 1] between the subject's in-brain 90th and 99.9th percentiles."""
    lo, hi = np.percentile(heatmap[brain], CLIP_PERCENTILES)
    return np.clip((heatmap - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * brain


def plot_montage(
    heatmaps: Mapping[str, Mapping[str, Path]],
    images: Mapping[str, Path],
    lesion_masks: Mapping[str, Path],
    brain_masks: Mapping[str, Path],
    subjects: Sequence[str],
    out_path: PathLike,
) -> None:
    """Columns = subjects (axial slice through their largest lesion area), rows = T1, T2, one per method."""
    methods = list(heatmaps)
    n_rows, n_cols = 2 + len(methods), len(subjects)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols + 1.2, 2.4 * n_rows), squeeze=False)
    shown = None
    for col, subject in enumerate(subjects):
        image, _ = read_channels(images[subject])
        lesion, _ = read_mask(lesion_masks[subject])
        z = lesion_slice(lesion)
        brain_slice = read_mask(brain_masks[subject])[0][:, :, z].T.astype(float)
        panels = [("T1", image[0], "gray", (-1.0, 1.0)), ("T2", image[1], "gray", (-1.0, 1.0))]
        for method in methods:
            case = load_case(subject, heatmaps[method][subject], brain_masks[subject])
            panels.append((display_name(method), clip_scale(case.heatmap, case.brain), "inferno", (0.0, 1.0)))
        for row, (label, volume, cmap, (vmin, vmax)) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(volume[:, :, z].T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                           interpolation="nearest")
            if cmap == "inferno":
                shown = im
                ax.contour(brain_slice, levels=[0.5], colors="0.6", linewidths=0.5)
            if lesion[:, :, z].any():
                ax.contour(lesion[:, :, z].T.astype(float), levels=[0.5], colors=LESION_COLOUR, linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=11)
            if row == 0:
                ax.set_title(f"{subject}\naxial z={z}", fontsize=8)
    fig.suptitle("Heatmaps on lesioned test subjects (lesion outlines in magenta)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    if shown is not None:
        cax = fig.add_axes((0.92, 0.25, 0.015, 0.35))
        bar = fig.colorbar(shown, cax=cax)
        bar.set_ticks([0, 1])
        bar.set_ticklabels([f"p{CLIP_PERCENTILES[0]:g}", f"p{CLIP_PERCENTILES[1]:g}"])
        bar.set_label("heatmap, per subject in-brain percentile", fontsize=9)
    save_figure(fig, out_path)


def froc_thresholds(pooled: np.ndarray, n: int) -> np.ndarray:
    """Thresholds that flag from 50 % down to 0.01 % of the pooled in-brain voxels (log-spaced)."""
    return np.quantile(pooled, 1.0 - np.geomspace(0.5, 1e-4, n))


def froc_curve(
    heatmaps: Mapping[str, Path],
    lesion_masks: Mapping[str, Path],
    brain_masks: Mapping[str, Path],
    cfg: EvaluationConfig,
    extra_thresholds: Sequence[float] = (),
) -> dict[str, np.ndarray]:
    """Lesion-wise TPR and mean false-positive components per image over a global threshold sweep.

    One threshold for all images (unlike the oracle), post-processed exactly as in the tables; the last
    ``len(extra_thresholds)`` entries of each array are those extra operating points.
    """
    cases = [load_case(s, heatmaps[s], lookup(brain_masks, s, "brain mask"), lookup(lesion_masks, s, "lesion mask"))
             for s in sorted(heatmaps)]
    pooled = np.concatenate([c.heatmap[c.brain] for c in cases])
    thresholds = np.r_[froc_thresholds(pooled, cfg.froc_n_thresholds), np.asarray(extra_thresholds, float)]
    detected = np.zeros(len(thresholds))
    lesions = np.zeros(len(thresholds))
    fp = np.zeros(len(thresholds))
    for case in cases:
        rim = rim_for(case.brain, cfg)
        reference = prepare_reference(case.lesion, cfg, rim)
        volume = float(abs(np.linalg.det(case.affine[:3, :3])))
        for i, t in enumerate(thresholds):
            counts = component_counts(reference, segment(case.heatmap, case.brain, t, cfg, rim), volume,
                                      cfg.component_connectivity_metrics)
            detected[i] += counts.gt_detected
            lesions[i] += counts.gt_detected + counts.gt_missed
            fp[i] += counts.pred_fp
    tpr = np.divide(detected, lesions, out=np.full_like(detected, np.nan), where=lesions > 0)
    return {"threshold": thresholds, "tpr": tpr, "fp_per_image": fp / len(cases)}


def split_froc(thresholds: np.ndarray, fp: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, ...]:
    """Split the sweep (ordered from the highest threshold) at the threshold with the most false positives.

    Below that threshold flagged voxels merge into a few large components, so the false-positive count
    FALLS while the threshold drops and the curve folds back; that part is drawn dashed.
    Returns (fp, tpr) of the detection part and (fp, tpr) of the merging part, sharing one point.
    """
    order = np.argsort(-thresholds, kind="stable")
    fp, tpr = fp[order], tpr[order]
    peak = int(np.argmax(fp))
    return fp[: peak + 1], tpr[: peak + 1], fp[peak:], tpr[peak:]


def plot_froc(curves: Mapping[str, dict[str, np.ndarray]], n_sweep: int,
              operating: Mapping[str, list[str]], out_path: PathLike) -> None:
    """One FROC-style curve per method; deployable operating points marked and labelled."""
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    names = sorted({n for names in operating.values() for n in names})
    marker_of = {n: "osD^v"[k % 5] for k, n in enumerate(names)}
    for method, curve in curves.items():
        fp, tpr, fp_merge, tpr_merge = split_froc(
            curve["threshold"][:n_sweep], curve["fp_per_image"][:n_sweep], curve["tpr"][:n_sweep])
        (line,) = ax.plot(fp, tpr, "-", lw=1.6, label=display_name(method))
        ax.plot(fp_merge, tpr_merge, "--", lw=1.0, alpha=0.5, color=line.get_color())
        for k, name in enumerate(operating.get(method, [])):
            x, y = curve["fp_per_image"][n_sweep + k], curve["tpr"][n_sweep + k]
            ax.plot([x], [y], marker_of[name], color=line.get_color(), ms=7, mec="black")
    for name in names:
        ax.plot([], [], marker_of[name], color="gray", mec="black", label=f"{name} threshold")
    ax.plot([], [], "--", color="gray", alpha=0.6, label="lower thresholds: components merge")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=-0.05)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean false-positive components per lesioned image")
    ax.set_ylabel("lesion-wise TPR (lesions overlapped / all lesions)")
    ax.set_title("FROC: one global threshold per point, post-processed as in Table 1")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, out_path)


def make_figures(
    heatmaps: Sequence[PathLike],
    images: Sequence[PathLike],
    lesion_masks: Sequence[PathLike],
    brain_masks: Sequence[PathLike],
    threshold_jsons: Sequence[PathLike],
    montage_path: PathLike,
    froc_path: PathLike,
    cfg: EvaluationConfig,
    seed: int,
    logger: logging.Logger | None = None,
) -> list[str]:
    """Draw the montage (``cfg.figure_subjects`` seeded random subjects) and the FROC curves; returns the subjects."""
    logger = logger or logging.getLogger("spatial_msma")
    by_method = heatmaps_by_method(heatmaps)
    if not by_method:
        raise InputError("figures: no heatmaps given")
    images_by = by_subject(images, IMAGE_SUFFIX)
    masks_by = by_subject(lesion_masks, MASK_SUFFIX)
    brains_by = by_subject(brain_masks, BRAINMASK_SUFFIX)
    common = set(images_by) & set(masks_by) & set(brains_by)
    for subjects in by_method.values():
        common &= set(subjects)
    if not common:
        raise InputError("figures: no subject has an image, a lesion mask, a brain mask and every method's heatmap")
    rng = np.random.default_rng(seed)
    chosen = [str(s) for s in rng.choice(sorted(common), size=min(cfg.figure_subjects, len(common)), replace=False)]
    logger.info("montage subjects: %s", chosen)
    plot_montage(by_method, images_by, masks_by, brains_by, chosen, montage_path)
    operating: dict[str, list[str]] = {}
    extra: dict[str, list[float]] = {}
    for path in threshold_jsons:
        data = load_thresholds(path)
        names = [protocol_name(f) for f in cfg.fpr_levels if protocol_name(f) in data["protocols"]]
        operating[data["method"]] = names
        extra[data["method"]] = [data["protocols"][n]["threshold"] for n in names]
    curves = {}
    progress = Progress(len(by_method), "FROC curves", logger, every_s=0.0)
    for i, (method, subjects) in enumerate(by_method.items(), 1):
        curves[method] = froc_curve(subjects, masks_by, brains_by, cfg, extra.get(method, []))
        progress.update(i)
    plot_froc(curves, cfg.froc_n_thresholds, operating, froc_path)
    return chosen
