"""The CBCL filter, the table readers (ABCD csv, NDA two-header txt, mapped HCP-D names), BIDS discovery, splits."""

import re

import numpy as np
import pandas as pd
import pytest

from spatial_msma.cohort import (
    CBCL_SCORES,
    CBCL_SUMMARIES,
    CBCL_SYNDROMES,
    SplitFractions,
    build_participants,
    cbcl_exclusion,
    find_scans,
    is_outlier,
    normalise_id,
    read_cbcl,
    split_subjects,
)
from spatial_msma.io import InputError, write_nifti


def _scores(value=50.0, **over):
    row = dict.fromkeys(CBCL_SCORES, value)
    row.update(over)
    return row


def _abcd_table(rows):
    records = []
    for guid, scores in rows:
        records.append({"src_subject_id": guid, "eventname": "baseline_year_1_arm_1", **scores})
        records.append({"src_subject_id": guid, "eventname": "2_year_follow_up_y_arm_1", **_scores(90.0)})
    return pd.DataFrame(records)


def test_filter_removes_exactly_the_subjects_above_66():
    table_rows = {
        "A": _scores(),
        "B": _scores(66.0),  # at the cut-off: kept (the rule is "> 66")
        "C": _scores(**{CBCL_SYNDROMES[4]: 67.0}),  # one syndrome above
        "D": _scores(**{CBCL_SUMMARIES[2]: 66.5}),  # a summary just above
        "E": _scores(60.0, **{CBCL_SYNDROMES[0]: 66.0, CBCL_SUMMARIES[0]: 30.0}),
    }
    verdict = {k: cbcl_exclusion(pd.Series(v), 66) for k, v in table_rows.items()}
    assert [k for k, reason in verdict.items() if reason] == ["C", "D"]
    assert "cbcl_scr_syn_thought_t=67" in verdict["C"]


def test_missing_score_excludes_with_reason():
    reason = cbcl_exclusion(pd.Series(_scores(**{CBCL_SUMMARIES[1]: np.nan})), 66)
    assert reason == f"missing CBCL score(s): {CBCL_SUMMARIES[1]}"


def test_outlier_rule_of_the_authors_code():
    assert is_outlier(pd.Series(_scores(**{CBCL_SUMMARIES[0]: 71.0})))
    assert is_outlier(pd.Series(_scores(**{CBCL_SYNDROMES[0]: 71.0, CBCL_SYNDROMES[1]: 75.0})))
    assert not is_outlier(pd.Series(_scores(**{CBCL_SYNDROMES[0]: 80.0})))


def test_abcd_csv_uses_the_baseline_event(tmp_path):
    path = tmp_path / "mh_p_cbcl.csv"
    _abcd_table([("NDAR_INV001", _scores()), ("NDAR_INV002", _scores(55.0))]).to_csv(path, index=False)
    table = read_cbcl(path, event="baseline_year_1_arm_1")
    assert list(table.index) == ["NDARINV001", "NDARINV002"]
    assert table.loc["NDARINV002", CBCL_SCORES[0]] == 55.0
    with pytest.raises(InputError, match="several rows .*; set config cbcl.event to the event to use"):
        read_cbcl(path, event=None)


def test_duplicates_within_the_event_are_not_blamed_on_a_missing_event(tmp_path):
    """cbcl.event is set and the duplicates are rows of that event: telling the user to set it misleads."""
    path = tmp_path / "mh_p_cbcl.csv"
    table = _abcd_table([("NDAR_INV001", _scores()), ("NDAR_INV002", _scores())])
    pd.concat([table, table.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"1 subject\(s\) have several rows \(e.g. \['NDARINV001'\]\) within event "
                                         r"'baseline_year_1_arm_1' \(config cbcl.event\): the table must have one row "
                                         r"per subject and event"):
        read_cbcl(path, event="baseline_year_1_arm_1")


def test_nda_text_export_with_description_row(tmp_path):
    path = tmp_path / "abcd_cbcls01.txt"
    frame = _abcd_table([("NDAR_INV001", _scores(52.0))])
    description = pd.DataFrame([dict.fromkeys(frame.columns, "A description of this column")])
    description["src_subject_id"] = "The NDAR Global Unique Identifier (GUID) for research subject"
    pd.concat([description, frame]).to_csv(path, sep="\t", index=False)
    table = read_cbcl(path, event="baseline_year_1_arm_1")
    assert list(table.index) == ["NDARINV001"]
    assert table[list(CBCL_SCORES)].to_numpy().tolist() == [[52.0] * len(CBCL_SCORES)]


def test_hcpd_names_through_the_column_map(tmp_path):
    names = {c: c.replace("cbcl_scr_syn_", "cbcl_") for c in CBCL_SCORES}
    frame = pd.DataFrame([{"subjectkey": "HCD0001", **{names[c]: 50.0 for c in CBCL_SCORES}}])
    frame.loc[0, names[CBCL_SYNDROMES[2]]] = 70.0
    path = tmp_path / "cbcl01.txt"
    frame.to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"missing column\(s\) \['src_subject_id'"):
        read_cbcl(path)
    table = read_cbcl(path, columns={"src_subject_id": "subjectkey", **names})
    assert cbcl_exclusion(table.loc["HCD0001"], 66).startswith("CBCL t-score > 66")


