"""Snakemake entry point: Inpaint heatmaps (checkerboard in-painting with the score model) of one image set.

input: model (results/models/score/model.pt), images (the set's images), masks (their brain masks, same
order); output: the directory results/heatmaps/inpaint/{set}, one {subject}.nii.gz per image;
params: cfg (the ``inpaint`` config section), seed (int); threads: torch CPU threads.
"""

from spatial_msma.baselines.inpaint import InpaintDetector

InpaintDetector.run_script(snakemake)  # noqa: F821
