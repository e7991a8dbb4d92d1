"""Snakemake entry point: one lesioned test volume carried into its subject's native T1w/T2w (agreement check).

input: t1w, t2w (the subject's raw scans), cropped (its cropped image), brainmask, lesioned, lesion_mask, box,
registration_t1/_mask, output_t1/_mask; output: t1w, t2w, reference; params: settings (preprocess), cfg
(evaluation metrics).
"""

import json
import os
from pathlib import Path

sm = snakemake  # noqa: F821
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(sm.threads)

from spatial_msma.apply.agreement import native_lesioned_scans  # noqa: E402
from spatial_msma.evaluation.config import EvaluationConfig  # noqa: E402
from spatial_msma.preprocess import PreprocessSettings, read_template_images  # noqa: E402
from spatial_msma.progress import script_logger  # noqa: E402

native_lesioned_scans(
    sm.input.t1w, sm.input.t2w, sm.input.cropped, sm.input.lesioned, sm.input.lesion_mask, sm.input.brainmask,
    json.loads(Path(sm.input.box).read_text()), PreprocessSettings.from_config(sm.params.settings),
    (read_template_images(sm.input.registration_t1, sm.input.registration_mask),
     read_template_images(sm.input.output_t1, sm.input.output_mask)),
    EvaluationConfig.from_dict(sm.params.cfg), sm.output, script_logger(sm.log[0]),
)
