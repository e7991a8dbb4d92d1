"""Snakemake entry point: Table 1 over training seeds (mean and SD of every metric).

input: named ``seed{s}_{protocol}`` -> each seed run's Table-1 CSV of that protocol (results/table1.csv,
results/seed_spread/seed-{s}/table1_fpr05.csv ...); output: csv, md; params: seeds (list of int), protocols.
"""

from spatial_msma.evaluation.seed_spread import write_seed_spread
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
tables = {seed: {p: sm.input[f"seed{seed}_{p}"] for p in sm.params.protocols} for seed in sm.params.seeds}
write_seed_spread(tables, sm.output.csv, sm.output.md, logger=script_logger(sm.log[0]))
