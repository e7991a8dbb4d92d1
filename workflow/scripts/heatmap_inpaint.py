"""Snakemake entry point: Inpaint heatmaps (checkerboard in-painting with the score model) of one image set.

input: model (results/models/score/model.pt), images (the set's images), masks (their brain masks, same
order); output: the directory results/heatmaps/inpaint/{set}, one {subject}.nii.gz per image;
params: cfg (the ``inpaint`` config section), seed (int); threads: torch CPU threads.
"""

from spatial_msma.baselines.inpaint import InpaintDetector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
detector = InpaintDetector.load(sm.input.model, sm.params.cfg, sm.params.seed)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
