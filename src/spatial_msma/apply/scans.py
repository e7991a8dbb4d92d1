"""The new scans a model is applied to: a BIDS folder, or a table of T1w/T2w paths.

Read at workflow parse time (one job per subject), so nothing here opens an image: a scan that is missing
or broken is listed anyway and refused by its own job, with a message, while the others run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from spatial_msma.cohort import find_scans
from spatial_msma.io import InputError

#: Columns of a scan table (tab separated); ``t2w`` may be empty.
TABLE_COLUMNS = ("subject", "t1w", "t2w")
#: A subject id becomes a folder name and a wildcard value: letters, digits, ``-``, ``_`` and ``.``.
SUBJECT_PATTERN = re.compile(r"sub-[A-Za-z0-9._-]+")


def read_scan_list(scans: str | Path, session: str | None = None) -> dict[str, dict[str, str]]:
    """``{subject: {"t1w": path or "", "t2w": path or ""}}`` in subject order.

    ``scans`` is a BIDS folder (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, ``*_T2w``; ``session`` picks one) or
    a TSV with columns ``subject, t1w, t2w`` (``sub-`` is prefixed to ids without it; relative paths are
    relative to the table's folder).
    """
    path = Path(scans)
    if path.is_dir():
        found = find_scans(path, session)
        return {subject: {"t1w": str(files["T1w"] or ""), "t2w": str(files["T2w"] or "")}
                for subject, files in found.items()}
    if not path.is_file():
        raise InputError(f"config apply.scans: {path} is neither a BIDS folder nor a scan table")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"scan table {path}: cannot be parsed ({err})") from err
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"scan table {path}: missing column(s) {missing}; expected tab-separated "
                         f"{', '.join(TABLE_COLUMNS)}")
    out: dict[str, dict[str, str]] = {}
    for row in table.itertuples(index=False):
        raw = row.subject.strip()
        subject = raw if raw.startswith("sub-") else f"sub-{raw}"
        if not SUBJECT_PATTERN.fullmatch(subject):
            raise InputError(f"scan table {path}: subject {raw!r} may hold only letters, digits, '-', '_' and '.'")
        if subject in out:
            raise InputError(f"scan table {path}: subject {subject} is listed twice")
        out[subject] = {key: _resolve(getattr(row, key).strip(), path.parent) for key in ("t1w", "t2w")}
    if not out:
        raise InputError(f"scan table {path}: no rows")
    return dict(sorted(out.items()))


def _resolve(value: str, base: Path) -> str:
    if not value:
        return ""
    return value if Path(value).is_absolute() else str(base / value)
