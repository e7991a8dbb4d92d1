"""Paired statistics for Table 1: every method against every other, volume by volume, with subject-level inference.

Table 1's mean ± SE per method says nothing about whether two methods differ: their volumes are the SAME
lesioned scans, so the comparison is paired. Every ordered pair of methods is compared on the volumes both
have a finite value for (a method that predicted nothing on a volume has undefined distances there; that
volume drops out of that pair only).

A subject can carry several independent lesion draws (``volume`` ids such as ``sub-01_draw-1``). Draws of
one subject share its anatomy, so they are not independent: the independent unit is the SUBJECT. Hence the
95 % interval of the mean difference is a cluster bootstrap that resamples subjects with replacement (a drawn
subject brings all its volumes), and the Wilcoxon signed-rank test runs on the per-subject mean differences.
Resampling volumes instead would treat five draws of one subject as five subjects and shrink the interval.
Where several subjects are made from one anatomy (the label-map cohort), the anatomy is the unit instead
(:func:`~spatial_msma.evaluation.tables.independent_units`): the column ``n_subjects`` then counts anatomies
and ``unit`` says so.

Reproducible and fast: every comparison over S subjects uses the same resamples, drawn once from
``numpy.random.default_rng([seed, S])`` (:func:`resample_weights`), so the same seed gives the same bytes, a
pair's interval does not depend on which other methods were evaluated, and the whole table (10 methods x 9
metrics x 3 protocols x 2000 resamples) is a few matrix-vector products per comparison.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata, wilcoxon

from spatial_msma.evaluation.figures import plot_paired_differences
from spatial_msma.evaluation.tables import by_unit, independent_units, read_metric_csvs, unit_name
from spatial_msma.io import InputError, check_number, write_table
from spatial_msma.methods import display_name, method_order

PathLike = str | os.PathLike

#: The per-volume metrics compared, in Table-1 order.
METRICS = ("hd99", "msd", "tpr", "ppv", "dice", "best_dice", "auroc", "auprc", "contrast")
#: Metrics where a smaller value is better (surface distances); every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"hd99", "msd"})
#: The method every other is compared against in the figure.
REFERENCE = "spatial_msma"
N_BOOT = 2000
#: Up to this many subjects, scipy's Wilcoxon test with ties or zeros is an exact test over all sign flips.
EXACT_SIGN_FLIP_MAX = 13
CONFIDENCE = 0.95
#: A difference is significant when its interval excludes 0 AND the Wilcoxon p is below this. With few
#: independent units (a label-map test split holds 5-6 anatomies) a percentile bootstrap over so few clusters
#: is too narrow (3 anatomies give intervals that exclude 0 at an exact Wilcoxon p of 0.25); the exact test
#: is not.
ALPHA = 0.05
#: The columns of the stats table, in order.
STATS_COLUMNS = (
    "protocol", "metric", "direction", "method", "versus", "method_name", "versus_name",
    "n_volumes", "n_subjects", "mean_method", "mean_versus", "mean_diff", "ci_low", "ci_high",
    "p_wilcoxon", "better", "n_boot", "seed", "unit",
)
#: The columns of :func:`subject_differences`.
SUBJECT_DIFF_COLUMNS = ("protocol", "metric", "method", "versus", "subject", "n_volumes", "difference")


def direction(metric: str) -> str:
    """``lower`` for the surface distances (closer is better), ``higher`` for every other metric."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def protocol_order(protocols: Iterable[str]) -> list[str]:
    """``oracle`` first, then the FPR protocols by level (``fpr2.5`` before ``fpr05`` before ``fpr10``),
    then anything else alphabetically: the order Table 1 lists them in."""

    def key(name: str) -> tuple[int, float, str]:
        if name == "oracle":
            return 0, 0.0, name
        if name.startswith("fpr"):
            try:
                return 1, float(name[3:]), name
            except ValueError:
                pass
        return 2, 0.0, name

    return sorted(set(protocols), key=key)


def with_volumes(per_volume: pd.DataFrame) -> pd.DataFrame:
    """A copy of the per-volume table that surely has a ``volume`` column: without one (or where it is empty)
    every row is its own volume, named by its subject, so tables from before draws existed still pair up.
    A (protocol, method, subject, volume) listed twice is an :class:`InputError`: pairing would be ambiguous."""
    frame = per_volume.copy()
    if "volume" not in frame.columns:
        frame["volume"] = frame["subject"]
    else:
        frame["volume"] = frame["volume"].where(frame["volume"].notna(), frame["subject"])
    frame["subject"] = frame["subject"].astype(str)
    frame["volume"] = frame["volume"].astype(str)
    dup = frame.duplicated(["protocol", "method", "subject", "volume"], keep=False)
    if dup.any():
        first = frame.loc[dup, ["protocol", "method", "subject", "volume"]].iloc[0].to_dict()
        raise InputError(f"metrics: volume listed more than once ({int(dup.sum())} rows), e.g. {first}")
    return frame


