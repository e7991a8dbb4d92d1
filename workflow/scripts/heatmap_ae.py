"""Snakemake entry point: AE reconstruction-error heatmaps of one image set.

input: model (results/models/ae/model.pt), images (the set's images), masks (their brain masks, same order);
output: the directory results/heatmaps/ae/{set}, one {subject}.nii.gz per image; params: cfg (the ``ae``
heatmap keys: error, device); threads: torch CPU threads.
"""

from spatial_msma.baselines.ae import AeDetector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
detector = AeDetector.load(sm.input.model, sm.params.cfg)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
