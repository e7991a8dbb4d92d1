"""Score one method under one protocol (oracle / fpr05 / fpr10) -> per-subject metrics CSV.

input:  heatmap_dir (results/heatmaps/{method}/test_lesioned; params.heatmaps lists its files),
        masks (results/lesions/{subject}_mask.nii.gz), brainmasks (results/cropped/{subject}_brainmask.nii.gz),
        thresholds (results/thresholds/{method}.json; required for the deployable protocols)
output: results/metrics/{method}_{protocol}.csv
params: cfg=config["evaluation"], method=the method key, protocol=the protocol key
"""

import torch

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.pipeline import evaluate_method
from spatial_msma.progress import script_logger

logger = script_logger(snakemake.log[0])  # noqa: F821
torch.set_num_threads(snakemake.threads)  # noqa: F821
evaluate_method(
    heatmaps=snakemake.params.heatmaps,  # noqa: F821
    lesion_masks=snakemake.input.masks,  # noqa: F821
    brain_masks=snakemake.input.brainmasks,  # noqa: F821
    method=snakemake.params.method,  # noqa: F821
    protocol=snakemake.params.protocol,  # noqa: F821
    cfg=EvaluationConfig.from_dict(snakemake.params.cfg),  # noqa: F821
    out_csv=snakemake.output[0],  # noqa: F821
    thresholds_json=snakemake.input.get("thresholds"),  # noqa: F821
    logger=logger,
)
