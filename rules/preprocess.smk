# Preprocessing: register + skull-strip + resample each subject, then crop all to the training brain box.


rule template_images:
    input:
        code=script_code("template_images.py"),
    output:
        t1="results/template/res-{mm}mm_T1w.nii.gz",
        mask="results/template/res-{mm}mm_brainmask.nii.gz",
    wildcard_constraints:
        mm=r"[0-9]+(\.[0-9]+)?",
    log:
        "results/logs/template_images/{mm}mm.log",
    benchmark:
        "results/benchmarks/template_images/{mm}mm.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/template_images.py"


rule template_tissues:
    input:
        code=script_code("template_tissues.py"),
    output:
        TEMPLATE_TISSUES,
    log:
        "results/logs/template_tissues.log",
    benchmark:
        "results/benchmarks/template_tissues.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/template_tissues.py"


rule preprocess:
    input:
        unpack(subject_scans),
        registration_t1=template_images(config["preprocess"]["registration_mm"])["t1"],
        registration_mask=template_images(config["preprocess"]["registration_mm"])["mask"],
        output_t1=template_images(config["preprocess"]["voxel_mm"])["t1"],
        output_mask=template_images(config["preprocess"]["voxel_mm"])["mask"],
        code=script_code("preprocess.py"),
    output:
        image="results/preprocessed/{subject}.nii.gz",
        mask="results/preprocessed/{subject}_brainmask.nii.gz",
        **registration_qc_outputs(),
    params:
        settings=config["preprocess"],
    log:
        "results/logs/preprocess/{subject}.log",
    benchmark:
        "results/benchmarks/preprocess/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/preprocess.py"


rule registration_qc:
    # The label-map cohort's registration check, one table (results/qc/registration_dice.tsv) and its summary.
    input:
        tables=lambda wc: expand("results/qc/registration/{subject}.tsv", subject=included_subjects()),
        participants="results/cohort/participants.tsv",
        code=script_code("registration_qc.py"),
    output:
        table="results/qc/registration_dice.tsv",
        summary="results/qc/registration_dice_summary.tsv",
    params:
        min_dice=config["registration_qc"]["min_dice"],
    log:
        "results/logs/registration_qc.log",
    benchmark:
        "results/benchmarks/registration_qc.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/registration_qc.py"


rule crop_box:
    input:
        masks=lambda wc: expand("results/preprocessed/{subject}_brainmask.nii.gz", subject=split_members("train")),
        code=script_code("crop_box.py"),
    output:
        "results/preprocessed/crop_box.json",
    params:
        multiple=config["crop"]["multiple"],
    log:
        "results/logs/crop_box.log",
    benchmark:
        "results/benchmarks/crop_box.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/crop_box.py"


rule crop:
    input:
        image="results/preprocessed/{subject}.nii.gz",
        mask="results/preprocessed/{subject}_brainmask.nii.gz",
        box="results/preprocessed/crop_box.json",
        code=script_code("crop.py"),
    output:
        image="results/cropped/{subject}.nii.gz",
        mask="results/cropped/{subject}_brainmask.nii.gz",
    log:
        "results/logs/crop/{subject}.log",
    benchmark:
        "results/benchmarks/crop/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/crop.py"


rule crop_manifest:
    input:
        images=lambda wc: expand("results/cropped/{subject}.nii.gz", subject=included_subjects()),
        masks=lambda wc: expand("results/cropped/{subject}_brainmask.nii.gz", subject=included_subjects()),
        participants="results/cohort/participants.tsv",
        code=script_code("crop_manifest.py"),
    output:
        "results/cropped/manifest.tsv",
    log:
        "results/logs/crop_manifest.log",
    benchmark:
        "results/benchmarks/crop_manifest.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/crop_manifest.py"


rule cohort_figure:
    input:
        images=lambda wc: expand("results/cropped/{subject}.nii.gz", subject=included_subjects()),
        masks=lambda wc: expand("results/cropped/{subject}_brainmask.nii.gz", subject=included_subjects()),
        raw_t1w=lambda wc: raw_scans("t1w"),
        raw_t2w=lambda wc: raw_scans("t2w"),
        participants="results/cohort/participants.tsv",
        code=script_code("cohort_figure.py"),
    output:
        report("results/figures/cohort.png", caption="../report/cohort.rst", category="Cohort"),
    params:
        n_subjects=config["figures"]["cohort_subjects"],
        seed=config["seed"],
    log:
        "results/logs/cohort_figure.log",
    benchmark:
        "results/benchmarks/cohort_figure.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/cohort_figure.py"


rule cropped:
    # Named target for the first half of the pipeline: `snakemake --cores 2 cropped`.
    input:
        "results/cropped/manifest.tsv",
        "results/figures/cohort.png",
        registration_qc_targets(),
