# Lesion simulation (MS-MIST-style) on the test split, and on the validation split for model selection.


rule simulate_lesions:
    # One lesion draw of one subject: draws differ by their volume id, which seeds the simulator.
    input:
        image="results/cropped/{subject}.nii.gz",
        brainmask="results/cropped/{subject}_brainmask.nii.gz",
        val_split="results/cohort/val.txt",
        lesion_folder=lesion_folder_inputs(),
        code=script_code("simulate_lesions.py"),
    output:
        image="results/lesions/{subject}_draw-{draw}_image.nii.gz",
        mask="results/lesions/{subject}_draw-{draw}_mask.nii.gz",
        table="results/lesions/{subject}_draw-{draw}_lesions.tsv",
    params:
        cfg=config["lesions"],
        seed=lambda wc, input: lesion_seed(wc.subject, input.val_split),
        volume=lambda wc: volume_ids([wc.subject], int(wc.draw))[-1],
    wildcard_constraints:
        draw="[1-9][0-9]*",
    log:
        "results/logs/simulate_lesions/{subject}_draw-{draw}.log",
    benchmark:
        "results/benchmarks/simulate_lesions/{subject}_draw-{draw}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/simulate_lesions.py"


rule lesion_summary:
    input:
        tables=lambda wc: [f"results/lesions/{v}_lesions.tsv" for v in set_volumes("test_lesioned")],
        masks=lambda wc: set_lesion_masks("test_lesioned"),
        images=lambda wc: set_images("test_lesioned"),
        code=script_code("lesion_summary.py"),
    output:
        table="results/lesions/summary.tsv",
        figure=report("results/figures/lesions.png", caption="../report/lesions.rst", category="Lesions"),
    params:
        n_show=config["figures"]["lesion_subjects"],
    log:
        "results/logs/lesion_summary.log",
    benchmark:
        "results/benchmarks/lesion_summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/lesion_summary.py"
