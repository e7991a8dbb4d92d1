"""Snakemake entry point: fit GradCAM-MSMA's image-level GMM on the train score-norm cache.

input: train (results/score_norms/train/manifest.tsv);
output: results/models/gradcam_msma/gmm.npz; params: cfg (the ``gradcam_msma`` config section), seed (int).
"""

from spatial_msma.baselines.gradcam import fit_gradcam_gmm
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
fit_gradcam_gmm(sm.input.train, sm.output[0], cfg=sm.params.cfg, seed=sm.params.seed, logger=logger)
