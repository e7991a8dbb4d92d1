"""Cohort selection: find each subject's T1w/T2w in a BIDS folder, read CBCL scores, apply the paper's filter, split.

The paper trains on typically developing children: a subject is dropped when ANY CBCL summary or syndrome
t-score exceeds 66 (about the 95th percentile). Everything that keeps a subject out (a high score, a missing
score, a missing or unreadable scan) is recorded with a reason in ``participants.tsv``; nothing is dropped
silently. ABCD 5.x ``mh_p_cbcl.csv`` (comma separated), NDA text exports such as ABCD 4.0 ``abcd_cbcls01.txt``
or HCP-D ``cbcl01.txt`` (tab separated, with a second header row of descriptions) are read; tables with other
column names (HCP-D) are mapped through the ``cbcl.columns`` config, never through code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io import InputError, check_number, load_nifti

CBCL_SYNDROMES = tuple(
    f"cbcl_scr_syn_{name}_t"
    for name in ("anxdep", "withdep", "somatic", "social", "thought", "attention", "rulebreak", "aggressive")
)
CBCL_SUMMARIES = tuple(f"cbcl_scr_syn_{name}_t" for name in ("internal", "external", "totprob"))
CBCL_SCORES = CBCL_SYNDROMES + CBCL_SUMMARIES
SUBJECT_COLUMN = "src_subject_id"
EVENT_COLUMN = "eventname"
MODALITIES = ("T1w", "T2w")
#: Where the built-in label-map cohort keeps each subject's label map (a BIDS derivative, outside ``sub-*/``).
LABELS_DERIVATIVE = "derivatives/synthetic-labels"


def normalise_id(raw: str) -> str:
    """Match ABCD GUIDs across spellings: ``NDAR_INV1234`` (tables) == ``sub-NDARINV1234`` (BIDS)."""
    text = re.sub(r"^sub-", "", str(raw).strip())
    return re.sub(r"[^0-9A-Za-z]", "", text).upper()


# --------------------------------------------------------------------------------------------- CBCL tables


def column_names(columns: Mapping[str, str] | None) -> dict[str, str]:
    """This project's (ABCD) column names -> the table's, after the ``cbcl.columns`` map; a key of the map
    that is not one of this project's names is an :class:`InputError` naming it."""
    names = {key: key for key in (SUBJECT_COLUMN, EVENT_COLUMN, *CBCL_SCORES)}
    unknown = sorted(set(columns or {}) - set(names))
    if unknown:
        raise InputError(f"config cbcl.columns: unknown key(s) {unknown}; keys are this project's ABCD column names")
    return {**names, **(columns or {})}


