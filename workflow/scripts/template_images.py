"""Snakemake entry point: the template T1 and brain mask at one voxel size, shared by every preprocessing job."""

import os

sm = snakemake  # noqa: F821
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(sm.threads)

from spatial_msma.preprocess import write_template_images  # noqa: E402
from spatial_msma.progress import script_logger  # noqa: E402

logger = script_logger(sm.log[0])
write_template_images(float(sm.wildcards.mm), sm.output.t1, sm.output.mask)
logger.info("template at %s mm: %s, %s", sm.wildcards.mm, sm.output.t1, sm.output.mask)
