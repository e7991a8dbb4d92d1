"""Table 1 (per protocol), its Markdown twin with the paper's numbers alongside, and TPR per lesion size.

Everything here is computed from the per-subject CSVs (and the thresholds JSONs for the image-level
AUROC and healthy false positives), so every number in a table can be traced to its subjects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import SIZE_BIN_LABELS, SIZE_BIN_NAMES
from spatial_msma.evaluation.pipeline import load_thresholds
from spatial_msma.io import InputError, write_table, write_text
from spatial_msma.methods import METHODS, display_name, method_order, table1_keys
from spatial_msma.protocols import protocol_name

PathLike = str | os.PathLike

PRIMARY = ("hd99", "msd", "tpr", "ppv")
EXTRA = ("dice", "best_dice", "auroc", "auprc", "contrast", "hd99_mm", "msd_mm")
HEADERS = {
    "hd99": "99-HD", "msd": "MSD", "tpr": "TPR", "ppv": "PPV", "dice": "Dice", "best_dice": "best Dice",
    "auroc": "voxel AUROC", "auprc": "voxel AUPRC", "contrast": "lesion contrast",
    "hd99_mm": "99-HD (mm)", "msd_mm": "MSD (mm)",
}
REQUIRED_COLUMNS = ("subject", "volume", "method", "protocol", "missed", "image_score", "pred_fp", "voxel_mm",
                    *PRIMARY, *EXTRA)


def read_metric_csvs(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Concatenate per-subject metric CSVs, checking each has the columns the tables need."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(f"metrics table {path}: unreadable ({err})") from err
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(f"metrics table {path}: missing column(s) {missing}")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def independent_units(participants: PathLike | None) -> dict[str, str]:
    """``subject -> anatomy`` when ``participants.tsv`` names several anatomies, else ``{}`` (the subject is the unit).

    Subjects the label-map cohort makes from one anatomy share its brain: only their deformation, pose,
    contrast and noise differ. The splits keep anatomies apart, so a test split of 10 subjects can hold just 3
    anatomies; resampling subjects would count one brain three times and narrow every interval. The tables'
    standard errors and the paired statistics therefore treat the anatomy as the independent unit. One
    anatomy (the MNI-template cohort) or none (a BIDS cohort): every subject is its own unit.
    """
    if participants is None:
        return {}
    try:
        table = pd.read_csv(participants, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"participants table {participants}: unreadable ({err})") from err
    if not {"participant_id", "anatomy"} <= set(table.columns):
        return {}
    named = table[table["anatomy"] != ""]
    if named["anatomy"].nunique() < 2:
        return {}
    return {subject: f"anatomy {anatomy}" for subject, anatomy in zip(named.participant_id, named.anatomy,
                                                                       strict=True)}


def by_unit(per_volume: pd.DataFrame, units: Mapping[str, str]) -> pd.DataFrame:
    """``per_volume`` with each ``subject`` replaced by its independent unit (:func:`independent_units`);
    unchanged when ``units`` is empty. A subject the mapping lacks is an :class:`InputError`: it would
    silently become a unit of its own."""
    if not units or not len(per_volume):
        return per_volume
    unknown = sorted(set(per_volume["subject"].astype(str)) - set(units))
    if unknown:
        raise InputError(f"participants table: no anatomy for evaluated subject(s) {unknown[:3]}")
    return per_volume.assign(subject=per_volume["subject"].astype(str).map(units))


def unit_name(units: Mapping[str, str]) -> str:
    """What one independent unit of the statistics is: ``anatomy`` or ``subject``."""
    return "anatomy" if units else "subject"


def mean_se(values: pd.Series, subjects: pd.Series | None = None) -> tuple[float, float, int]:
    """Mean over the finite values, its standard error, and their count.

    The SE is over subjects: the SD (ddof 1) of the per-subject means over sqrt(number of subjects). Lesion
    draws of one subject share its anatomy and its lesion-free heatmap, so they are not independent; with
    one draw per subject this is the plain SE over values. ``subjects=None`` treats every value as its own
    subject.
    """
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(v)
    if not finite.any():
        return float("nan"), float("nan"), 0
    groups = np.arange(v.size) if subjects is None else np.asarray(subjects)
    per_subject = pd.Series(v[finite]).groupby(groups[finite]).mean().to_numpy()
    se = float(per_subject.std(ddof=1) / np.sqrt(per_subject.size)) if per_subject.size > 1 else float("nan")
    return float(v[finite].mean()), se, int(finite.sum())


def image_auroc(lesioned_scores: Sequence[float], healthy_scores: Sequence[float]) -> float:
    """Image-level AUROC: lesioned test images (positives) vs lesion-free test originals (negatives)."""
    if not len(lesioned_scores) or not len(healthy_scores):
        return float("nan")
    y = np.r_[np.ones(len(lesioned_scores)), np.zeros(len(healthy_scores))]
    return float(roc_auc_score(y, np.r_[lesioned_scores, healthy_scores]))


def summarise(per_subject: pd.DataFrame, thresholds: Mapping[str, dict], protocol: str) -> pd.DataFrame:
    """One row per method (Table-1 order): mean and SE of every metric, n, missed, detection extras."""
    rows = []
    sub = per_subject[per_subject["protocol"] == protocol]
    for method in method_order(sub["method"].unique()):
        frame = sub[sub["method"] == method]
        row: dict = {"method": method, "name": display_name(method), "protocol": protocol,
                     "n": len(frame), "n_subjects": int(frame["subject"].nunique()),
                     "missed": int(frame["missed"].sum())}
        for metric in (*PRIMARY, *EXTRA):
            row[f"{metric}_mean"], row[f"{metric}_se"], _ = mean_se(frame[metric], frame["subject"])
        row["fp_per_image"] = float(frame["pred_fp"].mean())
        fitted = thresholds.get(method)
        healthy = list(fitted["image_scores"].get("test", {}).values()) if fitted else []
        row["image_auroc"] = image_auroc(frame["image_score"].tolist(), healthy)
        entry = fitted["protocols"].get(protocol, {}) if fitted else {}
        row["threshold"] = entry.get("threshold", float("nan"))
        for key, column in (("fp_components_per_lesion_free_test_image", "fp_per_lesion_free_image"),
                            ("fpr_lesion_free_test", "fpr_lesion_free"),
                            ("fpr_lesion_free_test_segmented", "fpr_lesion_free_segmented")):
            value = entry.get(key)
            row[column] = float("nan") if value is None else value
        rows.append(row)
    return pd.DataFrame(rows)


def size_bin_table(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Lesion-wise TPR per MS-MIST volume bin, pooled over subjects, per method and protocol."""
    rows = []
    for (protocol, method), frame in per_subject.groupby(["protocol", "method"], sort=False):
        for name, label in zip(SIZE_BIN_NAMES, SIZE_BIN_LABELS, strict=True):
            tp, fn = int(frame[f"bin_{name}_tp"].sum()), int(frame[f"bin_{name}_fn"].sum())
            rows.append({"protocol": protocol, "method": method, "name": display_name(method),
                         "bin_mm3": label, "lesions": tp + fn, "detected": tp,
                         "tpr": tp / (tp + fn) if tp + fn else float("nan")})
    return pd.DataFrame(rows, columns=["protocol", "method", "name", "bin_mm3", "lesions", "detected", "tpr"])


