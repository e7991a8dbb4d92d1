"""Snakemake entry point: MS-MIST-style lesions for one subject -> lesioned image, ground-truth mask, lesion table.

input: image (cropped 2-channel NIfTI), brainmask, lesion_folder (with lesions from a folder: its manifest, only so
that a changed mask reruns this; the masks are read from the config's folder); output: image, mask, table (TSV,
one row per lesion);
params: cfg (the ``lesions`` config section), seed (int), volume (the lesioned volume's id,
``{subject}_draw-{k}``: the volume's own seed is derived from both, so every draw is another placement).
"""

from spatial_msma.lesions.simulate import simulate_subject_files
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
simulate_subject_files(
    sm.input.image,
    sm.input.brainmask,
    sm.output.image,
    sm.output.mask,
    sm.output.table,
    cfg=sm.params.cfg,
    seed=sm.params.seed,
    subject=sm.params.volume,
    logger=logger,
)
