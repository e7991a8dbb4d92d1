# Inpaint and Restoration: two Table-1 baselines that sample with the SAME score model as Spatial-MSMA
# (VE-SDE predictor-corrector sampler, spatial_msma.baselines.sampling) and score the sampler's error.


rule heatmap_inpaint:
    # Checkerboard cubes hidden and in-painted (RePaint-style replacement of the visible ones), alternating
    # pattern and complement over runs; heatmap = mean L1 error (summed over channels) of the hidden voxels.
    input:
        model="{run}/models/score/model.pt",
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        code=script_code("heatmap_inpaint.py"),
    output:
        directory("{run}/heatmaps/inpaint/{set}"),
    params:
        cfg=config["inpaint"],
        seed=lambda wc: run_seed(wc.run),
    log:
        "{run}/logs/heatmap_inpaint/{set}.log",
    benchmark:
        "{run}/benchmarks/heatmap_inpaint/{set}.tsv"
    threads: 1  # a sampler keeps about one core busy even with two: 1 lets two run side by side
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_count("inpaint"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/heatmap_inpaint.py"


rule heatmap_restoration:
    # Perturbed to sigma(t_start), sampled back down to sigma_min; heatmap = mean over runs of |x - restored|
    # summed over channels.
    input:
        model="{run}/models/score/model.pt",
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        code=script_code("heatmap_restoration.py"),
    output:
        directory("{run}/heatmaps/restoration/{set}"),
    params:
        cfg=config["restoration"],
        seed=lambda wc: run_seed(wc.run),
    log:
        "{run}/logs/heatmap_restoration/{set}.log",
    benchmark:
        "{run}/benchmarks/heatmap_restoration/{set}.tsv"
    threads: 1  # a sampler keeps about one core busy even with two: 1 lets two run side by side
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_count("restoration"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/heatmap_restoration.py"
