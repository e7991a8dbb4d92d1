"""Snakemake entry point: Spatial-MSMA (or ablation) heatmaps for every image of one set, in one job.

input: model (results/models/{name}/model.pt, a flow or voxel-Gaussian model), norms_manifest (the set's
score-norm manifest), images (the images those norms were computed from: cropped images, or
results/lesions/{subject}_image.nii.gz for lesioned sets);
output: the directory results/heatmaps/{method}/{set};
params: norms (the set's score-norm npz files, same order as images), heatmaps (the files to write in the
output directory, same order), cfg (the ``flow`` config section: one_sided, chunk_voxels, device are used);
threads: torch CPU threads.
"""

import torch

from spatial_msma.flow.heatmap import write_heatmaps
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
write_heatmaps(sm.input.model, list(sm.params.norms), list(sm.input.images), list(sm.params.heatmaps),
               cfg=sm.params.cfg, logger=logger)
