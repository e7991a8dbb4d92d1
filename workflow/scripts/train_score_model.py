"""Snakemake entry point: train (or resume training) the score network.

input: train (list of cropped 2-channel images), train_masks (their brain masks, same order; for the
automatic sigma_min), val (list of cropped val images; the first ``score.val_images`` give the val loss);
output: model (results/models/score/model.pt), log (CSV training log), figure (results/figures/score_training.png);
params: cfg (the ``score`` config section), seed (int), checkpoint_dir (results/checkpoints/score: NOT an
output, so a killed job resumes from it); threads: torch CPU threads.
"""

from spatial_msma.score.train import train_score_model
from spatial_msma.training import script_arguments

train_score_model(**script_arguments(snakemake), train_masks=snakemake.input.train_masks)  # noqa: F821
