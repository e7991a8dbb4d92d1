"""Snakemake entry point: register, skull-strip, resample and scale one subject."""

import os

sm = snakemake  # noqa: F821
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(sm.threads)

from spatial_msma.io import write_channels, write_nifti  # noqa: E402
from spatial_msma.preprocess import PreprocessSettings, preprocess_subject, read_template_images  # noqa: E402
from spatial_msma.progress import script_logger  # noqa: E402

logger = script_logger(sm.log[0])
image, mask, affine = preprocess_subject(
    sm.input.t1w, sm.input.t2w, PreprocessSettings.from_config(sm.params.settings), logger,
    registration_template=read_template_images(sm.input.registration_t1, sm.input.registration_mask),
    output_template=read_template_images(sm.input.output_t1, sm.input.output_mask),
)
write_channels(image, affine, sm.output.image)
write_nifti(mask, affine, sm.output.mask)
