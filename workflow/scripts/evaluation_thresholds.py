"""Fit one method's deployable thresholds (healthy-voxel FPR levels) on its healthy heatmaps -> JSON.

input:  val_heatmaps, test_heatmaps (results/heatmaps/{method}/{val,test}/{subject}.nii.gz),
        val_brainmasks, test_brainmasks (results/cropped/{subject}_brainmask.nii.gz)
output: results/thresholds/{method}.json
params: cfg=config["evaluation"], method=the method key
"""

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.pipeline import fit_method_thresholds
from spatial_msma.progress import script_logger

logger = script_logger(snakemake.log[0])  # noqa: F821
fit_method_thresholds(
    healthy={
        "val": (snakemake.params.val_heatmaps, snakemake.input.val_brainmasks),  # noqa: F821
        "test": (snakemake.params.test_heatmaps, snakemake.input.test_brainmasks),  # noqa: F821
    },
    method=snakemake.params.method,  # noqa: F821
    cfg=EvaluationConfig.from_dict(snakemake.params.cfg),  # noqa: F821
    out_json=snakemake.output[0],  # noqa: F821
    logger=logger,
)
