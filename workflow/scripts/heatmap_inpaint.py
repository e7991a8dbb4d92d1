"""Snakemake entry point: Inpaint heatmaps (checkerboard in-painting with the score model) of one image set.

input: model (results/models/score/model.pt), images (the set's images), masks (their brain masks, same
order); output: the directory results/heatmaps/inpaint/{set}, one {subject}.nii.gz per image;
params: cfg (the ``inpaint`` config section), seed (int); threads: torch CPU threads.
"""

import torch

from spatial_msma.baselines.inpaint import InpaintDetector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
detector = InpaintDetector.load(sm.input.model, sm.params.cfg, sm.params.seed)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
