"""Snakemake entry point: intensity z-score heatmaps of one image set.

input: model (results/models/zscore/model.npz), images (the set's images), masks (their brain masks, same
order); output: the directory results/heatmaps/zscore/{set}, one {subject}.nii.gz per image.
"""

from spatial_msma.baselines.zscore import ZscoreDetector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
write_set_heatmaps(ZscoreDetector.load(sm.input.model), sm.input.images, sm.input.masks, sm.output[0], logger)
