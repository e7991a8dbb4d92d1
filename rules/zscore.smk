# The intensity z-score detector: voxelwise mean/SD of the healthy training images (the floor of Table 1).


rule zscore_model:
    input:
        images=lambda wc: set_images("train"),
        code=script_code("zscore_model.py"),
    output:
        "{run}/models/zscore/model.npz",
    params:
        sd_floor=config["zscore"]["sd_floor"],
    log:
        "{run}/logs/zscore_model.log",
    benchmark:
        "{run}/benchmarks/zscore_model.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/zscore_model.py"


rule heatmap_zscore:
    input:
        model="{run}/models/zscore/model.npz",
        images=lambda wc: set_images(wc.set),
        masks=lambda wc: set_brainmasks(wc.set),
        code=script_code("heatmap_zscore.py"),
    output:
        directory("{run}/heatmaps/zscore/{set}"),
    log:
        "{run}/logs/heatmap_zscore/{set}.log",
    benchmark:
        "{run}/benchmarks/heatmap_zscore/{set}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/heatmap_zscore.py"
