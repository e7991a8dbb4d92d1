# Shared helpers: the config check, where inputs come from, and which subjects each split holds (known after
# filter_cohort).
import functools
import os
import sys
from pathlib import Path

import pandas as pd
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

PACKAGE = Path(workflow.basedir) / "src" / "spatial_msma"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
# The package is read at parse time: code inputs, method keys, and the config classes the check builds.
sys.path.insert(0, str(PACKAGE.parent))
from spatial_msma.apply.scans import read_scan_list  # noqa: E402  (no torch, no image read)
from spatial_msma.config_check import check_config  # noqa: E402
from spatial_msma.config_scopes import scope  # noqa: E402
from spatial_msma.input_manifest import BIDS_PATTERNS, LESION_MASK_PATTERNS, update_manifest  # noqa: E402
from spatial_msma.io import InputError  # noqa: E402
from spatial_msma.lesions.volumes import subject_of, volume_ids  # noqa: E402
from spatial_msma.methods import flow_keys, flow_section, residual_keys  # noqa: E402
from spatial_msma.run_lock import record_lock_owner, release_lock_owner, remove_stale_locks  # noqa: E402
from spatial_msma.script_modules import modules_run_by  # noqa: E402

SYNTHETIC_BIDS = "resources/synthetic/bids"
SNAKEMAKE_DIR = ".snakemake"

# Everything a job would reject, rejected now: before Snakemake plans a job, and so before it deletes the
# old outputs of one (spatial_msma.config_check).
try:
    check_config(config, yaml.safe_load((Path(workflow.basedir) / "config" / "schema.yaml").read_text()))
except InputError as err:
    raise WorkflowError(str(err)) from None

# A run killed with kill -9 leaves its lock; the same command must work again (spatial_msma.run_lock).
if workflow.is_main_process:
    for pid in remove_stale_locks(SNAKEMAKE_DIR):
        logger.warning(f"Removed the lock of an earlier Snakemake run (process {pid}) that ended without unlocking.")


onstart:
    check_cuda_for_local_jobs()
    record_lock_owner(SNAKEMAKE_DIR, getattr(workflow.persistence, "_lockfile", {}).values())


onsuccess:
    release_lock_owner(SNAKEMAKE_DIR)


onerror:
    release_lock_owner(SNAKEMAKE_DIR)


def check_cuda_for_local_jobs():
    """A GPU asked for by the config (use_gpu, a section's device cuda) must be there when the jobs run on this
    machine: without it the run would do every CPU stage first and fail at the first GPU job. Checked when
    the jobs start, because only then is it known whether they run here or are submitted (SLURM)."""
    if not workflow.local_exec:
        return
    asked = (["use_gpu"] if config["use_gpu"] else []) + [
        f"{section}.device" for section, values in config.items()
        if isinstance(values, dict) and str(values.get("device", "")).startswith("cuda")
    ]
    if asked:
        import torch

        if not torch.cuda.is_available():
            raise WorkflowError(f"config {asked[0]}: asks for a GPU, but torch finds no CUDA device on this machine, "
                                "where the jobs run; set use_gpu: false (and the devices to auto or cpu), or submit "
                                "the jobs to GPU nodes (--profile profiles/slurm)")

# Conda environments, used with `--sdm conda` (README, Scale-out; paths relative to rules/): the rules that
# need no torch, and the torch rules in the CPU or the CUDA build (config `conda_torch`).
ENV_IMAGING = "../envs/imaging.yaml"
ENV_TORCH = f"../envs/torch-{config['conda_torch']}.yaml"
# The envs hold the dependencies, not this package: a job's script finds it on the import path that
# Snakemake hands down from its own install (`make install` / `pip install -e .`).


def script_code(script):
    """The package modules a rule's script runs (its imports, followed through the package), as the rule's
    inputs: editing any of them reruns the rule and what follows. Relative to the working directory, so a
    checkout moved or copied together with its results keeps the same input paths and reruns nothing."""
    return [os.path.relpath(path) for path in modules_run_by(SCRIPTS / script, PACKAGE)]


def section_scope(section, kind):
    """The keys of a config section a job of one kind reads (spatial_msma.config_scopes): a rule's params hold
    only these, so a heatmap-only or figure-only key never reruns a training or a metrics job."""
    return scope(section, config[section], kind)


ANATOMY_DIR = Path(workflow.basedir) / "resources" / "anatomies"


def label_map_cohort():
    """The built-in cohort made from the 20 head label maps (synthetic.anatomy: labelmaps): its subjects come
    with label maps, so preprocessing also checks each registration (results/qc/registration_dice.tsv)."""
    return config["cohort"]["source"] == "synthetic" and config["synthetic"]["anatomy"] == "labelmaps"


def anatomy_inputs():
    """The label maps the built-in cohort is made from (none for the MNI-template cohort), relative to the
    working directory as script_code's paths are."""
    if not label_map_cohort():
        return []
    return [os.path.relpath(path) for path in sorted(ANATOMY_DIR.glob("training_seg_*.nii.gz"))]


