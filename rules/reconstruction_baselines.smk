# The reconstruction baselines of Table 1: the AE (its model: autoencoder.smk), Inpaint and Restoration (the
# SAME score model as Spatial-MSMA, sampled by the VE-SDE predictor-corrector sampler). Each makes a healthy
# estimate x̂ of every image; the heatmap is its residual x - x̂, raw or standardised per voxel against the
# residuals of healthy training images (residual_heatmaps; spatial_msma.baselines.residual).


rule residual_reference:
    # Per-voxel mean and SD of the signed residual on healthy training images (the standardised form's reference).
    input:
        model=estimator_model,
        images=lambda wc: [f"results/cropped/{v}.nii.gz" for v in reference_volumes()],
        masks=lambda wc: [f"results/cropped/{v}_brainmask.nii.gz" for v in reference_volumes()],
        code=script_code("residual_reference.py"),
    output:
        "{run}/models/{residual_method}/residual_reference.npz",
    params:
        method="{residual_method}",
        cfg=estimator_params,
        sd_floor=config["residual_heatmaps"]["sd_floor"],
        seed=lambda wc: run_seed(wc.run),
    log:
        "{run}/logs/residual_reference/{residual_method}.log",
    benchmark:
        "{run}/benchmarks/residual_reference/{residual_method}.tsv"
    threads: 1  # a sampler keeps about one core busy even with two: 1 lets two run side by side
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=lambda wc: gpu_count(wc.residual_method),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/residual_reference.py"


rule heatmap_residual:
    # One healthy estimate per image (AE reconstruction; mean of the in-paintings of a voxel over the runs that
    # hid it; mean of the restorations), then both heatmap forms: Table 1's and the papers' raw |x - x̂|.
    input:
        model=estimator_model,
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        reference=lambda wc: (
            [f"{wc.run}/models/{wc.residual_method}/residual_reference.npz"]
            if residual_form(wc.residual_method) == "standardised"
            else []
        ),
        code=script_code("heatmap_residual.py"),
    output:
        table=directory("{run}/heatmaps/{residual_method}/{set}"),
        raw=directory("{run}/heatmaps/{residual_method}_raw/{set}"),
    params:
        method="{residual_method}",
        cfg=estimator_params,
        form=lambda wc: residual_form(wc.residual_method),
        error=lambda wc: config["ae"]["error"] if wc.residual_method == "ae" else "abs",
        seed=lambda wc: run_seed(wc.run),
    log:
        "{run}/logs/heatmap_residual/{residual_method}_{set}.log",
    benchmark:
        "{run}/benchmarks/heatmap_residual/{residual_method}_{set}.tsv"
    threads: 1  # a sampler keeps about one core busy even with two: 1 lets two run side by side
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=lambda wc: gpu_count(wc.residual_method),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/heatmap_residual.py"
