"""Snakemake entry point: GradCAM-MSMA heatmaps (Guided Grad-CAM of the image-level MSMA NLL) of one set.

input: score_model (results/models/score/model.pt), gmm (results/models/gradcam_msma/gmm.npz), images (the
set's images), masks (their brain masks, same order); output: the directory results/heatmaps/gradcam_msma/{set};
params: cfg (the ``gradcam_msma`` config section); threads: torch CPU threads.
"""

import torch

from spatial_msma.baselines.gradcam import write_gradcam_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
write_gradcam_heatmaps(sm.input.score_model, sm.input.gmm, sm.input.images, sm.input.masks, sm.output[0],
                       cfg=sm.params.cfg, logger=logger)
