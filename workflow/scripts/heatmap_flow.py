"""Snakemake entry point: Spatial-MSMA (or ablation) heatmaps of one image set.

input: model (results/models/{method}/model.pt, a flow or voxel-Gaussian model), norms_manifest (the set's
score-norm manifest), images (the images those norms were computed from: cropped images, or
results/lesions/{subject}_image.nii.gz for lesioned sets), masks (their brain masks, same order);
output: the directory results/heatmaps/{method}/{set}, one {subject}.nii.gz per image;
params: cfg (the ``flow`` heatmap keys: one_sided, mode_stride, heatmap_jacobian, chunk_voxels, device);
threads: torch CPU threads.
"""

from spatial_msma.detector import write_set_heatmaps
from spatial_msma.flow.heatmap import FlowDetector
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
detector = FlowDetector.load(sm.input.model, sm.params.cfg, sm.input.norms_manifest)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, sm.output[0], logger)
