# Shared helpers: where inputs come from, and which subjects each split holds (known after filter_cohort).
from pathlib import Path

import pandas as pd

PACKAGE = Path(workflow.basedir) / "src" / "spatial_msma"
SYNTHETIC_BIDS = "resources/synthetic/bids"


def package_code(*modules):
    """The package modules a rule runs, declared as inputs: editing one reruns that rule and what follows."""
    return [str(PACKAGE / module) for module in modules]


def cohort_inputs(wildcards=None):
    """The BIDS folder and CBCL table: the built-in cohort's, or the user's (config cohort.*)."""
    if config["cohort"]["source"] == "synthetic":
        return {"bids": SYNTHETIC_BIDS}
    missing = [key for key in ("bids_dir", "cbcl_table") if not config["cohort"].get(key)]
    if missing:
        raise ValueError(f"config cohort.{missing[0]}: required when cohort.source is 'bids'")
    return {"bids": config["cohort"]["bids_dir"], "cbcl": config["cohort"]["cbcl_table"]}


def cbcl_table_path():
    if config["cohort"]["source"] == "synthetic":
        return f"{SYNTHETIC_BIDS}/phenotype/mh_p_cbcl.csv"
    return config["cohort"]["cbcl_table"]


def split_members(split):
    """Subjects of a split, read from the checkpoint's split file (re-evaluated once it exists)."""
    path = checkpoints.filter_cohort.get().output[split]
    return Path(path).read_text().split()


def included_subjects():
    return sorted(split_members("train") + split_members("val") + split_members("test"))


def subject_scans(wildcards):
    """The T1w and T2w paths of one subject, as recorded in participants.tsv."""
    table = pd.read_csv(checkpoints.filter_cohort.get().output.participants, sep="\t", dtype=str)
    row = table.set_index("participant_id").loc[wildcards.subject]
    return {"t1w": row["t1w"], "t2w": row["t2w"]}
