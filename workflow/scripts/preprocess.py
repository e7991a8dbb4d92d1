"""Snakemake entry point: register, skull-strip, resample and scale one subject (and, for a subject with a label
map, check its registration)."""

import os
import tempfile

sm = snakemake  # noqa: F821
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(sm.threads)

import pandas as pd  # noqa: E402

from spatial_msma.io import write_channels, write_nifti, write_table  # noqa: E402
from spatial_msma.preprocess import PreprocessSettings, preprocess_in, read_template_images  # noqa: E402
from spatial_msma.progress import script_logger  # noqa: E402
from spatial_msma.registration_qc import registration_dice  # noqa: E402

logger = script_logger(sm.log[0])
with tempfile.TemporaryDirectory(prefix="smsma_reg_") as work:
    done = preprocess_in(
        work, sm.input.t1w, sm.input.t2w, PreprocessSettings.from_config(sm.params.settings), logger,
        registration_template=read_template_images(sm.input.registration_t1, sm.input.registration_mask),
        output_template=read_template_images(sm.input.output_t1, sm.input.output_mask),
    )
    if "dice" in sm.output.keys():
        # The subject's own label map through the same transform (nearest neighbour) against the template's tissues.
        dice = registration_dice(sm.input.labels, done.to_template, sm.input.tissue_classes)
        logger.info("registration check (Dice): %s", ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
        write_table(pd.DataFrame([{"participant_id": sm.wildcards.subject,
                                   **{f"dice_{k}": round(v, 4) for k, v in dice.items()}}]), sm.output.dice)
write_channels(done.image, done.affine, sm.output.image)
write_nifti(done.brain, done.affine, sm.output.mask)
