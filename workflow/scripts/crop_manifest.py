"""Snakemake entry point: one line per cropped subject (split, shape, voxel size, brain volume)."""

from spatial_msma.crop import manifest
from spatial_msma.io import write_table
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
script_logger(sm.log[0])
write_table(manifest(sm.input.images, sm.input.masks, sm.input.participants), sm.output[0])
