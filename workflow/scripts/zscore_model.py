"""Snakemake entry point: fit the voxelwise intensity mean/SD on the training images."""

import numpy as np

from spatial_msma.io import atomic_path
from spatial_msma.progress import script_logger
from spatial_msma.zscore import fit_zscore

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
model = fit_zscore(sm.input.images, sd_floor=sm.params.sd_floor)
with atomic_path(sm.output[0]) as tmp, open(tmp, "wb") as handle:
    np.savez(handle, **model)
logger.info("z-score model from %d training images", int(model["n_images"]))
