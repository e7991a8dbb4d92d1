"""Snakemake entry point: results/figures/cohort.png, a montage of preprocessed subjects."""

from spatial_msma.progress import script_logger
from spatial_msma.qc import cohort_figure

sm = snakemake  # noqa: F821
script_logger(sm.log[0])
cohort_figure(sm.input.images, sm.input.masks, sm.output[0], n_subjects=sm.params.n_subjects, seed=sm.params.seed)
