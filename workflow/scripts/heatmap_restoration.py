"""Snakemake entry point: Restoration heatmaps (partial diffusion and reverse sampling with the score model)
of one image set.

input: model (results/models/score/model.pt), images (the set's images), masks (their brain masks, same
order); output: the directory results/heatmaps/restoration/{set}, one {subject}.nii.gz per image;
params: cfg (the ``restoration`` config section), seed (int); threads: torch CPU threads.
"""

from spatial_msma.baselines.restoration import RestorationDetector

RestorationDetector.run_script(snakemake)  # noqa: F821
