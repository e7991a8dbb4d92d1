"""The manifests of the input folders (spatial_msma.input_manifest): rewritten exactly when a file changes.

That a changed scan then reruns the cohort filter, and a new mask the lesions, is tested on real Snakemake
(test_user_cohort.py, test_workflow.py).
"""

import os
import time

from spatial_msma.input_manifest import BIDS_PATTERNS, update_manifest


def test_the_manifest_changes_with_a_file_and_only_then(tmp_path):
    anat = tmp_path / "bids" / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    scan = anat / "sub-01_ses-1_T1w.nii.gz"
    scan.write_bytes(b"scan")
    (tmp_path / "bids" / "README").write_text("not read by the workflow\n")
    manifest = tmp_path / "results" / "bids.tsv"
    update_manifest(tmp_path / "bids", BIDS_PATTERNS, manifest)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path\tsize\tmtime_ns" and len(lines) == 2
    assert lines[1].startswith("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz\t4\t")
    os.utime(manifest, ns=(1, 1))
    update_manifest(tmp_path / "bids", BIDS_PATTERNS, manifest)
    assert manifest.stat().st_mtime_ns == 1  # unchanged folder: not rewritten, so nothing reruns
    time.sleep(0.05)  # file times move by the kernel's clock tick (a few ms)
    scan.write_bytes(b"SCAN")  # same size: the new modification time tells
    update_manifest(tmp_path / "bids", BIDS_PATTERNS, manifest)
    assert manifest.stat().st_mtime_ns != 1
    (anat / "sub-01_ses-1_T2w.nii.gz").write_bytes(b"new")
    update_manifest(tmp_path / "bids", BIDS_PATTERNS, manifest)
    assert len(manifest.read_text().splitlines()) == 3
