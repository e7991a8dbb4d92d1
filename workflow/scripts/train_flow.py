"""Snakemake entry point: train (or resume) one Spatial-MSMA density model: the flow or an ablation.

input: train_manifest, val_manifest (score-norm manifests), train_images, val_images (cropped 2-channel
images of the train and val splits, in the manifests' order; the val NLL picks the weights);
output: model (results/models/{name}/model.pt), log (CSV training log), figure (training curves png);
params: cfg (the ``flow`` training keys with the method's registry overrides applied,
``spatial_msma.methods.flow_section``), seed (int),
checkpoint_dir (results/checkpoints/{name}: NOT an output, so a killed job resumes from it);
threads: torch CPU threads.
"""

from spatial_msma.flow.train import train_flow
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
train_flow(
    sm.input.train_manifest,
    list(sm.input.train_images),
    sm.input.val_manifest,
    list(sm.input.val_images),
    model_path=sm.output.model,
    checkpoint_dir=sm.params.checkpoint_dir,
    log_csv=sm.output.log,
    figure_path=sm.output.figure,
    cfg=sm.params.cfg,
    seed=sm.params.seed,
    logger=logger,
)
