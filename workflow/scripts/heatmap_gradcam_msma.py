"""Snakemake entry point: GradCAM-MSMA heatmaps (Guided Grad-CAM of the image-level MSMA NLL) of one image set.

input: score_model (results/models/score/model.pt), gmm (results/models/gradcam_msma/gmm.npz), images (the
set's images), masks (their brain masks, same order); output: the directory results/heatmaps/gradcam_msma/{set},
one {subject}.nii.gz per image; params: cfg (the ``gradcam_msma`` heatmap keys); threads: torch CPU threads.
"""

import torch

from spatial_msma.baselines.gradcam import load_gradcam_detector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
detector = load_gradcam_detector(sm.input.score_model, sm.input.gmm, sm.params.cfg)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
