"""Paired statistics for Table 1 on hand-made per-volume tables with known answers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from spatial_msma.evaluation.stats import (
    METRICS,
    STATS_COLUMNS,
    best_methods,
    better_side,
    cluster_bootstrap,
    paired_stats,
    percentile_interval,
    protocol_order,
    resample_weights,
    subject_differences,
    wilcoxon_p,
    write_stats,
)
from spatial_msma.evaluation.tables import REQUIRED_COLUMNS
from spatial_msma.io import InputError

N_BOOT = 500


def per_volume(methods: dict[str, float], n_subjects: int = 12, draws: int = 2,
               protocols: tuple[str, ...] = ("oracle",), seed: int = 0) -> pd.DataFrame:
    """Every method's value = a shared per-volume base (subject effect + draw noise) + the method's shift."""
    rng = np.random.default_rng(seed)
    subject_effect = rng.normal(size=(n_subjects, len(METRICS)))
    base = {(s, d): 5.0 + subject_effect[s] + rng.normal(scale=0.5, size=len(METRICS))
            for s in range(n_subjects) for d in range(1, draws + 1)}
    rows = []
    for protocol in protocols:
        for method, shift in methods.items():
            for (s, d), values in base.items():
                rows.append({"protocol": protocol, "method": method, "subject": f"sub-{s:02d}",
                             "volume": f"sub-{s:02d}_draw-{d}",
                             **{m: float(v) + shift for m, v in zip(METRICS, values, strict=True)}})
    return pd.DataFrame(rows)


def row(stats: pd.DataFrame, method: str, versus: str, metric: str, protocol: str = "oracle") -> pd.Series:
    hit = stats[(stats["protocol"] == protocol) & (stats["metric"] == metric)
                & (stats["method"] == method) & (stats["versus"] == versus)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_identical_method_has_zero_interval_and_no_p():
    stats = paired_stats(per_volume({"spatial_msma": 0.0, "ae": 0.0}), seed=3, n_boot=N_BOOT)
    r = row(stats, "ae", "spatial_msma", "dice")
    assert (r["mean_diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
    assert np.isnan(r["p_wilcoxon"])
    assert r["better"] == "none"
    assert (r["n_volumes"], r["n_subjects"]) == (24, 12)


def test_constant_shift_is_found_and_direction_flips_better():
    stats = paired_stats(per_volume({"spatial_msma": 0.0, "ae": 1.0}), seed=3, n_boot=N_BOOT)
    for metric in METRICS:
        r = row(stats, "ae", "spatial_msma", metric)
        assert r["mean_diff"] == pytest.approx(1.0)
        assert r["ci_low"] == pytest.approx(1.0) and r["ci_high"] == pytest.approx(1.0)
        assert r["mean_method"] - r["mean_versus"] == pytest.approx(1.0)
        assert r["p_wilcoxon"] < 0.01  # 12 subjects, all differences positive: exact p = 2 / 2**12
    # higher-is-better: AE is 1 higher, so AE is better; the mirrored row says the same from the other side
    assert row(stats, "ae", "spatial_msma", "dice")["better"] == "method"
    assert row(stats, "spatial_msma", "ae", "dice")["better"] == "versus"
    # lower-is-better distances: AE's 1 voxel more is worse
    assert row(stats, "ae", "spatial_msma", "hd99")["better"] == "versus"
    assert row(stats, "ae", "spatial_msma", "hd99")["direction"] == "lower"
    assert row(stats, "spatial_msma", "ae", "msd")["better"] == "method"
    mirror = row(stats, "spatial_msma", "ae", "dice")
    assert mirror["mean_diff"] == pytest.approx(-1.0) and mirror["ci_high"] == pytest.approx(-1.0)


def test_better_side_rules():
    assert better_side(0.2, 0.5, "tpr") == "method"
    assert better_side(0.2, 0.5, "hd99") == "versus"
    assert better_side(-0.5, -0.2, "msd") == "method"
    assert better_side(-0.5, 0.2, "tpr") == "none"
    assert better_side(0.0, 0.3, "tpr") == "none"  # touching 0 is not excluding it
    assert better_side(float("nan"), float("nan"), "tpr") == "none"


def test_every_ordered_pair_every_metric_and_protocol():
    stats = paired_stats(per_volume({"spatial_msma": 0.0, "ae": 0.3, "zscore": -0.2},
                                    protocols=("fpr10", "oracle", "fpr05")), seed=1, n_boot=50)
    assert list(stats.columns) == list(STATS_COLUMNS)
    assert len(stats) == 3 * len(METRICS) * 3 * 2
    assert list(dict.fromkeys(stats["protocol"])) == ["oracle", "fpr05", "fpr10"]
    assert not (stats["method"] == stats["versus"]).any()
    assert protocol_order(["fpr10", "oracle", "fpr2.5", "fpr05"]) == ["oracle", "fpr2.5", "fpr05", "fpr10"]


def test_cluster_bootstrap_equals_bootstrap_of_subject_means_when_draws_are_identical():
    rng = np.random.default_rng(7)
    subject_diff = rng.normal(size=20)
    subjects = np.repeat([f"s{i:02d}" for i in range(20)], 3)  # 3 identical draws per subject
    volume_diffs = np.repeat(subject_diff, 3)
    boot_volumes = cluster_bootstrap(volume_diffs, subjects, 1000, seed=11)
    boot_subjects = cluster_bootstrap(subject_diff, np.unique(subjects), 1000, seed=11)
    np.testing.assert_allclose(boot_volumes, boot_subjects, rtol=0, atol=1e-12)
    # ... and that is the plain bootstrap of the subject means with the documented draws
    weights = resample_weights(20, 1000, seed=11)
    assert weights.shape == (1000, 20) and (weights.sum(axis=1) == 20).all()
    np.testing.assert_allclose(boot_subjects, weights @ subject_diff / 20, atol=1e-12)


def test_duplicated_volumes_do_not_narrow_the_interval():
    frame = per_volume({"spatial_msma": 0.0}, n_subjects=15, draws=2, seed=2)
    frame2 = frame.assign(method="ae")
    frame2["dice"] += np.random.default_rng(5).normal(scale=0.3, size=len(frame2)) + 0.1
    base = pd.concat([frame, frame2], ignore_index=True)
    copies = pd.concat([base.assign(volume=base["volume"] + f"_copy{k}") for k in range(5)], ignore_index=True)
    one = row(paired_stats(base, seed=4, n_boot=2000), "ae", "spatial_msma", "dice")
    five = row(paired_stats(copies, seed=4, n_boot=2000), "ae", "spatial_msma", "dice")
    assert five["n_volumes"] == 5 * one["n_volumes"] and five["n_subjects"] == one["n_subjects"] == 15
    assert five["ci_low"] == pytest.approx(one["ci_low"]) and five["ci_high"] == pytest.approx(one["ci_high"])
    assert five["p_wilcoxon"] == pytest.approx(one["p_wilcoxon"])
    # the naive volume-level bootstrap WOULD narrow by about sqrt(5): the check above can fail
    d = (copies[copies["method"] == "ae"]["dice"].to_numpy() - copies[copies["method"] == "spatial_msma"]["dice"]
         .to_numpy())
    naive = percentile_interval(cluster_bootstrap(d, np.arange(d.size), 2000, seed=4))
    assert naive[1] - naive[0] < 0.6 * (one["ci_high"] - one["ci_low"])


def test_nan_pairs_are_dropped():
    frame = per_volume({"spatial_msma": 0.0, "ae": 1.0}, n_subjects=6, draws=2)
    ae = frame["method"] == "ae"
    # AE predicted nothing on 3 volumes (distances NaN), Spatial-MSMA on another one; sub-05 loses both draws
    frame.loc[ae & frame["volume"].isin(["sub-00_draw-1", "sub-05_draw-1", "sub-05_draw-2"]), "hd99"] = np.nan
    frame.loc[~ae & (frame["volume"] == "sub-02_draw-2"), "hd99"] = np.nan
    stats = paired_stats(frame, seed=0, n_boot=N_BOOT)
    r = row(stats, "ae", "spatial_msma", "hd99")
    assert (r["n_volumes"], r["n_subjects"]) == (8, 5)
    assert r["mean_diff"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0)
    assert np.isfinite(r["mean_method"]) and np.isfinite(r["mean_versus"])
    assert row(stats, "ae", "spatial_msma", "msd")["n_volumes"] == 12  # other metrics keep every volume
    diffs = subject_differences(frame)
    hd = diffs[(diffs["metric"] == "hd99") & (diffs["method"] == "ae")]
    assert sorted(hd["subject"]) == [f"sub-0{i}" for i in range(5)]
    assert hd.set_index("subject")["n_volumes"].to_dict() == {"sub-00": 1, "sub-01": 2, "sub-02": 1, "sub-03": 2,
                                                              "sub-04": 2}


def test_pair_without_finite_volumes_keeps_a_nan_row():
    frame = per_volume({"spatial_msma": 0.0, "ae": 1.0}, n_subjects=3, draws=1)
    frame.loc[frame["method"] == "ae", "contrast"] = np.nan
    r = row(paired_stats(frame, seed=0, n_boot=N_BOOT), "ae", "spatial_msma", "contrast")
    assert r["n_volumes"] == 0 and np.isnan(r["mean_diff"]) and np.isnan(r["ci_low"]) and r["better"] == "none"


def test_without_volume_column_each_row_is_its_own_volume():
    frame = per_volume({"spatial_msma": 0.0, "ae": 0.5}, n_subjects=8, draws=1).drop(columns="volume")
    r = row(paired_stats(frame, seed=0, n_boot=N_BOOT), "ae", "spatial_msma", "tpr")
    assert (r["n_volumes"], r["n_subjects"]) == (8, 8)


def test_duplicate_volume_is_an_error():
    frame = per_volume({"spatial_msma": 0.0, "ae": 0.5}, n_subjects=3, draws=1)
    with pytest.raises(InputError, match="more than once"):
        paired_stats(pd.concat([frame, frame.iloc[:1]]), seed=0, n_boot=10)


def test_same_seed_same_frame_other_seed_other_interval():
    frame = per_volume({"spatial_msma": 0.0, "ae": 0.2, "inpaint": -0.1}, protocols=("oracle", "fpr05"))
    frame["dice"] += np.random.default_rng(9).normal(scale=0.4, size=len(frame))
    a = paired_stats(frame, seed=5, n_boot=N_BOOT)
    b = paired_stats(frame.sample(frac=1.0, random_state=1), seed=5, n_boot=N_BOOT)  # row order is irrelevant
    pd.testing.assert_frame_equal(a, b)
    assert a.to_csv(index=False) == b.to_csv(index=False)
    c = paired_stats(frame, seed=6, n_boot=N_BOOT)
    assert not np.allclose(a["ci_low"], c["ci_low"])
    # a pair's interval does not depend on which other methods were evaluated
    d = paired_stats(frame[frame["method"] != "inpaint"], seed=5, n_boot=N_BOOT)
    pd.testing.assert_series_equal(row(a, "ae", "spatial_msma", "dice"), row(d, "ae", "spatial_msma", "dice"),
                                   check_names=False)


def test_wilcoxon_p_edge_cases():
    assert np.isnan(wilcoxon_p(np.array([0.3])))
    assert np.isnan(wilcoxon_p(np.zeros(5)))
    assert wilcoxon_p(np.ones(10)) == pytest.approx(2 / 2**10)


def test_fast_exact_p_with_ties_equals_scipy():
    rng = np.random.default_rng(0)
    for _ in range(12):  # per-subject TPR differences over a few draws: ties and zeros everywhere
        d = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], size=int(rng.integers(3, 11)))
        if np.any(d):
            assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)
    d = rng.normal(size=30)  # untied: straight through scipy
    assert wilcoxon_p(d) == wilcoxon(d).pvalue


def test_best_marks_a_dominant_method_and_none_when_tied():
    frame = per_volume({"spatial_msma": 0.0, "ae": -1.0, "inpaint": -2.0}, protocols=("oracle", "fpr05"))
    # fpr05: AE equals Spatial-MSMA up to noise on dice, so nobody beats every other method there
    tie = (frame["protocol"] == "fpr05") & (frame["method"] == "ae")
    frame.loc[tie, "dice"] = frame.loc[(frame["protocol"] == "fpr05") & (frame["method"] == "spatial_msma"),
                                       "dice"].to_numpy() + np.random.default_rng(1).normal(scale=0.5, size=24)
    best = best_methods(paired_stats(frame, seed=2, n_boot=N_BOOT))
    assert best[("oracle", "dice")] == "spatial_msma"  # highest, by 1 and 2 on every volume
    assert best[("oracle", "hd99")] == "inpaint"  # lowest distance wins a lower-is-better metric
    assert best[("fpr05", "dice")] is None
    assert best[("fpr05", "tpr")] == "spatial_msma"
    assert set(best) == {(p, m) for p in ("oracle", "fpr05") for m in METRICS}


def test_best_is_none_when_methods_are_identical_or_alone():
    assert set(best_methods(paired_stats(per_volume({"spatial_msma": 0.0, "ae": 0.0}), 0, N_BOOT)).values()) \
        == {None}
    assert best_methods(paired_stats(per_volume({"spatial_msma": 0.0}), 0, N_BOOT)) == {}


def write_csvs(frame: pd.DataFrame, folder) -> list:
    """One ``{method}_{protocol}.csv`` per method and protocol, with every column the table reader requires."""
    paths = []
    for (method, protocol), part in frame.groupby(["method", "protocol"]):
        part = part.copy()
        for column in REQUIRED_COLUMNS:
            if column not in part.columns:
                part[column] = 0.0
        path = folder / f"{method}_{protocol}.csv"
        part.to_csv(path, index=False)
        paths.append(path)
    return paths


def test_write_stats_writes_csv_and_png(tmp_path):
    frame = per_volume({"spatial_msma": 0.0, "ae": 0.8, "inpaint": 0.1, "zscore": -0.5}, n_subjects=15, draws=2,
                       protocols=("oracle", "fpr05", "fpr10"))
    frame.loc[(frame["method"] == "ae") & (frame["volume"] == "sub-03_draw-2"), ["hd99", "msd"]] = np.nan
    paths = write_csvs(frame, tmp_path)
    out_csv, out_png = tmp_path / "out" / "table1_stats.csv", tmp_path / "out" / "table1_stats.png"
    stats = write_stats(paths, out_csv, out_png, seed=1, n_boot=N_BOOT, logger=logging.getLogger("test"))
    written = pd.read_csv(out_csv)
    assert list(written.columns) == list(STATS_COLUMNS)
    assert len(written) == len(stats) == 3 * len(METRICS) * 4 * 3
    np.testing.assert_allclose(written["ci_low"], stats["ci_low"], rtol=1e-12)
    with Image.open(out_png) as img:
        assert img.format == "PNG" and img.size[0] > 1000 and img.size[1] > 500
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporary behind
    with pytest.raises(InputError, match="reference"):
        write_stats([p for p in paths if "spatial_msma" not in p.name], out_csv, out_png, seed=1, n_boot=10)


def test_a_significant_interval_needs_a_significant_wilcoxon_too():
    assert better_side(0.2, 0.5, "tpr", p=0.01) == "method"
    assert better_side(0.2, 0.5, "tpr", p=0.25) == "none"  # 3 units: the exact test cannot go below 0.25
    assert better_side(0.2, 0.5, "tpr", p=float("nan")) == "none"


def test_subjects_of_one_anatomy_are_one_unit(tmp_path):
    """Three anatomies, three subjects each: the statistics resample 3 units, not 9, and cannot call a winner
    (the exact Wilcoxon p over 3 units is at least 0.25), while the same volumes as 9 subjects can."""
    frame = per_volume({"spatial_msma": 0.0, "ae": 1.0}, n_subjects=9, draws=2)
    paths = write_csvs(frame, tmp_path)
    participants = tmp_path / "participants.tsv"
    subjects = sorted(frame["subject"].unique())
    pd.DataFrame({"participant_id": subjects, "anatomy": [f"seg{i // 3}" for i in range(9)]}).to_csv(
        participants, sep="\t", index=False)
    as_subjects = write_stats(paths, tmp_path / "s.csv", tmp_path / "s.png", seed=1, n_boot=N_BOOT)
    as_anatomies = write_stats(paths, tmp_path / "a.csv", tmp_path / "a.png", seed=1, n_boot=N_BOOT,
                               participants=participants)
    row = {name: t[(t.metric == "tpr") & (t.method == "ae")].iloc[0]
           for name, t in (("subject", as_subjects), ("anatomy", as_anatomies))}
    assert (row["subject"].n_subjects, row["anatomy"].n_subjects) == (9, 3)
    assert (row["subject"].unit, row["anatomy"].unit) == ("subject", "anatomy")
    assert row["subject"].better == "method" and row["anatomy"].better == "none"
    assert row["anatomy"].p_wilcoxon >= 0.25
    assert row["subject"].mean_diff == pytest.approx(row["anatomy"].mean_diff)
    # one anatomy for everyone (the MNI-template cohort): every subject is its own unit
    pd.DataFrame({"participant_id": subjects, "anatomy": "mni152"}).to_csv(participants, sep="\t", index=False)
    single = write_stats(paths, tmp_path / "m.csv", tmp_path / "m.png", seed=1, n_boot=N_BOOT,
                         participants=participants)
    assert set(single["n_subjects"]) == {9} and set(single["unit"]) == {"subject"}
    # an evaluated subject the participants table does not place is an error, not a unit of its own
    pd.DataFrame({"participant_id": subjects[1:], "anatomy": "seg0"}).assign(
        anatomy=[f"seg{i % 2}" for i in range(8)]).to_csv(participants, sep="\t", index=False)
    with pytest.raises(InputError, match=subjects[0]):
        write_stats(paths, tmp_path / "x.csv", tmp_path / "x.png", seed=1, n_boot=10, participants=participants)
