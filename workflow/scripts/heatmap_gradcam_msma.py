"""Snakemake entry point: GradCAM-MSMA heatmaps (Guided Grad-CAM of the image-level MSMA NLL) of one image set.

input: score_model (results/models/score/model.pt), gmm (results/models/gradcam_msma/gmm.npz), images (the
set's images), masks (their brain masks, same order); output: the directory results/heatmaps/gradcam_msma/{set},
one {subject}.nii.gz per image; params: cfg (the ``gradcam_msma`` heatmap keys); threads: torch CPU threads.
"""

from spatial_msma.baselines.gradcam import load_gradcam_detector
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
detector = load_gradcam_detector(sm.input.score_model, sm.input.gmm, sm.params.cfg)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