def test_missing_score_columns_are_named(tmp_path):
    path = tmp_path / "mh_p_cbcl.csv"
    _abcd_table([("NDAR_INV001", _scores())]).drop(columns=[CBCL_SYNDROMES[3]]).to_csv(path, index=False)
    with pytest.raises(InputError, match=CBCL_SYNDROMES[3]):
        read_cbcl(path, event="baseline_year_1_arm_1")


def test_ids_match_across_spellings():
    assert normalise_id("NDAR_INVABC123") == normalise_id("sub-NDARINVABC123") == "NDARINVABC123"


def test_split_fractions_must_add_up_to_one():
    with pytest.raises(InputError, match=re.escape("config split: train + val + test must be 1, got 0.8 + 0.1 + 0.2 "
                                                   "= 1.1")):
        SplitFractions(0.8, 0.1, 0.2)
    with pytest.raises(InputError, match=re.escape("config split.val: must be in [0, 1], got -0.1")):
        SplitFractions(1.0, -0.1, 0.1)


def test_split_is_seeded_disjoint_and_80_10_10():
    subjects = [f"sub-{i:03d}" for i in range(50)]
    first = split_subjects(subjects, SplitFractions(), seed=3)
    assert first == split_subjects(list(reversed(subjects)), SplitFractions(), seed=3)
    assert {k: len(v) for k, v in first.items()} == {"train": 40, "val": 5, "test": 5}
    assert sorted(sum(first.values(), [])) == subjects
    assert split_subjects(subjects, SplitFractions(), seed=4) != first


def test_build_participants_end_to_end(tmp_path):
    """Four subjects on disk: healthy, high CBCL, missing T2w, no CBCL row; the reasons are specific."""
    rng = np.random.default_rng(0)
    bids = tmp_path / "bids"
    for label in ("NDARINV01", "NDARINV02", "NDARINV03", "NDARINV04", "NDARINV05", "NDARINV06", "NDARINV07"):
        anat = bids / f"sub-{label}" / "ses-baselineYear1Arm1" / "anat"
        write_nifti(rng.random((6, 6, 6)), np.eye(4), anat / f"sub-{label}_ses-baselineYear1Arm1_T1w.nii.gz")
        if label != "NDARINV03":
            write_nifti(rng.random((6, 6, 6)), np.eye(4), anat / f"sub-{label}_ses-baselineYear1Arm1_T2w.nii.gz")
    rows = [(f"NDAR_INV0{i}", _scores()) for i in (1, 3, 5, 6, 7)]
    rows.append(("NDAR_INV02", _scores(**{CBCL_SUMMARIES[2]: 80.0})))
    _abcd_table(rows).to_csv(tmp_path / "cbcl.csv", index=False)
    scans = find_scans(bids)
    assert scans["sub-NDARINV03"]["T2w"] is None and scans["sub-NDARINV01"]["T1w"].name.endswith("_T1w.nii.gz")
    table, splits = build_participants(
        bids, tmp_path / "cbcl.csv", columns=None, event="baseline_year_1_arm_1", session=None, max_t=66,
        fractions=SplitFractions(0.6, 0.2, 0.2), seed=1,
    )
    reason = table.set_index("participant_id")["reason"]
    assert reason["sub-NDARINV02"].startswith("CBCL t-score > 66")
    assert reason["sub-NDARINV03"] == "missing T2w"
    assert reason["sub-NDARINV04"] == "no CBCL row for event baseline_year_1_arm_1"
    included = table.loc[table.included, "participant_id"].tolist()
    assert included == ["sub-NDARINV01", "sub-NDARINV05", "sub-NDARINV06", "sub-NDARINV07"]
    assert sorted(sum(splits.values(), [])) == included
    assert set(table.loc[~table.included, "split"]) == {""}


