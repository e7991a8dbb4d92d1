"""Snakemake entry point: heatmaps of a reconstruction baseline (AE, Inpaint, Restoration) on one image set,
in Table 1's form and the paper's raw residual, from one healthy estimate per image.

input: model (the AE's or the score model), images, masks (same order), reference (the residual reference,
only for the standardised form); output: table, raw (heatmap directories, one {volume}.nii.gz per image);
params: method, cfg (the method's config section), form (raw | standardised), error (abs | squared), seed;
threads: torch CPU threads.
"""

from spatial_msma.baselines.estimators import load_estimator
from spatial_msma.baselines.residual import ResidualDetector, read_reference
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.training import torch_script

sm = snakemake  # noqa: F821
logger = torch_script(sm)
reference = read_reference(sm.input.reference[0]) if sm.params.form == "standardised" else None
detector = ResidualDetector(load_estimator(sm.params.method, sm.input.model, sm.params.cfg, sm.params.seed),
                            sm.params.form, reference, sm.params.error)
write_set_heatmaps(detector, sm.input.images, sm.input.masks, {"table": sm.output.table, "raw": sm.output.raw},
                   logger)
