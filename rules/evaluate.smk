# Evaluation: the same thresholds, post-processing and metrics for every detector, then Table 1 and figures.
from spatial_msma.methods import keys, raw_twin  # noqa: E402  (pure Python, no heavy imports)
from spatial_msma.protocols import protocol_name  # noqa: E402

PROTOCOLS = ["oracle"] + [protocol_name(level) for level in config["evaluation"]["fpr_levels"]]
METHODS = config["methods"]
# The ablation table: Spatial-MSMA, its ablations and the per-voxel Gaussian, with the z-score floor.
ABLATION_METHODS = keys("floor", "spatial_msma", "ablation")
# The paper-form table: each reconstruction baseline of the run in Table 1's heatmap form and in the papers'
# raw residual (the same job writes both), with the z-score floor.
PAPER_FORM_METHODS = keys("floor") + [
    key for method in METHODS if method in RESIDUAL_METHODS for key in (method, raw_twin(method))
]
# Validation (lesioned val split, oracle protocol): Spatial-MSMA and the z-score floor (what choices are made
# on), the learned baselines unless diagnostics.validation_baselines is off, and the ablations when on.
VALIDATION_METHODS = list(dict.fromkeys(
    [m for m in METHODS if config["diagnostics"]["validation_baselines"] or m in keys("floor", "spatial_msma")]
    + (ABLATION_METHODS if config["diagnostics"]["ablations"] else [])
))


rule evaluation_thresholds:
    # One threshold per method and FPR level, fixed on healthy heatmaps (val + lesion-free test).
    input:
        val_dir="{run}/heatmaps/{method}/val",
        test_dir="{run}/heatmaps/{method}/test",
        val_brainmasks=lambda wc: set_brainmasks("val"),
        test_brainmasks=lambda wc: set_brainmasks("test"),
        code=script_code("evaluation_thresholds.py"),
    output:
        "{run}/thresholds/{method}.json",
    params:
        cfg=section_scope("evaluation", "metrics"),
        method="{method}",
        val_heatmaps=lambda wc: heatmap_files(wc.method, run=wc.run, image_set="val"),
        test_heatmaps=lambda wc: heatmap_files(wc.method, run=wc.run, image_set="test"),
    log:
        "{run}/logs/evaluation_thresholds/{method}.log",
    benchmark:
        "{run}/benchmarks/evaluation_thresholds/{method}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/evaluation_thresholds.py"


rule evaluate:
    input:
        heatmap_dir="{run}/heatmaps/{method}/test_lesioned",
        masks=lambda wc: set_lesion_masks("test_lesioned"),
        brainmasks=lambda wc: set_brainmasks("test_lesioned"),
        thresholds="{run}/thresholds/{method}.json",
        code=script_code("evaluate.py"),
    output:
        "{run}/metrics/{method}_{protocol}.csv",
    params:
        cfg=section_scope("evaluation", "metrics"),
        method="{method}",
        protocol="{protocol}",
        heatmaps=lambda wc: heatmap_files(wc.method, run=wc.run, image_set="test_lesioned"),
    log:
        "{run}/logs/evaluate/{method}_{protocol}.log",
    benchmark:
        "{run}/benchmarks/evaluate/{method}_{protocol}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/evaluate.py"


rule table1_stats:
    # Paired statistics: every method against every other on the same test volumes, per protocol and metric
    # (mean difference, 95 % bootstrap interval over subjects, Wilcoxon p on per-subject means).
    input:
        metrics=expand("{{run}}/metrics/{method}_{protocol}.csv", method=METHODS, protocol=PROTOCOLS),
        participants="results/cohort/participants.tsv",  # the independent unit of the statistics
        code=script_code("table1_stats.py"),
    output:
        csv="{run}/table1_stats.csv",
        figure=report("{run}/figures/paired_differences.png", caption="../report/paired_differences.rst",
                      category="Table 1"),
    params:
        seed=config["seed"],
    log:
        "{run}/logs/table1_stats.log",
    benchmark:
        "{run}/benchmarks/table1_stats.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/table1_stats.py"


rule table1:
    input:
        metrics=expand("{{run}}/metrics/{method}_{protocol}.csv", method=METHODS, protocol=PROTOCOLS),
        thresholds=expand("{{run}}/thresholds/{method}.json", method=METHODS),
        stats="{run}/table1_stats.csv",
        participants="results/cohort/participants.tsv",  # the independent unit of the statistics
        code=script_code("table1.py"),
    output:
        oracle_csv=report("{run}/table1.csv", caption="../report/table1.rst", category="Table 1"),
        oracle_md="{run}/table1.md",
        **{f"{p}_csv": report(f"{{run}}/table1_{p}.csv", caption="../report/table1_deployable.rst",
                              category="Table 1", labels={"protocol": p}) for p in PROTOCOLS[1:]},
        **{f"{p}_md": f"{{run}}/table1_{p}.md" for p in PROTOCOLS[1:]},
        size_bins_csv="{run}/table1_size_bins.csv",
    params:
        cfg=section_scope("evaluation", "metrics"),
    log:
        "{run}/logs/table1.log",
    benchmark:
        "{run}/benchmarks/table1.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/table1.py"


