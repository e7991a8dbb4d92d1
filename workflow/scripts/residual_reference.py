"""Snakemake entry point: the per-voxel mean and SD of a reconstruction baseline's residual on healthy
training images (the standardised heatmap form's reference).

input: model, images, masks (the first residual_heatmaps.reference_images training subjects); output: the
reference npz; params: method, cfg (the method's config section), sd_floor, seed; threads: torch CPU threads.
"""

import functools

from spatial_msma.baselines.estimators import load_estimator
from spatial_msma.baselines.residual import fit_reference, write_reference
from spatial_msma.detector import read_case
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
estimator = load_estimator(sm.params.method, sm.input.model, sm.params.cfg, sm.params.seed)
cases = [functools.partial(read_case, image, mask) for image, mask in zip(sm.input.images, sm.input.masks, strict=True)]
write_reference(fit_reference(estimator, cases, sm.params.sd_floor, logger), sm.output[0])
