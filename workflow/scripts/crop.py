"""Snakemake entry point: crop one subject's image and mask to the crop box."""

import json
from pathlib import Path

from spatial_msma.crop import apply_crop, cropped_affine
from spatial_msma.io import read_channels, read_mask, write_channels, write_nifti
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
box = json.loads(Path(sm.input.box).read_text())
image, affine = read_channels(sm.input.image)
mask, _ = read_mask(sm.input.mask)
write_channels(apply_crop(image, box, fill=-1.0), cropped_affine(affine, box), sm.output.image)
write_nifti(apply_crop(mask, box, fill=False), cropped_affine(affine, box), sm.output.mask)
logger.info("cropped to %s", box["shape"])
