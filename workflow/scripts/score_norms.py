"""Snakemake entry point: the score-norm cache of a list of images (one job per set, to pay imports once).

input: model (results/models/score/model.pt), images (list of 2-channel images: cropped or lesioned),
masks (the subjects' brain masks, same order);
output: EITHER norms (the list of results/score_norms/{set}/{subject}.npz, same order) OR manifest
(results/score_norms/{set}/manifest.tsv; the .npz files go beside it, named by params.subjects);
params: cfg (the ``score_norms`` config section), subjects (subject ids, same order; needed with manifest);
threads: torch CPU threads.
"""

import torch

from spatial_msma.progress import script_logger
from spatial_msma.score.norms import compute_score_norm_cache

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
torch.set_num_threads(sm.threads)
compute_score_norm_cache(
    sm.input.model,
    sm.input.images,
    sm.input.masks,
    sm.output.get("norms"),
    cfg=sm.params.cfg,
    logger=logger,
    manifest=sm.output.get("manifest"),
    subjects=sm.params.get("subjects"),
)
