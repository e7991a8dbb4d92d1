"""Snakemake entry point: AE reconstruction-error heatmaps for every image of one set, in one job.

input: model (results/models/ae/model.pt), images (the set's images), masks (their brain masks, same order);
output: the directory results/heatmaps/ae/{set} ({subject}.nii.gz each); params: cfg (the ``ae`` config
section: error and device are used); threads: torch CPU threads.
"""

import torch

from spatial_msma.baselines.ae import write_ae_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
write_ae_heatmaps(sm.input.model, sm.input.images, sm.input.masks, sm.output[0], cfg=sm.params.cfg, logger=logger)
