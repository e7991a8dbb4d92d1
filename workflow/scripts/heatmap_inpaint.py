"""Snakemake entry point: Inpaint heatmaps (checkerboard in-painting with the score model) for one image set.

input: model (results/models/score/model.pt), images (the set's 2-channel images), masks (their brain masks,
same order); output: the directory results/heatmaps/inpaint/{set}, one {subject}.nii.gz per image;
params: cfg (the ``inpaint`` config section), seed (int); threads: torch CPU threads.
"""

import torch

from spatial_msma.baselines.inpaint import write_inpaint_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
write_inpaint_heatmaps(sm.input.model, list(sm.input.images), list(sm.input.masks), sm.output[0],
                       cfg=sm.params.cfg, seed=sm.params.seed, logger=logger)
