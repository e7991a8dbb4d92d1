# Cohort: the built-in synthetic cohort, then the CBCL filter, exclusions with reasons, and the splits.


rule synthetic_cohort:
    input:
        code=script_code("synthetic_cohort.py"),
        anatomies=anatomy_inputs(),
    output:
        directory(SYNTHETIC_BIDS),
    params:
        settings=config["synthetic"],
        seed=config["seed"],
    log:
        "results/logs/synthetic_cohort.log",
    benchmark:
        "results/benchmarks/synthetic_cohort.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/synthetic_cohort.py"


checkpoint filter_cohort:
    input:
        unpack(cohort_inputs),
        code=script_code("filter_cohort.py"),
    output:
        participants="results/cohort/participants.tsv",
        train="results/cohort/train.txt",
        val="results/cohort/val.txt",
        test="results/cohort/test.txt",
        outliers="results/cohort/cbcl_outliers.txt",
    params:
        bids_dir=bids_dir(),
        cbcl_table=cbcl_table_path(),
        cbcl=config["cbcl"],
        session=config["cohort"]["session"],
        split=config["split"],
        seed=config["seed"],
    log:
        "results/logs/filter_cohort.log",
    benchmark:
        "results/benchmarks/filter_cohort.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/filter_cohort.py"
