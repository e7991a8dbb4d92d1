"""Figure-2 style heatmap montage and FROC-style detection curves for every method.

input:  heatmaps (results/heatmaps/{method}/test_lesioned/{subject}.nii.gz, all methods),
        images (results/lesions/{subject}_image.nii.gz), masks (results/lesions/{subject}_mask.nii.gz),
        brainmasks (results/cropped/{subject}_brainmask.nii.gz),
        thresholds (results/thresholds/{method}.json; marks the deployable operating points)
output: montage (results/figures/montage.png), froc (results/figures/froc.png)
params: cfg=config["evaluation"], seed=config["seed"]
"""

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.figures import make_figures
from spatial_msma.progress import script_logger

logger = script_logger(snakemake.log[0])  # noqa: F821
make_figures(
    heatmaps=snakemake.params.heatmaps,  # noqa: F821
    images=snakemake.input.images,  # noqa: F821
    lesion_masks=snakemake.input.masks,  # noqa: F821
    brain_masks=snakemake.input.brainmasks,  # noqa: F821
    threshold_jsons=snakemake.input.get("thresholds", []),  # noqa: F821
    montage_path=snakemake.output.montage,  # noqa: F821
    froc_path=snakemake.output.froc,  # noqa: F821
    cfg=EvaluationConfig.from_dict(snakemake.params.cfg),  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    logger=logger,
)
