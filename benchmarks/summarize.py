"""Print a run's quality tables as Markdown: Table 1 under every protocol (a value in bold only where the paired
statistics call that method best), Spatial-MSMA's rank on each metric and its margin over the intensity z-score,
the paired differences against Spatial-MSMA with their intervals, the realised false-positive rates, TPR per
lesion-size bin, the seed spread, the ablation and validation tables.

    python benchmarks/summarize.py results [--label "default config"]

Reads only the files a finished run wrote (results/table1*.csv, table1_stats.csv, table1_size_bins.csv,
seed_spread/table1.md, diagnostics/ablations*.csv, validation/table.csv, diagnostics/score_levels.csv);
nothing is recomputed.
benchmarks/README.md is made of this script's output for the default and the benchmark config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from spatial_msma.evaluation.stats import best_methods
from spatial_msma.methods import keys

#: (column, header, higher is better) for the Markdown tables and the ranking.
METRICS = [
    ("hd99_mean", "99-HD", False),
    ("msd_mean", "MSD", False),
    ("tpr_mean", "TPR", True),
    ("ppv_mean", "PPV", True),
    ("dice_mean", "Dice", True),
    ("auroc_mean", "voxel AUROC", True),
    ("contrast_mean", "contrast", True),
    ("image_auroc", "image AUROC", True),
]
PAIRED = {"hd99": "99-HD", "msd": "MSD", "tpr": "TPR", "ppv": "PPV", "dice": "Dice", "auroc": "voxel AUROC"}
PROTOCOLS = {"table1.csv": "oracle", "table1_fpr05.csv": "5 % FPR", "table1_fpr10.csv": "10 % FPR"}
(FOCUS,) = keys("spatial_msma")
(FLOOR,) = keys("floor")


def metric_table(frame: pd.DataFrame, best: dict[str, str | None] | None = None) -> str:
    """One row per method: mean (± SE where the table has one); bold where ``best`` (metric -> method, from the
    paired statistics) names the row's method. Without statistics nothing is bold: a larger mean is not a win."""
    best = {f"{m}_mean": b for m, b in (best or {}).items()}
    lines = ["| method | " + " | ".join(h for _, h, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for _, row in frame.iterrows():
        cells = []
        for column, _, _ in METRICS:
            value = row[column]
            se = row.get(column.replace("_mean", "_se")) if column.endswith("_mean") else None
            text = "—" if pd.isna(value) else f"{value:.2f}"
            if text != "—" and se is not None and pd.notna(se):
                text += f" ± {se:.2f}"
            cells.append(f"**{text}**" if best.get(column) == row["method"] and pd.notna(value) else text)
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranks(frame: pd.DataFrame, focus: str = FOCUS, floor: str = FLOOR) -> str:
    """Spatial-MSMA's rank among the table's methods on each metric (1 = best) and its margin over the z-score."""
    if focus not in set(frame["method"]):
        return ""
    rank_cells, margin_cells = [], []
    by_method = frame.set_index("method")
    me = by_method.loc[focus]
    ref = by_method.loc[floor] if floor in by_method.index else None
    for column, _, higher in METRICS:
        values = frame[column]
        if pd.isna(me[column]):
            rank_cells.append("—")
            margin_cells.append("—")
            continue
        better = (values > me[column]) if higher else (values < me[column])
        rank_cells.append(f"{int(better.sum()) + 1}/{int(values.notna().sum())}")
        if ref is not None and pd.notna(ref[column]):
            margin = me[column] - ref[column]
            won = margin > 0 if higher else margin < 0
            margin_cells.append(f"{margin:+.2f} ({'better' if won else 'worse' if margin else 'tie'})")
        else:
            margin_cells.append("—")
    header = "| | " + " | ".join(h for _, h, _ in METRICS) + " |"
    return "\n".join([header, "|---|" + "---|" * len(METRICS),
                      "| Spatial-MSMA rank | " + " | ".join(rank_cells) + " |",
                      "| minus z-score | " + " | ".join(margin_cells) + " |"])


def paired_table(stats: pd.DataFrame, protocol: str, versus: str = FOCUS) -> str:
    """Every method minus Spatial-MSMA on the same volumes: mean difference [95 % subject-bootstrap interval],
    Wilcoxon p; a star where the interval excludes 0."""
    sub = stats[(stats["protocol"] == protocol) & (stats["versus"] == versus)]
    metrics = [m for m in PAIRED if m in set(sub["metric"])]
    lines = ["| method minus Spatial-MSMA | " + " | ".join(PAIRED[m] for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for method in dict.fromkeys(sub["method"]):
        cells = []
        for metric in metrics:
            r = sub[(sub["method"] == method) & (sub["metric"] == metric)].iloc[0]
            star = "*" if r["better"] != "none" else ""
            interval = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]{star}"
            p_value = f"p={r['p_wilcoxon']:.2g}"
            cells.append("—" if pd.isna(r["mean_diff"]) else f"{r['mean_diff']:+.2f} {interval} {p_value}")
        lines.append(f"| {r['method_name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def realised_fpr(frame: pd.DataFrame) -> str:
    """The healthy false-positive rate each deployable threshold met on the lesion-free test images."""
    if "fpr_lesion_free" not in frame:
        return ""
    lines = ["| method | threshold | healthy FPR (raw) | healthy FPR (post-processed) | FP components / lesion-free "
             "image |", "|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['name']} | {r['threshold']:.4g} | {r['fpr_lesion_free']:.3f} | "
                     f"{r['fpr_lesion_free_segmented']:.3f} | {r['fp_per_lesion_free_image']:.2f} |")
    return "\n".join(lines)


def size_bins(path: Path) -> str:
    """TPR per lesion-size bin (working grid), one row per method and protocol."""
    frame = pd.read_csv(path)
    order = list(dict.fromkeys(frame["bin_mm3"]))
    counts = frame.drop_duplicates("bin_mm3").set_index("bin_mm3")["lesions"]
    # dropna=False keeps bins without lesions (TPR undefined) as columns of "—"
    table = frame.pivot_table(index=["protocol", "name"], columns="bin_mm3", values="tpr", sort=False,
                              dropna=False)[order]
    lines = ["| protocol | method | " + " | ".join(f"{b} mm³ ({counts[b]})" for b in order) + " |",
             "|---|---|" + "---|" * len(order)]
    for (protocol, name), row in table.iterrows():
        lines.append(f"| {protocol} | {name} | " + " | ".join("—" if pd.isna(v) else f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


def level_summary(path: Path) -> str:
    frame = pd.read_csv(path)
    columns = [("voxel_auroc", "raw patch-norm voxel AUROC"),
               ("voxel_auroc_standardised", "standardised voxel AUROC"), ("image_auroc", "image AUROC")]
    columns = [(c, h) for c, h in columns if c in frame]
    lines = ["| split | levels | sigma | " + " | ".join(f"{h} (min-max)" for _, h in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for split, part in frame.groupby("split", sort=False):
        ranges = " | ".join(f"{part[c].min():.2f}-{part[c].max():.2f}" for c, _ in columns)
        lines.append(f"| {split} | {len(part)} | {part['sigma'].min():.3g}-{part['sigma'].max():.3g} | {ranges} |")
    return "\n".join(lines)


def summarize(results: Path, label: str) -> str:
    out = [f"## {label}"]
    stats = pd.read_csv(results / "table1_stats.csv") if (results / "table1_stats.csv").exists() else None
    for name, protocol in PROTOCOLS.items():
        path = results / name
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        key = frame["protocol"].iloc[0]
        best = {m: b for (p, m), b in best_methods(stats).items() if p == key} if stats is not None else None
        n = f"{int(frame['n'].max())} volumes of {int(frame['n_subjects'].max())} subjects" if "n_subjects" in frame \
            else f"{int(frame['n'].max())} subjects"
        out += [f"### Table 1, test split, {protocol} protocol ({n}; 99-HD, MSD in working-grid voxels; mean ± SE "
                "over subjects; bold: significantly best in the paired statistics)",
                metric_table(frame, best), "", ranks(frame), ""]
        if stats is not None:
            out += [f"Paired differences, {protocol} (95 % bootstrap interval over subjects; * excludes 0):", "",
                    paired_table(stats, key), ""]
        if key != "oracle" and realised_fpr(frame):
            out += [f"Realised false-positive rate, {protocol}:", "", realised_fpr(frame), ""]
    if (results / "table1_size_bins.csv").exists():
        out += ["### TPR per lesion size (test split; lesions per bin in brackets)",
                size_bins(results / "table1_size_bins.csv"), ""]
    for name, title in (("diagnostics/ablations.csv", "Ablations (test split, oracle)"),
                        ("diagnostics/ablations_fpr10.csv", "Ablations (test split, 10 % FPR)"),
                        ("validation/table.csv", "Validation table (lesioned validation split, oracle)")):
        if (results / name).exists():
            out += [f"### {title}", metric_table(pd.read_csv(results / name)), ""]
    spread = results / "seed_spread" / "table1.md"
    if spread.exists():
        out += ["### Seed spread", spread.read_text().split("\n", 2)[2], ""]
    if (results / "diagnostics/score_levels.csv").exists():
        out += ["### Per-level diagnostics", level_summary(results / "diagnostics/score_levels.csv"), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a run's results/ directory")
    parser.add_argument("--label", default="", help="heading of the section (default: the directory)")
    args = parser.parse_args()
    print(summarize(args.results, args.label or str(args.results)))


if __name__ == "__main__":
    main()
