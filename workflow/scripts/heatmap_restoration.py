"""Snakemake entry point: Restoration heatmaps (partial diffusion and reverse sampling with the score model)
of one image set.

input: model (results/models/score/model.pt), images (the set's images), masks (their brain masks, same
order); output: the directory results/heatmaps/restoration/{set}, one {subject}.nii.gz per image;
params: cfg (the ``restoration`` config section), seed (int); threads: torch CPU threads.
"""

from spatial_msma.baselines.restoration import RestorationDetector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
detector = RestorationDetector.load(sm.input.model, sm.params.cfg, sm.params.seed)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
