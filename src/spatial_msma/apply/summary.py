"""One table for a folder of applied scans: every subject's status (ok or refused, and why) and its lesions."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import pandas as pd

from spatial_msma import io

SUMMARY_COLUMNS = ("subject", "status", "reason", "n_lesions", "n_lesions_lost", "lesion_volume_ml",
                   "largest_lesion_mm3", "peak_score", "protocol", "threshold", "seconds", "t1w", "t2w")


def summary_table(status_files: Sequence[str | os.PathLike], out_csv: str | os.PathLike,
                  logger: logging.Logger | None = None) -> pd.DataFrame:
    """Read the subjects' status files (:func:`~spatial_msma.apply.subject.apply_subject`), write one row each."""
    logger = logger or logging.getLogger("spatial_msma")
    rows = []
    for path in io.as_path_list(status_files):
        try:
            rows.append(json.loads(open(path).read()))
        except (OSError, json.JSONDecodeError) as err:
            raise io.InputError(f"apply status {path}: unreadable ({err})") from err
    table = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    io.write_table(table, out_csv)
    for row in table[table["status"] != "ok"].itertuples():
        logger.info("%s refused: %s", row.subject, row.reason)
    ok = table["status"] == "ok"
    logger.info("%d of %d subjects applied, %d refused; %d lesions in all; median %.1f s per applied subject",
                int(ok.sum()), len(table), int((~ok).sum()), int(table.loc[ok, "n_lesions"].sum()),
                float(table.loc[ok, "seconds"].median()) if ok.any() else float("nan"))
    return table
