"""Does a job's memory grow with the cohort? Compare the Snakemake benchmark files of two finished runs.

    python benchmarks/memory_scaling.py RESULTS_SMALL RESULTS_LARGE [--rules train_score_model,train_flow]

RESULTS_SMALL and RESULTS_LARGE are the ``results`` folders of two finished runs of one config that differ in
the number of subjects (say ``synthetic.n_subjects: 60`` and ``180``). Every rule writes a Snakemake benchmark
file (``benchmark:`` in rules/*.smk): ``results/benchmarks/<rule>.tsv`` or, for a rule with a job per
subject, set or method, ``.../benchmarks/<rule>/<job>.tsv`` (``{run}/benchmarks`` of a seed run included).
The script reads them all under each folder and prints one Markdown table: per rule, the jobs found in each
run, the median and the largest ``max_rss`` (MiB, the peak resident memory of the job's processes) over
those jobs, and the ratio of the largest (large run / small run), beside the ratio of subjects in the two
runs' ``cohort/participants.tsv`` (included subjects; the training split in brackets).

A job whose memory does not depend on the cohort shows a ratio near 1; one that holds the whole set in
memory grows like the subject ratio. ``--grow`` (default 1.5) marks the rules whose ratio exceeds it.
Nothing is recomputed: it reads the files only.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

#: The name of the folders Snakemake benchmark files are written to (rules/*.smk).
BENCHMARKS = "benchmarks"

#: The column of a benchmark file with the peak resident memory; Snakemake writes bytes / 1024**2 (MiB).
RSS_COLUMN = "max_rss"


def rule_of(path: Path) -> str:
    """The rule a benchmark file belongs to: the file's stem right under a ``benchmarks`` folder, else the
    folder under it (one file per job: ``benchmarks/preprocess/sub-01.tsv`` -> ``preprocess``)."""
    parts = path.parts
    rel = parts[len(parts) - 1 - parts[::-1].index(BENCHMARKS) + 1:]
    return Path(rel[0]).stem if len(rel) == 1 else rel[0]


def read_benchmarks(results: Path) -> pd.DataFrame:
    """One row per benchmark file under ``results``: rule, file, peak ``max_rss`` (MiB) over its repeats
    (NaN where Snakemake recorded none: a job too short to sample)."""
    rows = []
    for path in sorted(results.rglob("*.tsv")):
        if BENCHMARKS not in path.relative_to(results).parts[:-1]:
            continue
        table = pd.read_csv(path, sep="\t")
        if RSS_COLUMN not in table:
            continue
        rss = pd.to_numeric(table[RSS_COLUMN], errors="coerce").max()
        rows.append({"rule": rule_of(path), "file": str(path.relative_to(results)), "max_rss": float(rss)})
    return pd.DataFrame(rows, columns=["rule", "file", "max_rss"])


def count_subjects(results: Path) -> tuple[int, int | None]:
    """(included subjects, of them in the train split) of ``results/cohort/participants.tsv``; (0, None) if
    the run has no participants table (a user cohort's run still has one)."""
    path = results / "cohort" / "participants.tsv"
    if not path.exists():
        return 0, None
    table = pd.read_csv(path, sep="\t")
    included = table[table["included"].astype(str).str.lower() == "true"]
    train = int((included["split"] == "train").sum()) if "split" in included else None
    return len(included), train


def scaling_table(small: pd.DataFrame, large: pd.DataFrame) -> pd.DataFrame:
    """Per rule present in either run: jobs, median and max ``max_rss`` in each, and max ratio large/small."""
    def summary(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.groupby("rule")["max_rss"].agg(jobs="size", median="median", max="max")

    table = summary(small).join(summary(large), how="outer", lsuffix="_small", rsuffix="_large")
    table["ratio"] = table["max_large"] / table["max_small"]
    return table.reset_index()


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(table: pd.DataFrame, subjects: Sequence[tuple[int, int | None]], grow: float) -> str:
    """The table as Markdown, with a line on the subjects of each run and the rules over ``grow``."""
    (n_small, t_small), (n_large, t_large) = subjects
    ratio = n_large / n_small if n_small else float("nan")
    lines = [f"Subjects: {n_small} (train {t_small}) vs {n_large} (train {t_large}); ratio {_fmt(ratio, 2)}.", "",
             f"Columns 2-4: the {n_small}-subject run; 5-7: the {n_large}-subject run.", "",
             "| rule | jobs | median max_rss (MiB) | max max_rss (MiB) | jobs | median max_rss (MiB) | "
             "max max_rss (MiB) | ratio of max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table.itertuples(index=False):
        flag = " **grows**" if row.ratio > grow else ""
        lines.append(f"| {row.rule} | {_fmt(row.jobs_small)} | {_fmt(row.median_small)} | {_fmt(row.max_small)} | "
                     f"{_fmt(row.jobs_large)} | {_fmt(row.median_large)} | {_fmt(row.max_large)} | "
                     f"{_fmt(row.ratio, 2)}{flag} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("small", type=Path, help="results folder of the run with fewer subjects")
    parser.add_argument("large", type=Path, help="results folder of the run with more subjects")
    parser.add_argument("--rules", default="", help="comma-separated rules to show (default: all)")
    parser.add_argument("--grow", type=float, default=1.5, help="mark rules whose max_rss ratio exceeds this")
    args = parser.parse_args(argv)
    frames = []
    for results in (args.small, args.large):
        if not results.is_dir():
            parser.error(f"{results}: not a folder")
        frame = read_benchmarks(results)
        if frame.empty:
            parser.error(f"{results}: no Snakemake benchmark files (*/{BENCHMARKS}/**/*.tsv) under it")
        frames.append(frame)
    table = scaling_table(*frames)
    if args.rules:
        table = table[table["rule"].isin(args.rules.split(","))]
    text = markdown(table, [count_subjects(args.small), count_subjects(args.large)], args.grow)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
