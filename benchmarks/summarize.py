"""Print a run's quality tables as Markdown: Table 1 under every protocol, Spatial-MSMA's rank on each metric
(and its margin over the intensity z-score), TPR per lesion-size bin, the ablation and validation tables.

    python benchmarks/summarize.py results [--label "default config"]

Reads only the CSV files a finished run wrote (results/table1*.csv, table1_size_bins.csv,
diagnostics/ablations*.csv, validation/table.csv, diagnostics/score_levels.csv); nothing is recomputed.
benchmarks/README.md is made of this script's output for the default and the benchmark config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

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
PROTOCOLS = {"table1.csv": "oracle", "table1_fpr05.csv": "5 % FPR", "table1_fpr10.csv": "10 % FPR"}
(FOCUS,) = keys("spatial_msma")
(FLOOR,) = keys("floor")


def metric_table(frame: pd.DataFrame) -> str:
    """One row per method: mean (± SE where the table has one), best value of each column in bold."""
    best = {}
    for column, _, higher in METRICS:
        values = frame[column].dropna()
        if len(values):
            best[column] = values.max() if higher else values.min()
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
            cells.append(f"**{text}**" if column in best and pd.notna(value) and value == best[column] else text)
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
    for name, protocol in PROTOCOLS.items():
        path = results / name
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        out += [f"### Table 1, test split, {protocol} protocol (99-HD, MSD in working-grid voxels; mean ± SE)",
                metric_table(frame), "", ranks(frame), ""]
    if (results / "table1_size_bins.csv").exists():
        out += ["### TPR per lesion size (test split; lesions per bin in brackets)",
                size_bins(results / "table1_size_bins.csv"), ""]
    for name, title in (("diagnostics/ablations.csv", "Ablations (test split, oracle)"),
                        ("diagnostics/ablations_fpr10.csv", "Ablations (test split, 10 % FPR)"),
                        ("validation/table.csv", "Validation table (lesioned validation split, oracle)")):
        if (results / name).exists():
            out += [f"### {title}", metric_table(pd.read_csv(results / name)), ""]
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
