# spatial-msma: Spatial-MSMA and the baselines of its Table 1, from raw T1w/T2w + CBCL to results/table1.csv.
# Run `snakemake --cores 2` (see README.md). Configuration: config/config.yaml, checked against config/schema.yaml.
import os

from snakemake.utils import min_version, validate

min_version("8.0")


# Absolute, so `--directory elsewhere` still finds the default config.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "config/schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    set="|".join(IMAGE_SETS),
    protocol="oracle|fpr[0-9.]+",
    subject="sub-[^/]+",
    run=RUN_PATTERN,
    residual_method="|".join(RESIDUAL_METHODS),


include: "rules/cohort.smk"
include: "rules/preprocess.smk"
include: "rules/lesions.smk"
include: "rules/zscore.smk"
include: "rules/score.smk"
include: "rules/flow.smk"
include: "rules/autoencoder.smk"
include: "rules/reconstruction_baselines.smk"
include: "rules/gradcam.smk"
include: "rules/evaluate.smk"
include: "rules/seed_spread.smk"
include: "rules/apply.smk"


rule all:
    input:
        "results/table1.csv",
        "results/msma_image_auroc.csv",
        "results/figures/montage.png",
        "results/figures/lesions.png",
        "results/figures/cohort.png",
        "results/cropped/manifest.tsv",
        registration_qc_targets(),
        "results/diagnostics/score_levels.csv",
        "results/validation/table.csv",
        ["results/diagnostics/ablations.csv"] if config["diagnostics"]["ablations"] else [],
        ["results/diagnostics/paper_form.csv"] if config["diagnostics"]["paper_form"] and PAPER_FORM_METHODS[1:] else [],
        ["results/seed_spread/table1.csv"] if config["seed_spread"]["in_main_run"] else [],
    default_target: True
