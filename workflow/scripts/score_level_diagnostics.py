"""Snakemake entry point: per-level voxel and image AUROC of the cached score norms.

input:  train, val_lesioned, val, test_lesioned, test (score-norm manifests; train = the healthy reference
        of the standardised AUROC), val_masks, test_masks (lesion masks in the order of the lesioned manifests)
output: table (results/diagnostics/score_levels.csv), figure (results/diagnostics/score_levels.png)
params: seed (int; the healthy-voxel subsample)
"""

from spatial_msma.progress import script_logger
from spatial_msma.score.diagnostics import write_level_diagnostics

sm = snakemake  # noqa: F821
logger = script_logger(sm.log[0])
table = write_level_diagnostics(
    {
        "val": (sm.input.val_lesioned, sm.input.val, sm.input.val_masks),
        "test": (sm.input.test_lesioned, sm.input.test, sm.input.test_masks),
    },
    sm.input.train,
    sm.output.table,
    sm.output.figure,
    seed=sm.params.seed,
)
logger.info("per-level AUROCs:\n%s", table.to_string(index=False))
