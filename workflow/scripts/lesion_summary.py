"""Snakemake entry point: per-subject lesion summary table and the lesion figure.

input: tables, masks, images (parallel lists, one entry per lesioned subject); output: table (TSV),
figure (PNG); params: n_show (optional, subjects in the figure, default 4).
"""

from spatial_msma.lesions.report import summarise_lesions
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
summarise_lesions(
    list(sm.input.tables),
    list(sm.input.masks),
    list(sm.input.images),
    sm.output.table,
    sm.output.figure,
    n_show=sm.params.get("n_show", 4),
    logger=logger,
)
