"""Snakemake entry point: results/figures/cohort.png, a montage of raw and preprocessed subjects."""

import pandas as pd

from spatial_msma.progress import script_logger
from spatial_msma.qc import cohort_figure

sm = snakemake  # noqa: F821
script_logger(sm.log[0])
participants = pd.read_csv(sm.input.participants, sep="\t", dtype=str, keep_default_na=False)
anatomies = (dict(zip(participants.participant_id, participants.anatomy, strict=True))
             if "anatomy" in participants else None)
cohort_figure(sm.input.images, sm.input.masks, sm.output[0], n_subjects=sm.params.n_subjects, seed=sm.params.seed,
              raw=list(zip(sm.input.raw_t1w, sm.input.raw_t2w, strict=True)), anatomies=anatomies)
