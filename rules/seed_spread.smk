# The seed-spread table: the learned chain retrained with other training seeds (run folders under
# results/seed_spread/, see common.smk), every Table-1 metric as mean and SD over the seeds.
# Its own target (`make seed-spread`); part of the default target when seed_spread.in_main_run is on.


rule seed_spread:
    input:
        **{f"seed{s}_{p}": table1_csv(run_dir(s), p) for s in spread_seeds() for p in PROTOCOLS},
        code=script_code("seed_spread.py"),
    output:
        csv=report("results/seed_spread/table1.csv", caption="../report/seed_spread.rst", category="Table 1"),
        md="results/seed_spread/table1.md",
    params:
        seeds=spread_seeds(),
        protocols=PROTOCOLS,
    log:
        "results/logs/seed_spread.log",
    benchmark:
        "results/benchmarks/seed_spread.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/seed_spread.py"