def read_cbcl(path: str | Path, columns: Mapping[str, str] | None = None, event: str | None = None) -> pd.DataFrame:
    """Read a CBCL table and return one row per subject: index = normalised id, columns = the 11 t-scores.

    ``columns`` maps this project's (ABCD) names -- ``src_subject_id``, ``eventname`` and the t-score names --
    to the names in the file, for tables that spell them differently. ``event`` keeps the rows of one
    event (ABCD baseline: ``baseline_year_1_arm_1``); ``None`` expects one row per subject.
    Non-numeric score entries (NDA exports write e.g. ``""``) become missing values.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"CBCL table {path}: file does not exist")
    sep = "\t" if path.suffix in (".txt", ".tsv") else ","
    try:
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"CBCL table {path}: cannot be parsed ({err})") from err
    names = column_names(columns)
    needed = [names[SUBJECT_COLUMN], *(names[c] for c in CBCL_SCORES)]
    if event is not None:
        needed.append(names[EVENT_COLUMN])
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise InputError(
            f"CBCL table {path}: missing column(s) {missing} (map your table's names to the expected ones "
            f"in config cbcl.columns)"
        )
    # NDA exports carry a second header row of descriptions: its "subject id" is a sentence, not an id.
    if len(raw) and not re.fullmatch(r"[A-Za-z0-9_\-]+", raw[names[SUBJECT_COLUMN]].iloc[0].strip()):
        raw = raw.iloc[1:]
    if event is not None:
        raw = raw[raw[names[EVENT_COLUMN]].str.strip() == event]
        if raw.empty:
            raise InputError(f"CBCL table {path}: no rows with {names[EVENT_COLUMN]} == {event!r} (config cbcl.event)")
    table = pd.DataFrame({c: pd.to_numeric(raw[names[c]].str.strip(), errors="coerce") for c in CBCL_SCORES})
    table.insert(0, "cbcl_id", raw[names[SUBJECT_COLUMN]].str.strip().to_numpy())
    table.index = [normalise_id(s) for s in table["cbcl_id"]]
    duplicated = table.index[table.index.duplicated()].unique().tolist()
    if duplicated:
        hint = (f" within event {event!r} (config cbcl.event): the table must have one row per subject and event"
                if event is not None else "; set config cbcl.event to the event to use")
        raise InputError(f"CBCL table {path}: {len(duplicated)} subject(s) have several rows "
                         f"(e.g. {duplicated[:3]}){hint}")
    return table


def cbcl_exclusion(scores: pd.Series, max_t: float) -> str:
    """The reason a subject fails the CBCL filter, or "" if it passes (paper: any score > max_t excludes)."""
    absent = [c for c in CBCL_SCORES if pd.isna(scores.get(c))]
    if absent:
        return "missing CBCL score(s): " + ", ".join(absent)
    high = [f"{c}={scores[c]:g}" for c in CBCL_SCORES if scores[c] > max_t]
    return f"CBCL t-score > {max_t:g}: " + ", ".join(high) if high else ""


def is_outlier(scores: pd.Series, cutoff: float = 70.0) -> bool:
    """The authors' code's stricter "outlier" label: any summary > 70, or two or more syndromes > 70."""
    summary = any(scores.get(c, np.nan) > cutoff for c in CBCL_SUMMARIES)
    syndromes = sum(scores.get(c, np.nan) > cutoff for c in CBCL_SYNDROMES)
    return bool(summary or syndromes >= 2)


# ------------------------------------------------------------------------------------------------- BIDS


def find_scans(bids_dir: str | Path, session: str | None = None) -> dict[str, dict[str, Path | None]]:
    """Map each ``sub-*`` folder to its T1w and T2w file (``None`` when absent).

    Looks in ``sub-<id>[/ses-<s>]/anat/`` for ``*_T1w.nii[.gz]`` / ``*_T2w.nii[.gz]``; with ``session`` set only
    that session counts. Several runs: the first in sorted order is used (ABCD's ``run-01``).
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise InputError(f"BIDS folder {root}: does not exist or is not a folder (config cohort.bids_dir)")
    found: dict[str, dict[str, Path | None]] = {}
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        anat_dirs = sorted(subject_dir.glob("anat")) + sorted(subject_dir.glob("ses-*/anat"))
        if session is not None:
            anat_dirs = [d for d in anat_dirs if d.parent.name == f"ses-{session}"]
        scans: dict[str, Path | None] = {}
        for modality in MODALITIES:
            files = sorted(
                f for d in anat_dirs for f in d.glob(f"*_{modality}.nii*") if f.name.endswith((".nii", ".nii.gz"))
            )
            scans[modality] = files[0] if files else None
        found[subject_dir.name] = scans
    if not found:
        raise InputError(f"BIDS folder {root}: no sub-* folders found")
    return found


def read_anatomies(bids_dir: str | Path) -> dict[str, str] | None:
    """``participant_id -> anatomy`` from the BIDS folder's ``participants.tsv`` when it has an ``anatomy``
    column (the built-in cohort writes one: which head each subject was made from), else ``None``."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if not {"participant_id", "anatomy"} <= set(table.columns):
        return None
    return dict(zip(table.participant_id, table.anatomy, strict=True))


def find_labels(bids_dir: str | Path, subjects: list[str], session: str | None = None) -> dict[str, Path]:
    """Each subject's label map in its scans' space (``derivatives/synthetic-labels/sub-*/[ses-*/]anat/
    *_dseg.nii.gz``, written by the built-in label-map cohort), for the subjects that have one."""
    root = Path(bids_dir) / LABELS_DERIVATIVE
    found = {}
    for subject in subjects:
        files = sorted(root.glob(f"{subject}/anat/*_dseg.nii*"))
        files += sorted(root.glob(f"{subject}/ses-*/anat/*_dseg.nii*"))
        if session is not None:
            files = [f for f in files if f.parent.parent.name == f"ses-{session}"]
        if files:
            found[subject] = files[0]
    return found


def image_problem(path: Path | None, modality: str, session: str | None = None) -> str:
    """Why a scan cannot be used ("" if it can): missing (in the configured session, if one is), unreadable or
    truncated, not 3D, NaNs, empty."""
    if path is None:
        return f"missing {modality}" + (f" in session ses-{session} (config cohort.session)" if session else "")
    try:
        img = load_nifti(path, ndim=3, what=modality)
    except InputError as err:
        return str(err)
    if not np.any(np.asarray(img.dataobj)):
        return f"{modality} {path}: image is all zeros"
    return ""


# ----------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class SplitFractions:
    """The ``split`` config section: the shares of train, val and test, which must add up to 1."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            check_number(getattr(self, name), f"split.{name}", 0, high=1)
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise InputError(f"config split: train + val + test must be 1, got {self.train:g} + {self.val:g} + "
                             f"{self.test:g} = {total:g}")


def split_subjects(subjects: list[str], fractions: SplitFractions, seed: int,
                   groups: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Seeded train/val/test split. Validation and test get ``round(n * fraction)`` (at least 1) subjects each.

    ``groups`` (subject -> anatomy): when the subjects come from more than one anatomy, whole anatomies are
    split (:func:`split_groups`), so no anatomy of a test or validation subject makes a training subject. One
    anatomy (the MNI-template cohort) or none (a BIDS cohort): subjects are split as they always were.
    """
    n = len(subjects)
    n_val = max(1, int(round(n * fractions.val)))
    n_test = max(1, int(round(n * fractions.test)))
    if groups is not None and len({groups[s] for s in subjects}) > 1:
        return split_groups(subjects, groups, n_val, n_test, seed)
    if n - n_val - n_test < 2:
        raise InputError(f"cohort: only {n} usable subjects; need at least {n_val + n_test + 2} to split")
    order = np.random.default_rng(seed).permutation(sorted(subjects)).tolist()
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def split_groups(subjects: list[str], groups: Mapping[str, str], n_val: int, n_test: int,
                 seed: int) -> dict[str, list[str]]:
    """Anatomy-disjoint split: the anatomies in a seeded order; test takes them one at a time while that brings
    its subject count closer to ``n_test`` (at least one anatomy), validation likewise towards ``n_val``,
    training the rest. Subject counts can differ from the targets by up to half an anatomy's subjects."""
    members: dict[str, list[str]] = {}
    for subject in sorted(subjects):
        members.setdefault(groups[subject], []).append(subject)
    if len(members) < 3:
        raise InputError(f"cohort: the usable subjects come from only {len(members)} anatomies; an "
                         "anatomy-disjoint train/val/test split needs at least 3")
    order = np.random.default_rng(seed).permutation(sorted(members)).tolist()

    def take(target: int) -> list[str]:
        chosen: list[str] = []
        count = 0
        while len(order) > 1 and (not chosen or abs(count + len(members[order[0]]) - target) < abs(count - target)):
            chosen.append(order.pop(0))
            count += len(members[chosen[-1]])
        return chosen

    test, val = take(n_test), take(n_val)
    train = order
    if not val or sum(len(members[a]) for a in train) < 2:
        raise InputError(f"cohort: {len(subjects)} usable subjects from {len(members)} anatomies are too few for an "
                         "anatomy-disjoint split with at least 2 training subjects")
    return {name: sorted(s for a in chosen for s in members[a])
            for name, chosen in (("test", test), ("val", val), ("train", train))}


# ------------------------------------------------------------------------------------------- the filter


def build_participants(
    bids_dir: str | Path,
    cbcl_path: str | Path,
    *,
    columns: Mapping[str, str] | None,
    event: str | None,
    session: str | None,
    max_t: float,
    fractions: SplitFractions,
    seed: int,
    threads: int = 1,
    logger: logging.Logger | None = None,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Apply the CBCL filter and the scan checks to every subject of the BIDS folder, then split the rest.

    Returns the participants table (every subject, its scores, included, reason, split) and the split lists.
    A cohort whose ``participants.tsv`` names each subject's ``anatomy`` (the built-in one) gets that column
    too, and is split by anatomy when there are several; subjects with a label map in
    ``derivatives/synthetic-labels`` get its path in a ``labels`` column (for the registration check).
    """
    logger = logger or logging.getLogger(__name__)
    scans = find_scans(bids_dir, session)
    anatomies = read_anatomies(bids_dir)
    labels = find_labels(bids_dir, list(scans), session)
    cbcl = read_cbcl(cbcl_path, columns, event)
    logger.info("%d subjects in %s; %d rows in the CBCL table", len(scans), bids_dir, len(cbcl))

    jobs = [(s, m, scans[s][m]) for s in scans for m in MODALITIES]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = dict(zip([(s, m) for s, m, _ in jobs],
                            pool.map(lambda j: image_problem(j[2], j[1], session), jobs), strict=True))

    rows = []
    for subject, files in scans.items():
        key = normalise_id(subject)
        scores = cbcl.loc[key] if key in cbcl.index else None
        reasons = []
        if scores is None:
            reasons.append("no CBCL row" + (f" for event {event}" if event else ""))
        else:
            reasons.append(cbcl_exclusion(scores, max_t))
        reasons += [problems[(subject, m)] for m in MODALITIES]
        reason = "; ".join(r for r in reasons if r)
        row = {"participant_id": subject, "cbcl_id": None if scores is None else scores["cbcl_id"]}
        row.update({c: (np.nan if scores is None else scores[c]) for c in CBCL_SCORES})
        row.update({
            "max_t": np.nan if scores is None else float(np.nanmax(scores[list(CBCL_SCORES)].to_numpy(float))),
            "cbcl_outlier": False if scores is None else is_outlier(scores),
            "t1w": "" if files["T1w"] is None else str(files["T1w"]),
            "t2w": "" if files["T2w"] is None else str(files["T2w"]),
            "included": not reason,
            "reason": reason,
        })
        if anatomies is not None:
            row["anatomy"] = anatomies.get(subject, "")
        if labels:
            row["labels"] = str(labels[subject]) if subject in labels else ""
        rows.append(row)
    participants = pd.DataFrame(rows)
    if anatomies is not None and (participants.anatomy == "").any():
        missing = participants.participant_id[participants.anatomy == ""].tolist()
        raise InputError(f"{bids_dir}/participants.tsv: no anatomy for {len(missing)} subject(s), e.g. {missing[:3]}")
    excluded = participants[~participants.included]
    for _, row in excluded.iterrows():
        logger.info("excluded %s: %s", row.participant_id, row.reason)
    try:
        splits = split_subjects(participants.loc[participants.included, "participant_id"].tolist(), fractions, seed,
                                groups=anatomies)
    except InputError as err:
        if excluded.empty:
            raise
        reason, count = next(iter(excluded.reason.value_counts().items()))
        raise InputError(f"{err}. {len(excluded)} of {len(participants)} subjects were excluded, the most often "
                         f"({count}) for: {reason} (each subject's reason is in this rule's log)") from err
    split_of = {s: name for name, members in splits.items() for s in members}
    participants["split"] = [split_of.get(s, "") for s in participants.participant_id]
    logger.info("included %d of %d; split %s", int(participants.included.sum()), len(participants),
                {k: len(v) for k, v in splits.items()})
    if anatomies is not None:
        by_split = participants[participants.included].groupby("split")["anatomy"].nunique().to_dict()
        logger.info("anatomies per split: %s", by_split)
    return participants, splits
