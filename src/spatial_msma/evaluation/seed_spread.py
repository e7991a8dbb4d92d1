"""The seed-spread table: every Table-1 metric as mean and SD over training seeds.

One run's Table 1 is one draw of the learned models: a score network, flow or AE trained with another seed
on the same cohort, splits and lesions gives other weights and other numbers. The spread over seeds says
how much of a difference between two rows that alone can make; the paired statistics
(:mod:`spatial_msma.evaluation.stats`) say how much the test volumes can.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from spatial_msma.evaluation.tables import EXTRA, HEADERS, PRIMARY
from spatial_msma.io import InputError, write_table, write_text
from spatial_msma.methods import display_name, method_order

PathLike = str | os.PathLike
METRICS = (*PRIMARY, *EXTRA, "image_auroc")


def read_run_tables(tables: Mapping[int, Mapping[str, PathLike]]) -> pd.DataFrame:
    """Long frame (seed, protocol, method, metric, value) from each seed's Table-1 CSVs, one per protocol."""
    rows = []
    for seed, by_protocol in tables.items():
        for protocol, path in by_protocol.items():
            try:
                frame = pd.read_csv(path)
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
                raise InputError(f"seed-spread: Table 1 {path}: unreadable ({err})") from err
            for metric in METRICS:
                column = metric if metric == "image_auroc" else f"{metric}_mean"
                if column not in frame:
                    raise InputError(f"seed-spread: Table 1 {path} has no column {column}")
                rows += [{"seed": int(seed), "protocol": protocol, "method": m, "metric": metric, "value": float(v)}
                         for m, v in zip(frame["method"], frame[column], strict=True)]
    return pd.DataFrame(rows, columns=["seed", "protocol", "method", "metric", "value"])


def seed_spread(values: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, method, metric): mean and SD (ddof 1) over seeds of the run-level value, the seeds' count,
    min and max, and each seed's value."""
    rows = []
    for (protocol, method, metric), group in values.groupby(["protocol", "method", "metric"], sort=False):
        v = group.sort_values("seed")["value"].to_numpy(dtype=float)
        finite = v[np.isfinite(v)]
        rows.append({
            "protocol": protocol, "method": method, "name": display_name(method), "metric": metric,
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "min": float(finite.min()) if finite.size else float("nan"),
            "max": float(finite.max()) if finite.size else float("nan"),
            "n_seeds": int(finite.size),
            "seeds": ";".join(str(s) for s in sorted(group["seed"])),
            "values": ";".join(f"{x:.6g}" for x in v),
        })
    return pd.DataFrame(rows)


def spread_markdown(spread: pd.DataFrame, seeds: Sequence[int]) -> str:
    """One Markdown table per protocol: method x metric, ``mean ± SD over seeds``."""
    lines = ["# Table 1 over training seeds", "",
             f"Training seeds {', '.join(str(s) for s in seeds)}: the score network, the flows and the AE retrained, "
             "the samplers redrawn, on the same cohort, splits, lesions and test volumes. Each cell: mean ± SD "
             "over seeds of the run's Table-1 value (itself a mean over the test volumes). A difference between "
             "two rows smaller than these SDs can come from the training draw alone.", ""]
    metrics = [m for m in METRICS if m in set(spread["metric"])]
    for protocol in dict.fromkeys(spread["protocol"]):
        sub = spread[spread["protocol"] == protocol].set_index(["method", "metric"])
        header = ["method", *[HEADERS.get(m, "image AUROC") for m in metrics]]
        lines += [f"## Protocol {protocol}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in method_order(sub.index.get_level_values("method").unique()):
            cells = [display_name(method)]
            for m in metrics:
                r = sub.loc[(method, m)]
                cells.append("n/a" if not np.isfinite(r["mean"]) else
                             f"{r['mean']:.3f} ± {r['sd']:.3f}" if np.isfinite(r["sd"]) else f"{r['mean']:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_seed_spread(tables: Mapping[int, Mapping[str, PathLike]], out_csv: PathLike, out_md: PathLike,
                      logger: logging.Logger | None = None) -> pd.DataFrame:
    """Read each seed's Table-1 CSVs (``{seed: {protocol: path}}``), write the spread CSV and its Markdown twin."""
    logger = logger or logging.getLogger("spatial_msma")
    if len(tables) < 2:
        raise InputError(f"seed-spread: needs at least 2 training seeds, got {sorted(tables)}")
    spread = seed_spread(read_run_tables(tables))
    write_table(spread, out_csv)
    write_text(spread_markdown(spread, sorted(tables)), out_md)
    logger.info("seed spread over seeds %s: %d rows -> %s", sorted(tables), len(spread), out_csv)
    return spread
