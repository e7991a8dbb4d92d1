"""Snakemake entry point: CBCL filter + scan checks -> participants.tsv, split files, CBCL outliers."""

from spatial_msma.cohort import SplitFractions, build_participants
from spatial_msma.io import write_table, write_text
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
participants, splits = build_participants(
    sm.params.bids_dir,
    sm.params.cbcl_table,
    columns=sm.params.cbcl["columns"],
    event=sm.params.cbcl["event"],
    session=sm.params.session,
    max_t=sm.params.cbcl["max_t"],
    fractions=SplitFractions(**sm.params.split),
    seed=sm.params.seed,
    threads=sm.threads,
    logger=logger,
)
write_table(participants, sm.output.participants)
for name in ("train", "val", "test"):
    write_text("".join(f"{s}\n" for s in splits[name]), sm.output[name])
outliers = participants.loc[participants.cbcl_outlier, "participant_id"]
write_text("".join(f"{s}\n" for s in outliers), sm.output.outliers)
