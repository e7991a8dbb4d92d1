"""Paired statistics for Table 1: every method against every other, per protocol and metric, and the figure of
every method's paired differences against Spatial-MSMA.

input:  metrics (results/metrics/{method}_{protocol}.csv, every method x protocol that was run),
        participants (results/cohort/participants.tsv: the anatomy is the resampled unit where several subjects
        share one, else the subject)
output: csv (results/table1_stats.csv: n, means, mean difference with its cluster-bootstrap 95 % interval,
        Wilcoxon p on per-unit means, which side is better), figure (results/figures/table1_stats.png)
params: seed=config["seed"]; optional n_boot (bootstrap resamples, default 2000)
"""

from spatial_msma.evaluation.stats import N_BOOT, write_stats
from spatial_msma.progress import script_logger

logger = script_logger(snakemake.log[0])  # noqa: F821
write_stats(
    metric_csvs=snakemake.input.metrics,  # noqa: F821
    out_csv=snakemake.output.csv,  # noqa: F821
    out_figure=snakemake.output.figure,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    n_boot=snakemake.params.get("n_boot", N_BOOT),  # noqa: F821
    logger=logger,
    participants=snakemake.input.get("participants"),  # noqa: F821
)
