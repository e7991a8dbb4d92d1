"""Snakemake entry point: write the built-in synthetic cohort (BIDS + CBCL table; label maps for labelmaps)."""

from pathlib import Path

from spatial_msma.progress import script_logger
from spatial_msma.synthetic import SyntheticSettings, write_cohort

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
write_cohort(
    sm.output[0],
    seed=sm.params.seed,
    settings=SyntheticSettings.from_config(sm.params.settings),
    threads=sm.threads,
    logger=logger,
    # the label maps as this rule's inputs name them (the folder of the checkout that runs the workflow)
    anatomy_dir=Path(sm.input.anatomies[0]).parent if sm.input.anatomies else None,
)
