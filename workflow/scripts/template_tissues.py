"""Snakemake entry point: the template's tissue classes (1 mm), read by every registration check."""

from spatial_msma.progress import script_logger
from spatial_msma.registration_qc import write_template_classes

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
write_template_classes(sm.output[0])
logger.info("template tissue classes: %s", sm.output[0])
