"""Snakemake entry point: apply the model bundle to one subject's T1w/T2w -> heatmap, lesion mask, per-lesion table
and overlay in the T1w's own space (a bad input is refused in the status file; the job still succeeds).

input: bundle (folder), the scans that exist; output: status (JSON), overlay (PNG); the other files go beside
them; params: t1w, t2w (paths as listed, "" if none), fpr, device.
"""

import os
from pathlib import Path

sm = snakemake  # noqa: F821
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(sm.threads)

from spatial_msma.apply.subject import ApplyModel, apply_subject  # noqa: E402
from spatial_msma.training import torch_script  # noqa: E402

logger = torch_script(sm)
model = ApplyModel.load(sm.input.bundle, sm.params.fpr, sm.params.device)
apply_subject(model, sm.wildcards.subject, sm.params.t1w, sm.params.t2w, Path(sm.output.status).parent, logger)
