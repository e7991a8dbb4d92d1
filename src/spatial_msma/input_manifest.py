"""Manifests of the input folders: what makes a changed file in them rerun the jobs that read it.

Snakemake sees a folder input only as the folder: its date does not change when a scan inside it is replaced
(nor a file inside a subfolder added), so a fixed scan stayed excluded and replaced lesion masks left the old
lesions. The workflow therefore hands the jobs a manifest of the files instead (one line per file: path,
size and modification time, rsync's test for a changed file), rewritten when the workflow is read and only
when a line changed: its date then moves exactly when the folder's contents do. Not the change time (ctime):
a cohort copied to scratch with ``rsync -a`` would have new ctimes everywhere, and rerun the whole workflow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from spatial_msma.io import write_text

#: The files of a BIDS folder the cohort filter and the preprocessing read: scans, sidecars, supplied masks.
BIDS_PATTERNS = ("sub-*/anat/*", "sub-*/ses-*/anat/*")
#: The lesion masks of a lesion folder (spatial_msma.lesions.shapes.load_lesion_library).
LESION_MASK_PATTERNS = ("*.nii", "*.nii.gz")


def folder_manifest(folder: str | os.PathLike, patterns: Iterable[str]) -> str:
    """The manifest text of the files under ``folder`` matching ``patterns`` (globs relative to it), sorted."""
    root = Path(folder)
    rows = set()
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_file():
                stat = path.stat()
                rows.add(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n")
    return "path\tsize\tmtime_ns\n" + "".join(sorted(rows))


def update_manifest(folder: str | os.PathLike, patterns: Iterable[str], manifest: str | os.PathLike) -> str:
    """Write the manifest of ``folder`` to ``manifest`` unless it already holds exactly that; return its path."""
    text = folder_manifest(folder, patterns)
    path = Path(manifest)
    if not path.is_file() or path.read_text() != text:
        write_text(text, path)
    return os.fspath(manifest)
