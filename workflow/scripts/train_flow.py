"""Snakemake entry point: train (or resume) one Spatial-MSMA density model: the flow or an ablation.

input: train_manifest, val_manifest (score-norm manifests), train_images, val_images (cropped 2-channel
images of the train and val splits); params.train_norms / params.val_norms list the npz files beside the
manifests in the same order as the images (the val NLL picks the weights);
output: model (results/models/{name}/model.pt), log (CSV training log), figure (training curves png);
params: cfg (the ``flow`` config section), method (a key of ``spatial_msma.flow.METHODS``:
spatial_msma, spatial_msma_nopos, spatial_msma_noglobal, spatial_msma_gmm, voxel_gaussian), seed (int),
checkpoint_dir (results/checkpoints/{name}: NOT an output, so a killed job resumes from it);
threads: torch CPU threads.
"""

import torch

from spatial_msma.flow.train import train_flow
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
train_flow(
    list(sm.params.train_norms),
    list(sm.input.train_images),
    list(sm.params.val_norms),
    list(sm.input.val_images),
    model_path=sm.output.model,
    checkpoint_dir=sm.params.checkpoint_dir,
    log_csv=sm.output.log,
    figure_path=sm.output.figure,
    cfg=sm.params.cfg,
    seed=sm.params.seed,
    method=sm.params.method,
    logger=logger,
)
