"""Snakemake entry point: the label-map cohort's registration check, per subject and summarised."""

import pandas as pd

from spatial_msma.io import write_table
from spatial_msma.progress import script_logger
from spatial_msma.registration_qc import summarise

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
table, summary = summarise(sm.input.tables, sm.params.min_dice, logger)
participants = pd.read_csv(sm.input.participants, sep="\t", dtype=str, keep_default_na=False)
anatomy = participants.set_index("participant_id")["anatomy"]
table.insert(1, "anatomy", [anatomy.get(s, "") for s in table.participant_id])
table.insert(2, "split", participants.set_index("participant_id")["split"].reindex(table.participant_id).to_numpy())
write_table(table, sm.output.table)
write_table(summary, sm.output.summary)
