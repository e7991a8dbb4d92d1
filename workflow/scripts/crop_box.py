"""Snakemake entry point: the crop box from the union of the training brain masks."""

from spatial_msma.crop import crop_box
from spatial_msma.io import read_mask, write_json
from spatial_msma.progress import script_logger

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
masks = [read_mask(path)[0] for path in sm.input.masks]
box = crop_box(masks, multiple=sm.params.multiple)
logger.info("crop box from %d training masks: start %s, shape %s", len(masks), box["start"], box["shape"])
write_json(box, sm.output[0])
