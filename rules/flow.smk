# Spatial-MSMA: the conditional flow on patch score norms (and its ablations), then per-voxel NLL heatmaps.


rule train_flow:
    input:
        train_manifest="{run}/score_norms/train/manifest.tsv",
        val_manifest="{run}/score_norms/val/manifest.tsv",
        train_images=lambda wc: set_images("train"),
        val_images=lambda wc: set_images("val"),
        code=script_code("train_flow.py"),
    output:
        model="{run}/models/{method}/model.pt",
        log="{run}/models/{method}/training_log.csv",
        figure=report("{run}/figures/{method}_training.png", caption="../report/flow_training.rst",
                      category="Training", labels={"model": "{method}"}),
    wildcard_constraints:
        method="|".join(FLOW_METHODS),
    params:
        cfg=lambda wc: flow_section(section_scope("flow", "training"), wc.method),
        seed=lambda wc: run_seed(wc.run),
        checkpoint_dir="{run}/checkpoints/{method}",
    log:
        "{run}/logs/train_flow/{method}.log",
    benchmark:
        "{run}/benchmarks/train_flow/{method}.tsv"
    priority: 10  # Spatial-MSMA's chain first; the baselines fill the other core
    # One thread: the flow's matrices are small, so a second thread costs more in synchronisation than it buys.
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_count("flow"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/train_flow.py"


rule heatmap_flow:
    input:
        model="{run}/models/{method}/model.pt",
        norms_manifest="{run}/score_norms/{set}/manifest.tsv",
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        code=script_code("heatmap_flow.py"),
    output:
        directory("{run}/heatmaps/{method}/{set}"),
    wildcard_constraints:
        method="|".join(FLOW_METHODS),
    params:
        cfg=section_scope("flow", "heatmap"),
    log:
        "{run}/logs/heatmap_flow/{method}_{set}.log",
    benchmark:
        "{run}/benchmarks/heatmap_flow/{method}_{set}.tsv"
    priority: 10  # Spatial-MSMA's chain first; the baselines fill the other core
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_count("flow"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/heatmap_flow.py"
