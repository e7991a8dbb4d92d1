"""Snakemake entry point: write the built-in synthetic cohort (BIDS + CBCL table)."""

from spatial_msma.progress import script_logger
from spatial_msma.synthetic import SyntheticSettings, write_cohort

logger = script_logger(snakemake.log[0])  # noqa: F821
write_cohort(
    snakemake.output[0],  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    settings=SyntheticSettings.from_config(snakemake.params.settings),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    logger=logger,
)
