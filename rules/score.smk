# Score model: VE-SDE denoising score matching, then the score-norm cache of every image set, then
# image-level MSMA (a GMM on whole-image score norms).


rule train_score_model:
    input:
        train=lambda wc: set_images("train"),
        train_masks=lambda wc: set_brainmasks("train"),
        val=lambda wc: set_images("val"),
        code=script_code("train_score_model.py"),
    output:
        model="{run}/models/score/model.pt",
        log="{run}/models/score/training_log.csv",
        figure=report("{run}/figures/score_training.png", caption="../report/score_training.rst",
                      category="Training"),
    params:
        cfg=config["score"],
        seed=lambda wc: run_seed(wc.run),
        checkpoint_dir="{run}/checkpoints/score",
    log:
        "{run}/logs/train_score_model.log",
    benchmark:
        "{run}/benchmarks/train_score_model.tsv"
    priority: 10  # Spatial-MSMA's chain first; the baselines fill the other core
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
        gpu=gpu_count("score"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/train_score_model.py"


rule score_norms:
    input:
        model="{run}/models/score/model.pt",
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        code=script_code("score_norms.py"),
    output:
        manifest="{run}/score_norms/{set}/manifest.tsv",
    params:
        cfg=config["score_norms"],
        subjects=lambda wc: set_volumes(wc.set),
    log:
        "{run}/logs/score_norms/{set}.log",
    benchmark:
        "{run}/benchmarks/score_norms/{set}.tsv"
    priority: 10  # Spatial-MSMA's chain first; the baselines fill the other core
    # 1 thread, the train set too: a 2-thread job waits for two cores free at once while 1-thread baseline
    # jobs keep taking the one that frees up (benchmarks/README.md)
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_count("score_norms"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/score_norms.py"


rule msma_image:
    input:
        train="results/score_norms/train/manifest.tsv",
        val="results/score_norms/val/manifest.tsv",
        test="results/score_norms/test/manifest.tsv",
        test_lesioned="results/score_norms/test_lesioned/manifest.tsv",
        lesion_masks=lambda wc: set_lesion_masks("test_lesioned"),
        code=script_code("msma_image.py"),
    output:
        auroc="results/msma_image_auroc.csv",
        scores="results/msma_image_scores.csv",
        figure=report("results/figures/score_norms.png", caption="../report/score_norms.rst", category="Score norms"),
    params:
        cfg=config["msma_image"],
        seed=config["seed"],
    log:
        "results/logs/msma_image.log",
    benchmark:
        "results/benchmarks/msma_image.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/msma_image.py"


rule score_level_diagnostics:
    # Which noise levels carry lesion signal: per-level voxel AUROC of the raw and of the per-voxel
    # standardised score norms (against the training images) and image AUROC, on the lesioned validation set
    # (for choices) and the test set (reported only).
    input:
        train="results/score_norms/train/manifest.tsv",
        val_lesioned="results/score_norms/val_lesioned/manifest.tsv",
        val="results/score_norms/val/manifest.tsv",
        val_masks=lambda wc: set_lesion_masks("val_lesioned"),
        test_lesioned="results/score_norms/test_lesioned/manifest.tsv",
        test="results/score_norms/test/manifest.tsv",
        test_masks=lambda wc: set_lesion_masks("test_lesioned"),
        code=script_code("score_level_diagnostics.py"),
    output:
        table="results/diagnostics/score_levels.csv",
        figure=report("results/diagnostics/score_levels.png", caption="../report/score_levels.rst",
                      category="Diagnostics"),
    params:
        seed=config["seed"],
    log:
        "results/logs/score_level_diagnostics.log",
    benchmark:
        "results/benchmarks/score_level_diagnostics.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/score_level_diagnostics.py"
