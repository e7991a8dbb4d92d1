"""Snakemake entry point: fit the voxelwise intensity mean/SD on the training images.

input: images (the train set's images); output: results/models/zscore/model.npz; params: sd_floor.
"""

from spatial_msma.baselines.zscore import fit_zscore, write_zscore_model
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
model = fit_zscore(sm.input.images, sd_floor=sm.params.sd_floor)
write_zscore_model(model, sm.output[0])
logger.info("z-score model from %d training images", int(model["n_images"]))
