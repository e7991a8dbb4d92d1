"""Snakemake entry point: intensity z-score heatmaps for one image set."""

from spatial_msma.progress import script_logger
from spatial_msma.zscore import write_zscore_heatmaps

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
write_zscore_heatmaps(sm.input.model, sm.input.images, sm.input.masks, sm.output[0], logger)