def registration_qc_outputs():
    """The per-subject registration check, an output of preprocess for the label-map cohort only."""
    return {"dice": "results/qc/registration/{subject}.tsv"} if label_map_cohort() else {}


def registration_qc_targets():
    return ["results/qc/registration_dice.tsv"] if label_map_cohort() else []


def bids_dir():
    return SYNTHETIC_BIDS if config["cohort"]["source"] == "synthetic" else config["cohort"]["bids_dir"]


def cohort_inputs(wildcards=None):
    """The cohort as inputs of the filter: the built-in cohort's folder (a rule's output), or the manifest of
    the user's BIDS folder (spatial_msma.input_manifest: a replaced scan changes it) and CBCL table."""
    if config["cohort"]["source"] == "synthetic":
        return {"bids": SYNTHETIC_BIDS}
    manifest = update_manifest(config["cohort"]["bids_dir"], BIDS_PATTERNS, "results/inputs/bids_dir.tsv")
    return {"bids_manifest": manifest, "cbcl": config["cohort"]["cbcl_table"]}


def lesion_folder_inputs():
    """The manifest of the lesion folder (config lesions.folder), so a mask replaced or added there reruns the
    lesion simulation; nothing for simulated lesions."""
    if config["lesions"]["source"] != "folder":
        return []
    return [update_manifest(config["lesions"]["folder"], LESION_MASK_PATTERNS, "results/inputs/lesions_folder.tsv")]


def cbcl_table_path():
    if config["cohort"]["source"] == "synthetic":
        return f"{SYNTHETIC_BIDS}/phenotype/mh_p_cbcl.csv"
    return config["cohort"]["cbcl_table"]


def split_members(split):
    """Subjects of a split, read from the checkpoint's split file (re-evaluated once it exists)."""
    path = checkpoints.filter_cohort.get().output[split]
    return Path(path).read_text().split()


def included_subjects():
    return sorted(split_members("train") + split_members("val") + split_members("test"))


#: The template's tissue classes on its 1 mm grid (spatial_msma.registration_qc), for the registration check.
TEMPLATE_TISSUES = "results/template/res-1mm_tissue_classes.nii.gz"


def template_images(voxel_mm):
    """Template T1 and brain mask files at one voxel size (rule template_images), read by every preprocess job."""
    stem = f"results/template/res-{float(voxel_mm):g}mm"
    return {"t1": f"{stem}_T1w.nii.gz", "mask": f"{stem}_brainmask.nii.gz"}


def scans_of(subject):
    """The T1w and T2w paths of one subject, as recorded in participants.tsv."""
    table = pd.read_csv(checkpoints.filter_cohort.get().output.participants, sep="\t", dtype=str)
    row = table.set_index("participant_id").loc[subject]
    return {"t1w": row["t1w"], "t2w": row["t2w"]}


def subject_scans(wildcards):
    """A subject's scans; for the label-map cohort also its label map and the template's tissue classes (the
    registration check)."""
    scans = scans_of(wildcards.subject)
    if label_map_cohort():
        table = pd.read_csv(checkpoints.filter_cohort.get().output.participants, sep="\t", dtype=str)
        scans["labels"] = table.set_index("participant_id").loc[wildcards.subject, "labels"]
        scans["tissue_classes"] = TEMPLATE_TISSUES
    return scans


def raw_scans(modality):
    """Every included subject's raw scan of one modality (t1w, t2w), in included_subjects() order."""
    return [scans_of(subject)[modality] for subject in included_subjects()]


# Image sets every detector is run on. Lesioned sets: the test split (scored once, at the end) and the
# validation split with lesions from another seed (for choices that must not look at test lesions).
# Density models on cached score norms: Spatial-MSMA and its ablations (one model file and heatmap set each).
FLOW_METHODS = flow_keys()
# Reconstruction baselines (heatmap = residual of a healthy estimate): each job also writes the raw-residual twin.
RESIDUAL_METHODS = residual_keys()

IMAGE_SETS = {
    "train": ("train", False),
    "val": ("val", False),
    "test": ("test", False),
    "val_lesioned": ("val", True),
    "test_lesioned": ("test", True),
}


def set_subjects(image_set):
    return split_members(IMAGE_SETS[image_set][0])


def set_volumes(image_set):
    """The image ids of a set: its subjects, or for a lesioned set each subject's lesion draws (config
    lesion_draws; lesions.volumes names them)."""
    subjects = set_subjects(image_set)
    split, lesioned = IMAGE_SETS[image_set]
    return volume_ids(subjects, config["lesion_draws"][split]) if lesioned else subjects


def set_images(image_set):
    """The 2-channel images of a set, one per volume: cropped originals, or their lesioned copies."""
    pattern = "results/lesions/{}_image.nii.gz" if IMAGE_SETS[image_set][1] else "results/cropped/{}.nii.gz"
    return [pattern.format(v) for v in set_volumes(image_set)]


def set_brainmasks(image_set):
    """One brain mask per image of the set, in the same order (the draws of a subject share its mask)."""
    return [f"results/cropped/{subject_of(v)}_brainmask.nii.gz" for v in set_volumes(image_set)]


