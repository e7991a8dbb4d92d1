# Evaluation: the same thresholds, post-processing and metrics for every detector, then Table 1 and figures.
import sys

sys.path.insert(0, str(PACKAGE.parent))
from spatial_msma.names import protocol_name  # noqa: E402  (pure Python, no heavy imports)

PROTOCOLS = ["oracle"] + [protocol_name(level) for level in config["evaluation"]["fpr_levels"]]
METHODS = config["methods"]


rule evaluation_thresholds:
    # One threshold per method and FPR level, fixed on healthy heatmaps (val + lesion-free test).
    input:
        val_dir="results/heatmaps/{method}/val",
        test_dir="results/heatmaps/{method}/test",
        val_brainmasks=lambda wc: set_brainmasks("val"),
        test_brainmasks=lambda wc: set_brainmasks("test"),
        code=package_code("evaluation/thresholds.py", "evaluation/pipeline.py"),
    output:
        "results/thresholds/{method}.json",
    params:
        cfg=config["evaluation"],
        method="{method}",
        val_heatmaps=lambda wc: heatmap_files(wc.method, "val"),
        test_heatmaps=lambda wc: heatmap_files(wc.method, "test"),
    log:
        "results/logs/evaluation_thresholds/{method}.log",
    benchmark:
        "results/benchmarks/evaluation_thresholds/{method}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/spatial-msma.yaml"
    script:
        "../workflow/scripts/evaluation_thresholds.py"


rule evaluate:
    input:
        heatmap_dir="results/heatmaps/{method}/test_lesioned",
        masks=lambda wc: set_lesion_masks("test_lesioned"),
        brainmasks=lambda wc: set_brainmasks("test_lesioned"),
        thresholds="results/thresholds/{method}.json",
        code=package_code("evaluation/metrics.py", "evaluation/postprocess.py", "evaluation/pipeline.py"),
    output:
        "results/metrics/{method}_{protocol}.csv",
    params:
        cfg=config["evaluation"],
        method="{method}",
        protocol="{protocol}",
        heatmaps=lambda wc: heatmap_files(wc.method, "test_lesioned"),
    log:
        "results/logs/evaluate/{method}_{protocol}.log",
    benchmark:
        "results/benchmarks/evaluate/{method}_{protocol}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/spatial-msma.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule table1:
    input:
        metrics=expand("results/metrics/{method}_{protocol}.csv", method=METHODS, protocol=PROTOCOLS),
        thresholds=expand("results/thresholds/{method}.json", method=METHODS),
        code=package_code("evaluation/tables.py"),
    output:
        oracle_csv=report("results/table1.csv", caption="../report/table1.rst", category="Table 1"),
        oracle_md="results/table1.md",
        **{f"{p}_csv": report(f"results/table1_{p}.csv", caption="../report/table1_deployable.rst",
                              category="Table 1", labels={"protocol": p}) for p in PROTOCOLS[1:]},
        **{f"{p}_md": f"results/table1_{p}.md" for p in PROTOCOLS[1:]},
        size_bins_csv="results/table1_size_bins.csv",
    params:
        cfg=config["evaluation"],
    log:
        "results/logs/table1.log",
    benchmark:
        "results/benchmarks/table1.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/spatial-msma.yaml"
    script:
        "../workflow/scripts/table1.py"


rule evaluation_figures:
    input:
        heatmap_dirs=expand("results/heatmaps/{method}/test_lesioned", method=METHODS),
        images=lambda wc: set_images("test_lesioned"),
        masks=lambda wc: set_lesion_masks("test_lesioned"),
        brainmasks=lambda wc: set_brainmasks("test_lesioned"),
        thresholds=expand("results/thresholds/{method}.json", method=METHODS),
        code=package_code("evaluation/figures.py"),
    output:
        montage=report("results/figures/montage.png", caption="../report/montage.rst", category="Heatmaps"),
        froc=report("results/figures/froc.png", caption="../report/froc.rst", category="Detection"),
    params:
        cfg=config["evaluation"],
        seed=config["seed"],
        heatmaps=lambda wc: [f for m in METHODS for f in heatmap_files(m, "test_lesioned")],
    log:
        "results/logs/evaluation_figures.log",
    benchmark:
        "results/benchmarks/evaluation_figures.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/spatial-msma.yaml"
    script:
        "../workflow/scripts/evaluation_figures.py"
