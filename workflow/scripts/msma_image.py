"""Snakemake entry point: image-level MSMA (GMM on whole-image score norms) and the score-norm figure.

input: train, val, test, test_lesioned (each the set's score-norm manifest.tsv), lesion_masks (ground-truth
masks of the test_lesioned images, same order);
output: auroc (results/msma_image_auroc.csv), scores (per-image GMM NLL table), figure
(results/figures/score_norms.png); params: cfg (the ``msma_image`` config section), seed (int).
"""

from spatial_msma.progress import script_logger
from spatial_msma.score.msma import run_msma_image

sm = snakemake  # noqa: F821
run_msma_image(sm.input.train, sm.input.val, sm.input.test, sm.input.test_lesioned, sm.input.lesion_masks,
               auroc_out=sm.output.auroc, figure_out=sm.output.figure, scores_out=sm.output.scores,
               cfg=sm.params.cfg, seed=sm.params.seed, logger=script_logger(sm.log[0]))
