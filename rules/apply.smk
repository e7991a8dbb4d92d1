# Apply a trained model to new scans (not part of `all`): the model bundle, then per subject registration,
# score norms, heatmap, threshold and post-processing, carried back onto the subject's own T1w; and the check that
# the native-space masks detect what the template-space evaluation detects.
#   snakemake --cores 2 results/bundle                              # everything applying needs, one folder
#   snakemake --cores 2 apply --config apply='{scans: my_scans.tsv}'  # -> results/apply/
#   snakemake --cores 2 results/apply_check/agreement.csv           # the lesioned test volumes, in native space


rule model_bundle:
    input:
        score_model="results/models/score/model.pt",
        flow_model="results/models/spatial_msma/model.pt",
        thresholds="results/thresholds/spatial_msma.json",
        crop_box="results/preprocessed/crop_box.json",
        registration_t1=template_images(config["preprocess"]["registration_mm"])["t1"],
        registration_mask=template_images(config["preprocess"]["registration_mm"])["mask"],
        output_t1=template_images(config["preprocess"]["voxel_mm"])["t1"],
        output_mask=template_images(config["preprocess"]["voxel_mm"])["mask"],
        code=script_code("model_bundle.py"),
    output:
        directory("results/bundle"),
    params:
        settings={
            "method": "spatial_msma",
            "preprocess": config["preprocess"],
            "score_norms": config["score_norms"],
            "flow": section_scope("flow", "heatmap"),
            "evaluation": section_scope("evaluation", "metrics"),
        },
        config={key: value for key, value in config.items() if key != "apply"},
    log:
        "results/logs/model_bundle.log",
    benchmark:
        "results/benchmarks/model_bundle.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/model_bundle.py"


rule apply_bundle_check:
    input:
        bundle=lambda wc: apply_bundle(wc.root),
        code=script_code("apply_bundle_check.py"),
    output:
        "{root}/bundle_check.json",
    wildcard_constraints:
        root=f"{APPLY_ROOT}|{CHECK_ROOT}",
    params:
        fpr=APPLY["fpr"],
        device=APPLY["device"],
    log:
        "{root}/logs/bundle_check.log",
    benchmark:
        "{root}/benchmarks/bundle_check.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/apply_bundle_check.py"


rule apply_subject:
    input:
        unpack(apply_scan_inputs),
        bundle=lambda wc: apply_bundle(wc.root),
        checked="{root}/bundle_check.json",
        code=script_code("apply_subject.py"),
    output:
        status="{root}/{subject}/{subject}_status.json",
        overlay=report("{root}/{subject}/{subject}_overlay.png", caption="../report/apply_overlay.rst",
                       category="Apply", subcategory="{root}", labels={"subject": "{subject}"}),
    wildcard_constraints:
        root=f"{APPLY_ROOT}|{CHECK_ROOT}",
    params:
        t1w=lambda wc: apply_scan_paths(wc)["t1w"],
        t2w=lambda wc: apply_scan_paths(wc)["t2w"],
        fpr=APPLY["fpr"],
        device=APPLY["device"],
    log:
        "{root}/logs/apply/{subject}.log",
    benchmark:
        "{root}/benchmarks/apply/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_count("apply"),
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/apply_subject.py"


rule apply_summary:
    input:
        statuses=lambda wc: [f"{wc.root}/{s}/{s}_status.json" for s in apply_subjects(wc.root)],
        code=script_code("apply_summary.py"),
    output:
        report("{root}/summary.csv", caption="../report/apply_summary.rst", category="Apply",
               subcategory="{root}"),
    wildcard_constraints:
        root=f"{APPLY_ROOT}|{CHECK_ROOT}",
    log:
        "{root}/logs/summary.log",
    benchmark:
        "{root}/benchmarks/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_IMAGING
    script:
        "../workflow/scripts/apply_summary.py"


rule apply:
    # Named target: `snakemake --cores 2 apply` (config apply.scans), then `--report results/apply/report.html apply`.
    input:
        f"{APPLY_ROOT}/summary.csv",


rule native_lesions:
    input:
        unpack(lambda wc: scans_of(subject_of(wc.volume))),
        cropped=lambda wc: f"results/cropped/{subject_of(wc.volume)}.nii.gz",
        brainmask=lambda wc: f"results/cropped/{subject_of(wc.volume)}_brainmask.nii.gz",
        lesioned="results/lesions/{volume}_image.nii.gz",
        lesion_mask="results/lesions/{volume}_mask.nii.gz",
        box="results/preprocessed/crop_box.json",
        registration_t1=template_images(config["preprocess"]["registration_mm"])["t1"],
        registration_mask=template_images(config["preprocess"]["registration_mm"])["mask"],
        output_t1=template_images(config["preprocess"]["voxel_mm"])["t1"],
        output_mask=template_images(config["preprocess"]["voxel_mm"])["mask"],
        code=script_code("native_lesions.py"),
    output:
        t1w=f"{CHECK_ROOT}/scans/{{volume}}_T1w.nii.gz",
        t2w=f"{CHECK_ROOT}/scans/{{volume}}_T2w.nii.gz",
        reference=f"{CHECK_ROOT}/scans/{{volume}}_reference.nii.gz",
    wildcard_constraints:
        volume="sub-[^/]+",
    params:
        settings=config["preprocess"],
        cfg=section_scope("evaluation", "metrics"),
    log:
        f"{CHECK_ROOT}/logs/native_lesions/{{volume}}.log",
    benchmark:
        f"{CHECK_ROOT}/benchmarks/native_lesions/{{volume}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/native_lesions.py"


rule apply_agreement:
    input:
        statuses=lambda wc: [f"{CHECK_ROOT}/{v}/{v}_status.json" for v in set_volumes("test_lesioned")],
        references=lambda wc: [f"{CHECK_ROOT}/scans/{v}_reference.nii.gz" for v in set_volumes("test_lesioned")],
        template_metrics=f"results/metrics/spatial_msma_{protocol_name(APPLY['fpr'])}.csv",
        summary=f"{CHECK_ROOT}/summary.csv",
        code=script_code("apply_agreement.py"),
    output:
        table=report(f"{CHECK_ROOT}/agreement.csv", caption="../report/apply_agreement.rst", category="Apply"),
        summary=f"{CHECK_ROOT}/agreement_summary.csv",
    params:
        volumes=lambda wc: set_volumes("test_lesioned"),
    log:
        f"{CHECK_ROOT}/logs/agreement.log",
    benchmark:
        f"{CHECK_ROOT}/benchmarks/agreement.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../workflow/scripts/apply_agreement.py"