def test_split_keeps_whole_anatomies_in_one_split():
    """Several anatomies: no anatomy of a test or validation subject is in training; sizes near the fractions."""
    subjects = [f"sub-{i:03d}" for i in range(57)]
    anatomy = {s: f"seg{i % 20:02d}" for i, s in enumerate(subjects)}
    splits = split_subjects(subjects, SplitFractions(0.7, 0.1, 0.2), seed=3, groups=anatomy)
    assert splits == split_subjects(list(reversed(subjects)), SplitFractions(0.7, 0.1, 0.2), seed=3, groups=anatomy)
    assert sorted(sum(splits.values(), [])) == subjects
    used = {name: {anatomy[s] for s in members} for name, members in splits.items()}
    assert not used["test"] & used["train"] and not used["val"] & used["train"] and not used["test"] & used["val"]
    assert abs(len(splits["test"]) - 11) <= 2 and abs(len(splits["val"]) - 6) <= 2, splits
    assert split_subjects(subjects, SplitFractions(0.7, 0.1, 0.2), seed=4, groups=anatomy) != splits
    with pytest.raises(InputError, match="only 2 anatomies"):
        split_subjects(subjects, SplitFractions(), seed=3, groups={s: f"a{i % 2}" for i, s in enumerate(subjects)})


def test_split_with_one_anatomy_is_the_plain_split():
    """The MNI-template cohort names one anatomy (mni152) for all: its split is exactly the subject split."""
    subjects = [f"sub-{i:03d}" for i in range(50)]
    plain = split_subjects(subjects, SplitFractions(), seed=3)
    assert split_subjects(subjects, SplitFractions(), seed=3, groups=dict.fromkeys(subjects, "mni152")) == plain


def test_build_participants_reads_anatomies_and_label_maps(tmp_path):
    """participants.tsv's anatomy column is carried and splits by anatomy; label maps under
    derivatives/synthetic-labels are found (and are no scans)."""
    rng = np.random.default_rng(0)
    bids = tmp_path / "bids"
    labels = [f"NDARINV{i:02d}" for i in range(12)]
    for i, label in enumerate(labels):
        anat = bids / f"sub-{label}" / "ses-1" / "anat"
        for modality in ("T1w", "T2w"):
            write_nifti(rng.random((6, 6, 6)), np.eye(4), anat / f"sub-{label}_ses-1_{modality}.nii.gz")
        if i < 10:
            dseg = bids / "derivatives" / "synthetic-labels" / f"sub-{label}" / "ses-1" / "anat"
            write_nifti(np.ones((6, 6, 6)), np.eye(4), dseg / f"sub-{label}_ses-1_dseg.nii.gz")
    anatomies = pd.DataFrame({"participant_id": [f"sub-{s}" for s in labels],
                              "anatomy": [f"seg{i % 4}" for i in range(12)]})
    anatomies.to_csv(bids / "participants.tsv", sep="\t", index=False)
    _abcd_table([(f"NDAR_INV{i:02d}", _scores()) for i in range(12)]).to_csv(tmp_path / "cbcl.csv", index=False)
    table, splits = build_participants(
        bids, tmp_path / "cbcl.csv", columns=None, event="baseline_year_1_arm_1", session=None, max_t=66,
        fractions=SplitFractions(0.5, 0.25, 0.25), seed=1,
    )
    table = table.set_index("participant_id")
    assert table.anatomy.tolist() == [f"seg{i % 4}" for i in range(12)]
    assert table.labels.str.endswith("_dseg.nii.gz").sum() == 10 and table.labels.iloc[-1] == ""
    assert table.t1w.str.endswith("_T1w.nii.gz").all()
    for split in ("val", "test"):
        assert not set(table.loc[splits[split], "anatomy"]) & set(table.loc[splits["train"], "anatomy"])
