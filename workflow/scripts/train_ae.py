"""Snakemake entry point: train (or resume training) the AE baseline's autoencoder.

input: train (list of cropped 2-channel train images), val (list of cropped val images; the first
``ae.val_images`` give the val loss); output: model (results/models/ae/model.pt), log (CSV training log),
figure (results/figures/ae_training.png); params: cfg (the ``ae`` config section), seed (int),
checkpoint_dir (results/checkpoints/ae: NOT an output, so a killed job resumes from it);
threads: torch CPU threads.
"""

from spatial_msma.baselines.ae import train_ae
from spatial_msma.training import script_arguments

train_ae(**script_arguments(snakemake))  # noqa: F821
