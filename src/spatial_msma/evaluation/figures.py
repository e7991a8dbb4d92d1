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
import pandas as pd

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import component_counts
from spatial_msma.evaluation.pipeline import (
    BRAINMASK_SUFFIX,
    HEATMAP_SUFFIX,
    IMAGE_SUFFIX,
    MASK_SUFFIX,
    by_subject,
    load_case,
    load_region_case,
    load_thresholds,
    lookup,
)
from spatial_msma.evaluation.postprocess import prepare_reference, rim_for, segment
from spatial_msma.evaluation.tables import HEADERS
from spatial_msma.io import InputError, read_channels, read_mask, save_figure
from spatial_msma.lesions.volumes import subject_of
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
        brain_slice = read_mask(brain_masks[subject_of(subject)])[0][:, :, z].T.astype(float)
        panels = [("T1", image[0], "gray", (-1.0, 1.0)), ("T2", image[1], "gray", (-1.0, 1.0))]
        for method in methods:
            case = load_case(subject, heatmaps[method][subject], brain_masks[subject_of(subject)])
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
    cases = [load_region_case(v, heatmaps[v], lookup(brain_masks, subject_of(v), "brain mask"), cfg,
                              lookup(lesion_masks, v, "lesion mask")) for v in sorted(heatmaps)]
    pooled = np.concatenate([c.heatmap[c.brain] for c in cases])
    thresholds = np.r_[froc_thresholds(pooled, cfg.froc_n_thresholds), np.asarray(extra_thresholds, float)]
    detected = np.zeros(len(thresholds))
    lesions = np.zeros(len(thresholds))
    fp = np.zeros(len(thresholds))
    for case in cases:
        rim = rim_for(case.brain, cfg)
        reference = prepare_reference(case.lesion, case.brain, cfg, rim)
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
    common = {v for v in set(images_by) & set(masks_by) if subject_of(v) in brains_by}
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


# Paired differences against the reference method (Table-1 statistics, spatial_msma.evaluation.stats).

PAIRED_METRICS = ("hd99", "msd", "tpr", "ppv", "dice", "auroc")
#: Bar colour by the stats table's ``better`` (the reference is the ``versus`` side).
PAIRED_COLOURS = {"versus": "tab:blue", "method": "tab:orange", "none": "0.3"}


def plot_paired_differences(
    stats: pd.DataFrame,
    subject_diffs: pd.DataFrame,
    out_path: PathLike,
    reference: str = "spatial_msma",
    metrics: Sequence[str] = PAIRED_METRICS,
    confidence: float = 0.95,
) -> None:
    """Every method minus ``reference``: one panel per metric (columns) and protocol (rows).

    Per method, grey points are the per-subject mean differences (the independent units) and the bar is the
    mean difference over volumes with its subject-bootstrap interval, coloured by which side it excludes 0
    for. The half of each panel where the reference is better is shaded, so the direction of every metric
    (lower-is-better distances, higher-is-better overlaps) reads the same way. ``stats`` is
    :func:`spatial_msma.evaluation.stats.paired_stats`, ``subject_diffs`` its ``subject_differences``;
    protocols appear in the order of ``stats``.
    """
    ref_name = display_name(reference)
    vs = stats[(stats["versus"] == reference) & stats["metric"].isin(metrics)]
    protocols = list(dict.fromkeys(stats["protocol"]))
    methods = method_order(vs["method"].unique())
    n_rows, n_cols, n_methods = max(len(protocols), 1), len(metrics), max(len(methods), 1)
    height = (0.36 * n_methods + 1.25) * n_rows + 1.0
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, figsize=(2.7 * n_cols + 1.8, height))
    for r, protocol in enumerate(protocols):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            rows = vs[(vs["protocol"] == protocol) & (vs["metric"] == metric)].set_index("method")
            points = subject_diffs[(subject_diffs["protocol"] == protocol) & (subject_diffs["metric"] == metric)
                                   & (subject_diffs["versus"] == reference)]
            for k, method in enumerate(methods):
                y = n_methods - 1 - k
                d = points.loc[points["method"] == method, "difference"].to_numpy(dtype=float)
                jitter = ((np.arange(d.size) * 0.6180339887) % 1.0 - 0.5) * 0.45
                ax.scatter(d, y + jitter, s=8, color="0.55", alpha=0.55, linewidths=0, zorder=1)
                if method in rows.index and np.isfinite(rows.at[method, "ci_low"]):
                    mean, low, high = (float(rows.at[method, key]) for key in ("mean_diff", "ci_low", "ci_high"))
                    colour = PAIRED_COLOURS[rows.at[method, "better"]]
                    # a line from low to high, not errorbar(): a percentile interval need not contain the mean
                    ax.plot([low, high], [y, y], "-", color=colour, lw=2.4, zorder=3)
                    ax.plot([low, high], [y, y], "|", color=colour, ms=8, mew=2, zorder=3)
                    ax.plot([mean], [y], "D", color=colour, ms=5, zorder=4)
            if rows.empty:
                ax.text(0.5, 0.5, f"no {ref_name} rows", transform=ax.transAxes, ha="center", va="center",
                        fontsize=9, color="0.4")
            lo, hi = ax.get_xlim()
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            pad = 0.04 * (hi - lo or 1.0)
            lo, hi = lo - pad, hi + pad
            lower = bool((vs.loc[vs["metric"] == metric, "direction"] == "lower").any())
            span = (0.0, hi) if lower else (lo, 0.0)
            ax.axvspan(*span, color=PAIRED_COLOURS["versus"], alpha=0.07, lw=0)
            ax.axvline(0.0, color="black", lw=1.0, zorder=2)
            ax.set_xlim(lo, hi)
            ax.set_ylim(-0.6, n_methods - 0.4)
            ax.set_yticks(range(n_methods))
            ax.set_yticklabels([display_name(m) for m in reversed(methods)] if c == 0 else [])
            ax.tick_params(labelsize=9)
            ax.grid(True, axis="x", alpha=0.3)
            left, right = ("other", ref_name) if lower else (ref_name, "other")
            ax.set_xlabel(f"← {left} better | {right} better →", fontsize=8, color="0.3")
            if r == 0:
                ax.set_title(f"{HEADERS.get(metric, metric)}\n({'lower' if lower else 'higher'} is better)",
                             fontsize=11)
            if c == 0:
                n_subj = points["subject"].nunique()
                ax.set_ylabel(f"{protocol}\n({n_subj} subjects)", fontsize=11, fontweight="bold")
    def bar(colour: str, label: str) -> plt.Line2D:
        return plt.Line2D([], [], marker="D", color=colour, lw=2.4, label=label)

    handles = [
        bar(PAIRED_COLOURS["versus"], f"{ref_name} significantly better"),
        bar(PAIRED_COLOURS["method"], "other method significantly better"),
        bar(PAIRED_COLOURS["none"], "interval contains 0"),
        plt.Line2D([], [], marker="o", ls="", color="0.55", label="one subject (mean over its volumes)"),
        plt.Rectangle((0, 0), 1, 1, color=PAIRED_COLOURS["versus"], alpha=0.15,
                      label=f"side where {ref_name} is better"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"Paired differences, method − {ref_name}: mean over volumes with {100 * confidence:g} % "
                 "interval (subjects resampled), grey points = per-subject means", fontsize=12)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1 - 0.4 / height))  # room for the legend and title (inches)
    save_figure(fig, out_path)
