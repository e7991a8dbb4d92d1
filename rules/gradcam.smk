# The GradCAM-MSMA baseline: a GMM on whole-image score norms of the train images (image-level MSMA), its
# negative log-likelihood explained per voxel by Guided Grad-CAM through the score network.


rule gradcam_msma_gmm:
    input:
        train="{run}/score_norms/train/manifest.tsv",
        code=script_code("gradcam_msma_gmm.py"),
    output:
        "{run}/models/gradcam_msma/gmm.npz",
    params:
        cfg=section_scope("gradcam_msma", "training"),
        seed=lambda wc: run_seed(wc.run),
    log:
        "{run}/logs/gradcam_msma_gmm.log",
    benchmark:
        "{run}/benchmarks/gradcam_msma_gmm.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/gradcam_msma_gmm.py"


rule heatmap_gradcam_msma:
    input:
        score_model="{run}/models/score/model.pt",
        gmm="{run}/models/gradcam_msma/gmm.npz",
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        code=script_code("heatmap_gradcam_msma.py"),
    output:
        directory("{run}/heatmaps/gradcam_msma/{set}"),
    params:
        cfg=section_scope("gradcam_msma", "heatmap"),
    log:
        "{run}/logs/heatmap_gradcam_msma/{set}.log",
    benchmark:
        "{run}/benchmarks/heatmap_gradcam_msma/{set}.tsv"
    threads: 1  # keeps about one core busy even with two: 1 lets two run side by side
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_count("gradcam_msma"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/heatmap_gradcam_msma.py"
