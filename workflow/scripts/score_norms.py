"""Snakemake entry point: the score-norm cache of one set of images (one job per set, to pay imports once).

input: model (results/models/score/model.pt), images (list of 2-channel images: cropped or lesioned),
masks (the subjects' brain masks, same order);
output: manifest (results/score_norms/{set}/manifest.tsv; the .npz files go beside it, named by subject);
params: cfg (the ``score_norms`` config section), subjects (subject ids, same order as images);
threads: torch CPU threads.
"""

from spatial_msma.score.norms import compute_score_norm_cache
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
compute_score_norm_cache(
    sm.input.model,
    sm.input.images,
    sm.input.masks,
    sm.output.manifest,
    sm.params.subjects,
    cfg=sm.params.cfg,
    logger=logger,
)