rule evaluation_figures:
    input:
        heatmap_dirs=expand("results/heatmaps/{method}/test_lesioned", method=METHODS),
        images=lambda wc: set_images("test_lesioned"),
        masks=lambda wc: set_lesion_masks("test_lesioned"),
        brainmasks=lambda wc: set_brainmasks("test_lesioned"),
        thresholds=expand("results/thresholds/{method}.json", method=METHODS),
        code=script_code("evaluation_figures.py"),
    output:
        montage=report("results/figures/montage.png", caption="../report/montage.rst", category="Heatmaps"),
        froc=report("results/figures/froc.png", caption="../report/froc.rst", category="Detection"),
    params:
        cfg=section_scope("evaluation", "figures"),
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
        ENV_TORCH
    script:
        "../workflow/scripts/evaluation_figures.py"


rule evaluate_validation:
    # The lesioned validation split (lesions from seed + 1), oracle protocol: what choices are made on.
    input:
        heatmap_dir="results/heatmaps/{method}/val_lesioned",
        masks=lambda wc: set_lesion_masks("val_lesioned"),
        brainmasks=lambda wc: set_brainmasks("val_lesioned"),
        code=script_code("evaluate.py"),
    output:
        "results/validation/metrics/{method}_oracle.csv",
    params:
        cfg=section_scope("evaluation", "metrics"),
        method="{method}",
        protocol="oracle",
        heatmaps=lambda wc: heatmap_files(wc.method, "val_lesioned"),
    log:
        "results/logs/evaluate_validation/{method}.log",
    benchmark:
        "results/benchmarks/evaluate_validation/{method}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/evaluate.py"


rule validation_table:
    input:
        metrics=expand("results/validation/metrics/{method}_oracle.csv", method=VALIDATION_METHODS),
        participants="results/cohort/participants.tsv",  # the independent unit of the statistics
        code=script_code("table1.py"),
    output:
        oracle_csv=report("results/validation/table.csv", caption="../report/validation_table.rst",
                          category="Validation"),
        oracle_md="results/validation/table.md",
        size_bins_csv="results/validation/size_bins.csv",
    params:
        cfg=section_scope("evaluation", "metrics"),
        title="Validation (lesioned validation split)",
        expected_methods=VALIDATION_METHODS,
        protocols=["oracle"],
        image_set="lesioned validation",
    log:
        "results/logs/validation_table.log",
    benchmark:
        "results/benchmarks/validation_table.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/table1.py"


rule ablation_table:
    # Spatial-MSMA against its ablations on the test split, every protocol, through the same evaluation.
    input:
        metrics=expand("results/metrics/{method}_{protocol}.csv", method=ABLATION_METHODS, protocol=PROTOCOLS),
        thresholds=expand("results/thresholds/{method}.json", method=ABLATION_METHODS),
        participants="results/cohort/participants.tsv",  # the independent unit of the statistics
        code=script_code("table1.py"),
    output:
        oracle_csv=report("results/diagnostics/ablations.csv", caption="../report/ablations.rst",
                          category="Diagnostics"),
        oracle_md="results/diagnostics/ablations.md",
        **{f"{p}_csv": f"results/diagnostics/ablations_{p}.csv" for p in PROTOCOLS[1:]},
        **{f"{p}_md": f"results/diagnostics/ablations_{p}.md" for p in PROTOCOLS[1:]},
        size_bins_csv="results/diagnostics/ablations_size_bins.csv",
    params:
        cfg=section_scope("evaluation", "metrics"),
        title="Ablations of Spatial-MSMA (test split)",
        expected_methods=ABLATION_METHODS,
    log:
        "results/logs/ablation_table.log",
    benchmark:
        "results/benchmarks/ablation_table.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/table1.py"


rule paper_form_table:
    # The reconstruction baselines in both heatmap forms (standardised, the papers' raw residual) on the test
    # split, every protocol, through the same evaluation.
    input:
        metrics=expand("results/metrics/{method}_{protocol}.csv", method=PAPER_FORM_METHODS, protocol=PROTOCOLS),
        thresholds=expand("results/thresholds/{method}.json", method=PAPER_FORM_METHODS),
        participants="results/cohort/participants.tsv",  # the independent unit of the statistics
        code=script_code("table1.py"),
    output:
        oracle_csv=report("results/diagnostics/paper_form.csv", caption="../report/paper_form.rst",
                          category="Diagnostics"),
        oracle_md="results/diagnostics/paper_form.md",
        **{f"{p}_csv": f"results/diagnostics/paper_form_{p}.csv" for p in PROTOCOLS[1:]},
        **{f"{p}_md": f"results/diagnostics/paper_form_{p}.md" for p in PROTOCOLS[1:]},
        size_bins_csv="results/diagnostics/paper_form_size_bins.csv",
    params:
        cfg=section_scope("evaluation", "metrics"),
        title="Reconstruction baselines: Table 1's heatmap form and the papers' raw residual (test split)",
        expected_methods=PAPER_FORM_METHODS,
    log:
        "results/logs/paper_form_table.log",
    benchmark:
        "results/benchmarks/paper_form_table.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/table1.py"