def resample_weights(n_subjects: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each of ``n_subjects`` subjects is drawn in each of ``n_boot`` resamples, (n_boot, n_subjects).

    One index matrix from ``numpy.random.default_rng([seed, n_subjects])``: each row draws ``n_subjects``
    subjects with replacement. Every comparison over the same number of subjects uses the same resamples
    (common random numbers): the same seed gives the same bytes, a pair's interval does not depend on which
    other methods, metrics or protocols were run, and the draw is made once per subject count rather than once
    per comparison, which is what makes the full table fast.
    """
    rng = np.random.default_rng([int(seed), int(n_subjects)])
    idx = rng.integers(0, n_subjects, size=(n_boot, n_subjects))
    rows = np.repeat(np.arange(n_boot), n_subjects)
    return np.bincount(rows * n_subjects + idx.ravel(), minlength=n_boot * n_subjects).reshape(
        n_boot, n_subjects).astype(float)


def subject_means(diffs: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted subject labels, the sum of ``diffs`` over each subject's volumes and its volume count."""
    labels, codes = np.unique(np.asarray(subjects), return_inverse=True)
    sums = np.bincount(codes, weights=np.asarray(diffs, dtype=float), minlength=labels.size)
    counts = np.bincount(codes, minlength=labels.size).astype(float)
    return labels, sums, counts


def cluster_bootstrap(diffs: np.ndarray, subjects: np.ndarray, n_boot: int, seed: int,
                      cache: dict[tuple[int, int, int], np.ndarray] | None = None) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean of ``diffs`` over volumes, resampling SUBJECTS.

    Each replicate draws as many subjects as there are, with replacement (:func:`resample_weights`, subjects
    in sorted label order); a drawn subject brings all its volumes, so the replicate is (sum of the drawn
    subjects' differences) / (their number of volumes): the same volume mean as the estimate. Duplicating
    every volume of every subject leaves the replicates unchanged, as it should (a volume-level bootstrap
    would narrow). ``cache`` (the caller's dict) keeps the weights per (seed, subjects, resamples) across calls.
    Empty input gives an empty array.
    """
    _, sums, counts = subject_means(diffs, subjects)
    if sums.size == 0:
        return np.empty(0)
    key = (int(seed), int(sums.size), int(n_boot))
    weights = cache.get(key) if cache is not None else None
    if weights is None:
        weights = resample_weights(sums.size, n_boot, seed)
        if cache is not None:
            cache[key] = weights
    return (weights @ sums) / (weights @ counts)


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaNs when there are none)."""
    if replicates.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided exact p of the signed-rank statistic over all 2^n sign flips of ``diffs`` (zeros dropped,
    tied ranks averaged): the test scipy's ``wilcoxon`` runs as a permutation test for n <= 13 with ties
    or zeros, computed here as one matrix product instead of ~0.5 s of Python per call. Ties are the rule,
    not the exception, for per-subject means of TPR or PPV over a few draws."""
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return float("nan")
    ranks = rankdata(np.abs(d))
    flips = (np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1
    null = flips @ ranks
    observed = float(ranks[d > 0].sum())
    gamma = abs(observed) * 100 * np.finfo(float).eps  # scipy's tolerance for equal statistics
    less, greater = np.mean(null <= observed + gamma), np.mean(null >= observed - gamma)
    return float(min(1.0, 2.0 * min(less, greater)))


def wilcoxon_p(subject_diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of per-subject mean differences (``scipy.stats.wilcoxon``, its
    default zero handling: zeros dropped).

    NaN, not an error, when there are fewer than 2 subjects or every difference is 0: the test is undefined
    there, and one degenerate pair must not stop the whole table. For at most 13 subjects with ties or zeros,
    where scipy enumerates every sign flip in slow Python, the same exact p comes from :func:`sign_flip_p`.
    """
    d = np.asarray(subject_diffs, dtype=float)
    if d.size < 2 or not np.any(d != 0):
        return float("nan")
    nonzero = np.abs(d[d != 0])
    if d.size <= EXACT_SIGN_FLIP_MAX and (nonzero.size < d.size or np.unique(nonzero).size < nonzero.size):
        return sign_flip_p(d)
    return float(wilcoxon(d).pvalue)


def better_side(low: float, high: float, metric: str, p: float | None = None) -> str:
    """Which side the interval of (method - versus) favours: ``method``, ``versus`` or ``none``.

    ``none`` when the interval contains 0 or is undefined, or when a Wilcoxon ``p`` is given and is not below
    :data:`ALPHA` (NaN included). A positive difference favours the method for a higher-is-better metric and
    the versus method for a lower-is-better one (hd99, msd)."""
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0.0 <= high:
        return "none"
    if p is not None and not p < ALPHA:
        return "none"
    method_higher = low > 0.0
    return "method" if method_higher == (direction(metric) == "higher") else "versus"


def _pair(a: np.ndarray, b: np.ndarray, subjects: np.ndarray, n_boot: int, seed: int,
          cache: dict[tuple[int, int, int], np.ndarray], confidence: float) -> dict:
    """Statistics of method ``a`` minus method ``b`` (aligned per-volume arrays) on their finite pairs."""
    ok = np.isfinite(a) & np.isfinite(b)
    diffs, subj = a[ok] - b[ok], subjects[ok]
    _, sums, counts = subject_means(diffs, subj)
    low, high = percentile_interval(cluster_bootstrap(diffs, subj, n_boot, seed, cache), confidence)
    nan = float("nan")
    return {
        "n_volumes": int(ok.sum()), "n_subjects": int(sums.size),
        "mean_method": float(a[ok].mean()) if ok.any() else nan,
        "mean_versus": float(b[ok].mean()) if ok.any() else nan,
        "mean_diff": float(diffs.mean()) if ok.any() else nan,
        "ci_low": low, "ci_high": high,
        "p_wilcoxon": wilcoxon_p(sums / counts) if sums.size else nan,
    }


def _mirror(row: dict) -> dict:
    """The (versus, method) statistics from the (method, versus) ones: same draws, negated difference."""
    return {**row, "mean_method": row["mean_versus"], "mean_versus": row["mean_method"],
            "mean_diff": -row["mean_diff"], "ci_low": -row["ci_high"], "ci_high": -row["ci_low"]}


def _protocol_arrays(frame: pd.DataFrame, metrics: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One protocol's per-volume values as (volumes, metrics, methods), the methods in Table-1 order and the
    subject of each volume. A volume a method lacks is NaN for it."""
    methods = method_order(frame["method"].unique())
    wide = frame.set_index(["subject", "volume", "method"])[list(metrics)].apply(pd.to_numeric, errors="coerce")
    wide = wide.unstack("method").sort_index()
    values = np.stack([wide[m].reindex(columns=methods).to_numpy(dtype=float) for m in metrics], axis=1)
    return values, methods, wide.index.get_level_values("subject").to_numpy()


def paired_stats(per_volume: pd.DataFrame, seed: int, n_boot: int = N_BOOT, metrics: Sequence[str] = METRICS,
                 confidence: float = CONFIDENCE, unit: str = "subject") -> pd.DataFrame:
    """Every ordered pair (method, versus) of distinct methods present on a protocol, for every metric.

    Columns :data:`STATS_COLUMNS`: the pair's finite volumes and subjects, each method's mean over them, the
    mean difference method - versus over volumes, its ``confidence`` cluster-bootstrap percentile interval
    (:func:`cluster_bootstrap`, ``n_boot`` resamples of subjects), the Wilcoxon p on per-subject mean
    differences (:func:`wilcoxon_p`; NaN below 2 subjects or when all differences are 0), ``better`` (which
    side the interval favours, :func:`better_side`) and ``direction``. A pair with no finite volume keeps
    its row with NaN statistics. Rows: protocols in :func:`protocol_order`, then metric, method and versus
    in Table-1 order.
    """
    missing = [c for c in ("protocol", "method", "subject", *metrics) if c not in per_volume.columns]
    if missing:
        raise InputError(f"paired stats: per-volume table lacks column(s) {missing}")
    check_number(seed, "seed", 0, integer=True)
    check_number(n_boot, "n_boot", 1, integer=True)
    frame = with_volumes(per_volume)
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    rows = []
    for protocol in protocol_order(frame["protocol"].unique()):
        values, methods, subjects = _protocol_arrays(frame[frame["protocol"] == protocol], metrics)
        for k, metric in enumerate(metrics):
            done: dict[tuple[str, str], dict] = {}
            for i, method in enumerate(methods):
                for j, versus in enumerate(methods):
                    if i == j:
                        continue
                    if (versus, method) in done:
                        stats = _mirror(done[(versus, method)])
                    else:
                        stats = _pair(values[:, k, i], values[:, k, j], subjects, n_boot, seed, cache,
                                      confidence)
                    done[(method, versus)] = stats
                    rows.append({
                        "protocol": protocol, "metric": metric, "direction": direction(metric),
                        "method": method, "versus": versus,
                        "method_name": display_name(method), "versus_name": display_name(versus),
                        **stats, "better": better_side(stats["ci_low"], stats["ci_high"], metric,
                                                       stats["p_wilcoxon"]),
                        "n_boot": int(n_boot), "seed": int(seed), "unit": unit,
                    })
    return pd.DataFrame(rows, columns=list(STATS_COLUMNS))


def subject_differences(per_volume: pd.DataFrame, versus: str = REFERENCE,
                        metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per-subject mean difference (method - ``versus``) over the subject's finite volume pairs, for every
    other method, protocol and metric: the independent units the Wilcoxon test sees and the figure plots.
    Columns :data:`SUBJECT_DIFF_COLUMNS`; empty when ``versus`` is absent."""
    frame = with_volumes(per_volume)
    rows = []
    for protocol in protocol_order(frame["protocol"].unique()):
        values, methods, subjects = _protocol_arrays(frame[frame["protocol"] == protocol], metrics)
        if versus not in methods:
            continue
        j = methods.index(versus)
        for k, metric in enumerate(metrics):
            for i, method in enumerate(methods):
                if i == j:
                    continue
                a, b = values[:, k, i], values[:, k, j]
                ok = np.isfinite(a) & np.isfinite(b)
                labels, sums, counts = subject_means(a[ok] - b[ok], subjects[ok])
                rows += [{"protocol": protocol, "metric": metric, "method": method, "versus": versus,
                          "subject": s, "n_volumes": int(c), "difference": float(t / c)}
                         for s, t, c in zip(labels, sums, counts, strict=True)]
    return pd.DataFrame(rows, columns=list(SUBJECT_DIFF_COLUMNS))


def best_methods(stats: pd.DataFrame) -> dict[tuple[str, str], str | None]:
    """Per (protocol, metric), the method significantly better than EVERY other method present, else None.

    "Significantly better" = its interval against that method excludes 0 in its favour and the Wilcoxon p is
    below :data:`ALPHA` (``better == 'method'``, :func:`better_side`). None means no significant winner: some
    pair is indistinguishable (or has no finite volume), or only one method is present (nothing to beat).
    At most one method can qualify.
    """
    out: dict[tuple[str, str], str | None] = {}
    for (protocol, metric), group in stats.groupby(["protocol", "metric"], sort=False):
        winners = [m for m, rows in group.groupby("method", sort=False) if (rows["better"] == "method").all()]
        out[(str(protocol), str(metric))] = str(winners[0]) if winners else None
    return out


def write_stats(
    metric_csvs: Sequence[PathLike],
    out_csv: PathLike,
    out_figure: PathLike,
    seed: int,
    n_boot: int = N_BOOT,
    logger: logging.Logger | None = None,
    reference: str = REFERENCE,
    participants: PathLike | None = None,
) -> pd.DataFrame:
    """Read the per-volume metric CSVs, write the paired stats table (``out_csv``) and the figure of every
    method's differences against ``reference`` (``out_figure``); returns the table. ``participants`` (the
    cohort's participants.tsv) decides the independent unit that is resampled: the anatomy where several
    subjects share one, else the subject.

    The reference missing from every protocol is an :class:`InputError`: the figure would be empty."""
    logger = logger or logging.getLogger("spatial_msma")
    units = independent_units(participants)
    per_volume = by_unit(read_metric_csvs(metric_csvs), units)
    if not len(per_volume):
        raise InputError("paired stats: no metric rows in the inputs")
    if reference not in set(per_volume["method"]):
        raise InputError(f"paired stats: reference method {reference!r} has no metrics among the inputs")
    stats = paired_stats(per_volume, seed=seed, n_boot=n_boot, unit=unit_name(units))
    write_table(stats, out_csv)
    plot_paired_differences(stats, subject_differences(per_volume, reference), out_figure, reference=reference)
    best_by_protocol: dict[str, list[str]] = {}
    for (protocol, metric), best in best_methods(stats).items():
        best_by_protocol.setdefault(protocol, []).append(f"{metric} {display_name(best) if best else '-'}")
    for protocol, entries in best_by_protocol.items():
        logger.info("paired stats %s, significantly best ('-': no significant winner): %s", protocol,
                    ", ".join(entries))
    logger.info("paired stats: %d comparisons, %d resamples of the %d %s units, seed %d -> %s, %s", len(stats),
                n_boot, per_volume["subject"].nunique(), unit_name(units), seed, Path(out_csv), Path(out_figure))
    return stats