def lesions_left_out(per_subject: pd.DataFrame, protocol: str) -> tuple[int, int]:
    """(components too small to count, all simulated components in the region), summed over the volumes of one
    method under ``protocol`` (every method sees the same ground truth)."""
    sub = per_subject[per_subject["protocol"] == protocol]
    if not len(sub) or "n_small_lesions_left_out" not in sub:
        return 0, 0
    first = sub[sub["method"] == sub["method"].iloc[0]]
    left_out = int(first["n_small_lesions_left_out"].sum())
    return left_out, left_out + int(first["n_gt_components"].sum())


def _pm(mean: float, se: float, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if np.isfinite(se) else f"{mean:.{digits}f}"


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if np.isfinite(value) else "n/a"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def protocol_description(protocol: str, cfg: EvaluationConfig) -> str:
    """One paragraph saying how thresholds were chosen under ``protocol``."""
    lo, hi = cfg.oracle_percentiles
    if protocol == "oracle":
        return (
            f"Protocol **oracle** (the paper's Table 1): per test volume, the threshold among "
            f"{cfg.oracle_n_thresholds} evenly spaced between the {lo:g}th and {hi:g}th percentile of its "
            "heatmap in the evaluated region with the lowest symmetric mean surface distance to the ground truth "
            "after post-processing. It looks at the ground truth: an upper bound, not a deployable detector."
        )
    level = {protocol_name(f): f for f in cfg.fpr_levels}[protocol]
    return (
        f"Protocol **{protocol}** (deployable): ONE threshold per method, fixed before any lesion is seen, at a "
        f"{100 * level:g} % healthy-voxel false-positive rate on the validation and lesion-free test heatmaps, "
        "fitted in the evaluated region and applied in it. The columns `healthy FPR` give the rate realised on "
        "the lesion-free test images in that region, at the raw threshold and after post-processing (the "
        "dilation adds voxels). The paper's numbers (oracle protocol) are shown for scale only."
    )


def protocol_notes(cfg: EvaluationConfig, n_left_out: int, n_lesions: int) -> list[str]:
    """The evaluation protocol in sentences: region, ground truth, post-processing, metric definitions, and
    where it differs from the authors' evaluator or the paper (each a config switch where one exists)."""
    conn = {1: 6, 2: 18, 3: 26}
    region = (f"the brain mask eroded by {cfg.erosion_radius} voxels (the authors' evaluator): heatmaps and "
              "ground truth alike are restricted to it" if cfg.erosion_radius else "the whole brain mask")
    small = (f"Ground-truth components under {cfg.min_lesion_voxels} voxels ({conn[cfg.lesion_connectivity]}-"
             "connectivity) are not lesions to find (the authors' evaluator; `evaluation.min_lesion_voxels`): "
             f"{n_left_out} of {n_lesions} simulated components in the region here. They stay in the size-bin "
             "table, where a detection of one still counts."
             if cfg.min_lesion_voxels > 1 else "Every simulated lesion component counts, however small "
             "(`evaluation.min_lesion_voxels` <= 1; the authors' evaluator drops those under 3 voxels).")
    rim = (f"components touching the rim of the region (radius {cfg.rim_radius}) dropped from predictions AND "
           "ground truth (authors' code, not in the paper)") if cfg.drop_rim_components else \
        "rim-touching components kept (`drop_rim_components` off, as in the paper)"
    return [
        f"Evaluated region: {region}. Every metric, both protocols and the threshold fit use it.",
        small,
        f"Post-processing: components < {cfg.min_component_voxels} voxels removed "
        f"({conn[cfg.component_connectivity_postprocess]}-connectivity), {rim}, dilation with a radius-"
        f"{cfg.dilation_radius} ball.",
        f"TPR = lesions (ground-truth components) overlapped / all lesions. PPV is counted on the prediction "
        f"side: predicted components overlapping a lesion / all predicted components "
        f"({conn[cfg.component_connectivity_metrics]}-connectivity), as the paper defines it; counting true "
        "positives on the ground-truth side (lesions hit) instead gives a different PPV when one component "
        "covers several lesions or one lesion is split.",
        "The oracle's candidate thresholds span percentiles of each volume's own heatmap, so every method is "
        "searched over its own upper tail; heatmaps are thresholded as each method writes them, with no "
        "per-image shift (e.g. subtracting the image's minimum), so a deployable threshold compares raw scores "
        "across images.",
    ]


def best_line(best: Mapping[str, str | None], metrics: Sequence[str]) -> str:
    """The sentence saying which method is best on each metric, where the paired statistics support it."""
    parts = [f"{HEADERS[m]}: " + (f"**{display_name(best[m])}**" if best.get(m) else "no significant difference")
             for m in metrics if m in best]
    return ("Best, where the paired statistics support it (against EVERY other row, its 95 % bootstrap interval "
            "over the independent units excludes 0 and its Wilcoxon p < 0.05; `table1_stats.csv`): "
            + "; ".join(parts) + ". Bold cells mark those methods.")


def markdown_report(
    summary: pd.DataFrame, bins: pd.DataFrame, protocol: str, cfg: EvaluationConfig, missing: list[str],
    voxel_mm: float, title: str = "Table 1", image_set: str = "test", left_out: tuple[int, int] = (0, 0),
    best: Mapping[str, str | None] | None = None, unit: str = "subject",
) -> str:
    """The Markdown twin of one protocol's table, with the paper's values, units and notes.

    ``left_out`` is (lesion components too small to count, all components) over the volumes; ``best`` maps a
    metric to the method the paired statistics call best on it (None: no significant difference), and
    marks that cell bold; without it nothing is marked. ``unit`` is what the standard errors are over
    (:func:`unit_name`).
    """
    best = best or {}
    units = "anatomies" if unit == "anatomy" else "subjects"

    def cell(r: dict, metric: str, digits: int = 2) -> str:
        text = _pm(r[f"{metric}_mean"], r[f"{metric}_se"], digits)
        return f"**{text}**" if best.get(metric) == r["method"] else text

    n_volumes = int(summary["n"].max()) if len(summary) else 0
    n_subjects = int(summary["n_subjects"].max()) if len(summary) else 0
    lines = [
        f"# {title} — protocol {protocol}", "",
        protocol_description(protocol, cfg), "",
        f"Units: 99-HD and MSD in **voxels** of the working grid ({voxel_mm:g} mm here; the paper's voxels are "
        "2 mm), directed from ground truth to prediction (MONAI, reference first). Mean over "
        f"{n_volumes} {image_set} volumes ({n_subjects} {units}, each with one or more independent lesion "
        f"draws) ± standard error over {units}"
        + (" (subjects made from one anatomy share its brain, so the anatomy is the independent unit)"
           if unit == "anatomy" else "") + ". `missed` = volumes with an empty prediction: their distances "
        "are undefined and left out of the distance means (never counted as 0).", "",
    ]
    present = list(summary["method"]) if len(summary) else []
    rows, extra_rows = [], []
    for r in summary.itertuples(index=False):
        r = r._asdict()
        paper = METHODS[r["method"]].paper if r["method"] in METHODS else {}
        cells = [r["name"], str(r["n"]), str(r["missed"])]
        for metric in PRIMARY:
            cells.append(cell(r, metric))
            cells.append(_pm(*paper[metric]) if metric in paper else "—")
        rows.append(cells)
        extra = [r["name"]] + [cell(r, m, 3 if m not in ("hd99_mm", "msd_mm") else 2) for m in EXTRA]
        extra += [_num(r["image_auroc"]), _num(r["fp_per_image"])]
        if protocol != "oracle":
            extra += [_num(r["threshold"], 4), _num(r["fpr_lesion_free"]), _num(r["fpr_lesion_free_segmented"]),
                      _num(r["fp_per_lesion_free_image"])]
        extra_rows.append(extra)
    header = ["method", "n", "missed"]
    for metric in PRIMARY:
        header += [HEADERS[metric], f"{HEADERS[metric]} (paper)"]
    lines += [_md_table(header, rows), ""]
    if best:
        lines += [best_line(best, (*PRIMARY, *EXTRA)), ""]
    extra_header = ["method"] + [HEADERS[m] for m in EXTRA] + ["image AUROC", "FP components / image"]
    if protocol != "oracle":
        extra_header += ["threshold", "healthy FPR (raw)", "healthy FPR (post-processed)",
                         "FP components / lesion-free image"]
    lines += ["## Beyond the paper", "",
              "Dice at the protocol's threshold; best Dice over every threshold of the raw heatmap; voxel AUROC/"
              "AUPRC over the voxels of the region; lesion contrast = (mean heatmap in lesions - mean in the rest "
              "of the region) / SD in the rest; image AUROC of the "
              f"{cfg.image_score_percentile:g}th percentile of the heatmap in the region, lesioned test volumes "
              "vs the lesion-free originals.", "",
              _md_table(extra_header, extra_rows), ""]
    if len(bins) and present:
        bin_rows = []
        for method in present:
            b = bins[bins["method"] == method]
            bin_rows.append([display_name(method)] + [
                f"{_num(t, 2)} ({d}/{n})" for t, d, n in zip(b["tpr"], b["detected"], b["lesions"], strict=True)])
        lines += ["## TPR per lesion volume (mm³, MS-MIST bins)", "",
                  "Every simulated component in the region, the ones too small to count in Table 1 included.", "",
                  _md_table(["method", *SIZE_BIN_LABELS], bin_rows), ""]
    notes = protocol_notes(cfg, *left_out)
    notes += [f"{METHODS[m].name}: {METHODS[m].note}" for m in present if m in METHODS and METHODS[m].note]
    if missing:
        notes.append("Not evaluated (no metrics CSV for this protocol): "
                     + ", ".join(display_name(m) for m in missing) + ".")
    notes.append("Paper values: 165 test subjects, 2 mm voxels, lesion load 20 mL, oracle protocol.")
    lines += ["## Protocol and notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_tables(
    metric_csvs: Sequence[PathLike],
    threshold_jsons: Sequence[PathLike],
    outputs: Mapping[str, PathLike],
    cfg: EvaluationConfig,
    logger: logging.Logger | None = None,
    title: str = "Table 1",
    expected_methods: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    image_set: str = "test",
    best: Mapping[tuple[str, str], str | None] | None = None,
    participants: PathLike | None = None,
) -> dict[str, pd.DataFrame]:
    """Write ``{protocol}_csv`` / ``{protocol}_md`` for every protocol and ``size_bins_csv`` from the inputs.

    Methods of ``expected_methods`` (default: the Table-1 rows) without metrics are listed as missing in each
    Markdown table rather than failing the run. ``protocols`` defaults to the oracle and every FPR level; the
    validation table passes just the oracle (deployable thresholds are fixed on test-split healthy images).
    ``best`` maps (protocol, metric) to the method the paired statistics call best (stats.best_methods).
    ``participants`` (the cohort's participants.tsv) decides the independent unit of the standard errors
    (:func:`independent_units`): the anatomy for the label-map cohort, else the subject.
    """
    logger = logger or logging.getLogger("spatial_msma")
    protocols = list(protocols) if protocols is not None else cfg.protocols
    expected = list(expected_methods) if expected_methods is not None else table1_keys()
    needed = [f"{p}_{kind}" for p in protocols for kind in ("csv", "md")] + ["size_bins_csv"]
    absent = [k for k in needed if k not in outputs]
    if absent:
        raise InputError(f"table outputs: missing named output(s) {absent}")
    units = independent_units(participants)
    per_subject = by_unit(read_metric_csvs(metric_csvs), units)
    thresholds = {}
    for path in threshold_jsons:
        data = load_thresholds(path)
        thresholds[data["method"]] = data
    bins = size_bin_table(per_subject)
    voxel_mm = float(per_subject["voxel_mm"].mean()) if len(per_subject) else float("nan")
    summaries = {}
    for protocol in protocols:
        summary = summarise(per_subject, thresholds, protocol).assign(unit=unit_name(units))
        missing = [m for m in expected if m not in set(summary["method"] if len(summary) else ())]
        write_table(summary, outputs[f"{protocol}_csv"])
        write_text(markdown_report(summary, bins[bins["protocol"] == protocol], protocol, cfg, missing, voxel_mm,
                                   title, image_set, lesions_left_out(per_subject, protocol),
                                   {m: b for (p, m), b in (best or {}).items() if p == protocol},
                                   unit_name(units)),
                   outputs[f"{protocol}_md"])
        summaries[protocol] = summary
        logger.info("table %s: %d methods, missing %s -> %s", protocol, len(summary), missing,
                    Path(outputs[f"{protocol}_csv"]))
    write_table(bins, outputs["size_bins_csv"])
    return summaries
