"""Snakemake entry point: train (or resume training) the score network.

input: train (list of cropped 2-channel images), train_masks (their brain masks, same order; for the
automatic sigma_min), val (list of cropped val images; the first ``score.val_images`` give the val loss);
output: model (results/models/score/model.pt), log (CSV training log), figure (results/figures/score_training.png);
params: cfg (the ``score`` config section), seed (int), checkpoint_dir (results/checkpoints/score: NOT an
output, so a killed job resumes from it); threads: torch CPU threads.
"""

import torch

from spatial_msma.progress import script_logger
from spatial_msma.score.train import train_score_model

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
train_score_model(
    sm.input.train,
    sm.input.train_masks,
    sm.input.val,
    sm.output.model,
    sm.output.log,
    sm.output.figure,
    checkpoint_dir=sm.params.checkpoint_dir,
    cfg=sm.params.cfg,
    seed=sm.params.seed,
    logger=logger,
)