def set_lesion_masks(image_set):
    return [f"results/lesions/{v}_mask.nii.gz" for v in set_volumes(image_set)]


def heatmap_files(method, image_set, run="results"):
    """Files inside the heatmap directory of a method and set (of one training run), one per volume."""
    return [f"{run}/heatmaps/{method}/{image_set}/{v}.nii.gz" for v in set_volumes(image_set)]


# Reconstruction baselines: which model a method estimates with, its config as the estimate reads it, its heatmap form.
def estimator_model(wildcards):
    """The AE's own model, or the score model the samplers draw with."""
    return f"{wildcards.run}/models/{'ae' if wildcards.residual_method == 'ae' else 'score'}/model.pt"


def estimator_params(wildcards):
    """The method's config section as its estimate reads it (the AE: only its device; its error type is the
    heatmap rule's own param, so changing it never refits the residual reference)."""
    method = wildcards.residual_method
    return {"device": config["ae"]["device"]} if method == "ae" else config[method]


def residual_form(method):
    return config["residual_heatmaps"]["form"][method]


def reference_volumes():
    """The training subjects the residual reference is fitted on: the first reference_images of the split."""
    return set_volumes("train")[: config["residual_heatmaps"]["reference_images"]]


# Training runs. The learned chain (score model, score norms, flows, AE, the detectors, thresholds, metrics,
# Table 1) lives under a run folder: `results` is the run every other output reads, trained with the config's
# seed; `results/seed_spread/seed-{s}` retrains it with training seed s on the same cohort, splits and lesions
# (which stay in `results/`), for the seed-spread table.
SEED_SPREAD_DIR = "results/seed_spread"
RUN_PATTERN = "results|results/seed_spread/seed-[0-9]+"


def spread_seeds():
    """The training seeds of the seed-spread table: the main run's seed, then seed + 1, seed + 2, ..."""
    return [config["seed"] + k for k in range(config["seed_spread"]["n_seeds"])]


def run_dir(seed):
    return "results" if seed == config["seed"] else f"{SEED_SPREAD_DIR}/seed-{seed}"


def table1_csv(run, protocol):
    """A run's Table-1 CSV of one protocol (the oracle's is table1.csv)."""
    return f"{run}/table1.csv" if protocol == "oracle" else f"{run}/table1_{protocol}.csv"


def run_seed(run):
    """The training seed of a run folder (its learned models and the samplers' draws use it)."""
    return config["seed"] if run == "results" else int(run.rsplit("seed-", 1)[1])


def lesion_seed(subject, val_split):
    """Test lesions use the run's seed; the lesioned validation set another (seed + 1), so a choice made on
    validation lesions has never seen a test lesion's placement draw. Reads the split file handed in as an
    input (a params function must not ask the checkpoint itself: Snakemake rejects that while it reruns)."""
    return config["seed"] + (1 if subject in Path(val_split).read_text().split() else 0)


def gpu_count(section):
    """GPUs a stage asks the scheduler for: one when the run uses GPUs (config use_gpu) and the stage's section
    does not pin the CPU, else none (an unprovided resource breaks the --cores limit of the ILP scheduler)."""
    return int(config["use_gpu"] and config[section].get("device", "auto") != "cpu")


# Applying a trained model to new scans (rules/apply.smk): the user's folder, and the agreement check's folder of
# lesioned test volumes carried into native space.
APPLY = config["apply"]
APPLY_ROOT = "results/apply"
CHECK_ROOT = "results/apply_check"


@functools.cache
def apply_scans():
    """The subjects of config apply.scans and their T1w/T2w paths (listed even when missing or broken: their
    own jobs refuse them)."""
    if not APPLY["scans"]:
        raise ValueError("config apply.scans: set it to a BIDS folder or a scan table (subject, t1w, t2w) to apply "
                         "the model to")
    return read_scan_list(APPLY["scans"], APPLY["session"])


def apply_subjects(root):
    """The subjects of an apply folder: the user's scans, or for the check every lesioned test volume."""
    return list(apply_scans()) if root == APPLY_ROOT else set_volumes("test_lesioned")


def apply_bundle(root):
    """The bundle a folder is applied with: config apply.bundle, or for the check this run's own."""
    return APPLY["bundle"] if root == APPLY_ROOT else "results/bundle"


def apply_scan_paths(wildcards):
    if wildcards.root == APPLY_ROOT:
        return apply_scans()[wildcards.subject]
    return {"t1w": f"{CHECK_ROOT}/scans/{wildcards.subject}_T1w.nii.gz",
            "t2w": f"{CHECK_ROOT}/scans/{wildcards.subject}_T2w.nii.gz"}


def apply_scan_inputs(wildcards):
    """The scans as inputs where they exist: a missing one is refused by the subject's job, not by the DAG."""
    paths = apply_scan_paths(wildcards)
    if wildcards.root == CHECK_ROOT:
        return paths
    return {key: path for key, path in paths.items() if path and os.path.exists(path)}
