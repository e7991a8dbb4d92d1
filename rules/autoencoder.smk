# The AE baseline (after Luo et al. 2023): a residual 3D autoencoder trained with MSE on healthy train images
# (its heatmaps: reconstruction_baselines.smk).


rule train_ae:
    input:
        train=lambda wc: set_images("train"),
        val=lambda wc: set_images("val"),
        code=script_code("train_ae.py"),
        # ordering only (not read): see ae_after_score_model in config/schema.yaml
        after_score_model=lambda wc: f"{wc.run}/models/score/model.pt" if config["ae_after_score_model"] else [],
    output:
        model="{run}/models/ae/model.pt",
        log="{run}/models/ae/training_log.csv",
        figure=report("{run}/figures/ae_training.png", caption="../report/ae_training.rst", category="Training"),
    params:
        cfg=section_scope("ae", "training"),
        seed=lambda wc: run_seed(wc.run),
        checkpoint_dir="{run}/checkpoints/ae",
    log:
        "{run}/logs/train_ae.log",
    benchmark:
        "{run}/benchmarks/train_ae.tsv"
    # 1 thread: a 2-thread job waits until two cores are free at once, which on a laptop-sized run comes only
    # at its end (timings in benchmarks/README.md)
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_count("ae"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/train_ae.py"
