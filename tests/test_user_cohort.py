"""A user's own BIDS cohort through the real workflow: Snakemake runs the cohort filter on small scans this
module writes (six subjects, 6^3 voxels), as a user would, to check what the user sees.

A replaced scan reruns the filter; a job's error lands in the rule's log with every subject's reason; files
are written as the umask says.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatial_msma.cohort import CBCL_SCORES
from spatial_msma.io import write_nifti

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "config" / "tiny.yaml"
SUBJECTS = [f"NDARINV0{i}" for i in range(1, 7)]
EMPTY_SCAN_SUBJECT = "sub-NDARINV06"  # its T1w is all zeros: excluded until the scan is replaced
TARGET = "results/cohort/participants.tsv"


def _write_scan(path, value):
    data = np.full((6, 6, 6), value, dtype=np.float32)
    data[2:4, 2:4, 2:4] *= 2  # not constant
    write_nifti(data, np.eye(4), path)


def _cohort(root):
    """A BIDS folder (session ses-1 for all, ses-2 for the first subject only), an ABCD CBCL table and a config
    that points at them; returns the config file."""
    bids = root / "bids"
    for label in SUBJECTS:
        anat = bids / f"sub-{label}" / "ses-1" / "anat"
        _write_scan(anat / f"sub-{label}_ses-1_T1w.nii.gz", 0.0 if f"sub-{label}" == EMPTY_SCAN_SUBJECT else 1.0)
        _write_scan(anat / f"sub-{label}_ses-1_T2w.nii.gz", 1.0)
    later = bids / f"sub-{SUBJECTS[0]}" / "ses-2" / "anat"
    _write_scan(later / f"sub-{SUBJECTS[0]}_ses-2_T1w.nii.gz", 1.0)
    _write_scan(later / f"sub-{SUBJECTS[0]}_ses-2_T2w.nii.gz", 1.0)
    rows = [{"src_subject_id": f"NDAR_{label[4:]}", "eventname": "baseline_year_1_arm_1",
             **dict.fromkeys(CBCL_SCORES, 50.0)} for label in SUBJECTS]
    pd.DataFrame(rows).to_csv(root / "cbcl.csv", index=False)
    config = root / "cohort.yaml"
    config.write_text(f"cohort: {{source: bids, bids_dir: {bids}, cbcl_table: {root / 'cbcl.csv'}}}\n")
    return config


def _command(workdir, config, *args):
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(TINY), str(config), *args, "--cores", "1", TARGET]


def _snakemake(workdir, config, *args, umask=0o022):
    return subprocess.run(_command(workdir, config, *args), capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(umask))


def _participants(workdir):
    return pd.read_csv(workdir / TARGET, sep="\t").set_index("participant_id")


@pytest.fixture
def cohort(tmp_path):
    return tmp_path / "work", _cohort(tmp_path)


def test_a_replaced_scan_reruns_the_filter(cohort):
    """Snakemake sees the BIDS folder, whose date does not change when a scan inside it is replaced; the
    workflow's manifest of the folder does."""
    workdir, config = cohort
    assert _snakemake(workdir, config).returncode == 0
    assert "all zeros" in _participants(workdir).loc[EMPTY_SCAN_SUBJECT, "reason"]
    scan = next((cohort[1].parent / "bids" / EMPTY_SCAN_SUBJECT).glob("ses-1/anat/*_T1w.nii.gz"))
    _write_scan(scan, 1.0)
    rerun = _snakemake(workdir, config)
    assert rerun.returncode == 0 and "filter_cohort" in rerun.stderr, rerun.stderr[-3000:]
    assert _participants(workdir).loc[EMPTY_SCAN_SUBJECT, "included"]


def test_outputs_are_readable_as_the_umask_says(cohort):
    """Every file the package writes went through a private temporary file (mode 0600) and kept its mode."""
    workdir, config = cohort
    assert _snakemake(workdir, config, umask=0o027).returncode == 0
    for path in (workdir / TARGET, workdir / "results/cohort/train.txt", workdir / "results/inputs/bids_dir.tsv"):
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_a_failed_job_explains_itself_in_its_log(cohort):
    """Only one subject has session 2: the filter fails with too few subjects, and the rule's log (where
    Snakemake sends the user) holds the error and each excluded subject's reason."""
    workdir, config = cohort
    session = config.parent / "session.yaml"
    session.write_text(config.read_text().replace("}", ", session: '2'}"))
    result = _snakemake(workdir, session)
    assert result.returncode != 0
    log = (workdir / "results/logs/filter_cohort.log").read_text()
    assert "cohort: only 1 usable subjects; need at least 4 to split" in log, log
    assert ("5 of 6 subjects were excluded, the most often (5) for: missing T1w in session ses-2 (config "
            "cohort.session); missing T2w in session ses-2") in log
    for label in SUBJECTS[1:]:
        assert f"excluded sub-{label}: missing T1w in session ses-2 (config cohort.session)" in log
