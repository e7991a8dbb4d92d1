"""Snakemake entry point: one table of every applied subject (status, reason, lesions, time).

input: statuses (the subjects' status files); output: the summary CSV.
"""

from spatial_msma.apply.summary import summary_table
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
summary_table(sm.input.statuses, sm.output[0], script_logger(sm.log[0]))
