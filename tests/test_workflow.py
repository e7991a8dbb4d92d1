"""The whole DAG, for real: Snakemake runs every rule on a tiny synthetic cohort (8 mm) into a temp dir.

One run is shared by all tests in this module (it takes a few minutes); the other tests read its outputs or
ask Snakemake what it would rerun. Nothing is mocked.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spatial_msma.io import read_channels, read_mask, write_nifti
from spatial_msma.template import load_template

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = REPO / "tests" / "config" / "tiny.yaml"
SYNTHETIC_BIDS = "resources/synthetic/bids"
# What a checkout needs to run the workflow; the run happens in a copy, so tests can edit its code or move it.
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "src/spatial_msma", "config", "envs", "report", "profiles",
                  "resources/anatomies")


def _snakemake(workdir, *args, check=True):
    """Snakemake on ``workdir`` with the tiny config; the workflow is the checkout copy in ``workdir`` when it
    has one (the shared run), else this repository's."""
    snakefile = workdir / "Snakefile" if (workdir / "Snakefile").exists() else REPO / "Snakefile"
    cmd = [*SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(workdir), "--configfile", str(TINY), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A copy of the checkout with the whole DAG run inside it (results/ next to Snakefile, as for a user)."""
    workdir = tmp_path_factory.mktemp("workflow") / "checkout"
    for name in WORKFLOW_FILES:
        source, target = REPO / name, workdir / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    _snakemake(workdir, "--cores", "2")
    return workdir


def _rules_to_rerun(workdir, *args, targets=()):
    """The rules a dry run (of ``targets``, default the default target) would run, from Snakemake's job-count
    table. Targets go last, after an option that takes one value: list-valued options would swallow them."""
    dry = _snakemake(workdir, *args, "--dry-run", "--quiet", "rules", "--cores", "1", *targets)
    rules = set()
    for line in (dry.stdout + dry.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            rules.add(parts[0])
    return rules


def test_whole_dag_produces_table1(run_dir):
    table = pd.read_csv(run_dir / "results" / "table1.csv")
    row = table.set_index("name").loc["Intensity z-score"]
    assert row["method"] == "zscore" and row["protocol"] == "oracle"
    assert row["n"] >= 1 and 0.0 <= row["tpr_mean"] <= 1.0 and row["hd99_mean"] > 0
    for figure in ("cohort", "lesions", "montage", "froc"):
        assert (run_dir / "results" / "figures" / f"{figure}.png").stat().st_size > 10_000


def test_diagnostics_validation_and_ablation_tables(run_dir):
    results = run_dir / "results"
    levels = pd.read_csv(results / "diagnostics" / "score_levels.csv")
    n_levels = yaml.safe_load(TINY.read_text())["score_norms"]["n_levels"]
    assert levels["split"].value_counts().to_dict() == {"val": n_levels, "test": n_levels}
    assert levels["voxel_auroc"].between(0, 1).all() and (levels["lesion_voxels"] > 0).all()
    validation = pd.read_csv(results / "validation" / "table.csv")
    assert {"zscore", "spatial_msma", "voxel_gaussian"} <= set(validation["method"])
    assert (validation["protocol"] == "oracle").all() and validation["contrast_mean"].notna().all()
    ablations = pd.read_csv(results / "diagnostics" / "ablations.csv")
    assert set(ablations["method"]) == {"zscore", "spatial_msma", "spatial_msma_nopos", "spatial_msma_noglobal",
                                        "spatial_msma_gmm", "voxel_gaussian"}


def test_validation_baselines_switch_leaves_only_the_baselines_out(run_dir, tmp_path):
    """``diagnostics.validation_baselines: false`` (the default config's setting) drops the learned baselines from
    the validation table's inputs, and with them their val_lesioned heatmaps; Spatial-MSMA, the z-score and the
    ablations stay."""
    extra = tmp_path / "no_validation_baselines.yaml"
    extra.write_text("diagnostics: {ablations: true, validation_baselines: false}\n")
    # the extra file follows --configfile TINY directly, so it is the second config file
    out = _snakemake(run_dir, str(extra), "--dry-run", "results/validation/table.csv",
                     "--forcerun", "validation_table").stdout
    inputs = next(line for line in out.splitlines() if "results/validation/metrics/" in line)
    for kept in ("zscore", "spatial_msma", "spatial_msma_nopos", "voxel_gaussian"):
        assert f"results/validation/metrics/{kept}_oracle.csv" in inputs, kept
    for dropped in ("ae", "inpaint", "restoration", "gradcam_msma"):
        assert f"results/validation/metrics/{dropped}_oracle.csv" not in inputs, dropped


def test_benchmark_summary_reads_the_run_and_ranks_spatial_msma(run_dir):
    """benchmarks/summarize.py (what benchmarks/README.md is made of) on the run's own CSVs."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "summarize.py"), str(run_dir / "results")],
                            capture_output=True, text=True, check=True)
    for heading in ("oracle protocol", "10 % FPR protocol", "TPR per lesion size", "Ablations", "Validation table"):
        assert heading in result.stdout, heading
    table = pd.read_csv(run_dir / "results" / "table1.csv").set_index("method")
    expected = int((table["tpr_mean"] > table.loc["spatial_msma", "tpr_mean"]).sum()) + 1
    rank_row = next(line for line in result.stdout.splitlines() if line.startswith("| Spatial-MSMA rank"))
    assert rank_row.split("|")[4].strip() == f"{expected}/{len(table)}"  # the TPR column (higher is better)


def test_cohort_excludes_exactly_what_was_planted(run_dir):
    truth = json.loads((run_dir / "resources/synthetic/bids/truth.json").read_text())
    participants = pd.read_csv(run_dir / "results/cohort/participants.tsv", sep="\t").set_index("participant_id")
    above = participants.index[participants.reason.fillna("").str.startswith("CBCL t-score > 66")]
    assert sorted(above) == sorted(truth["above_cutoff"])
    for subject, kind in truth["broken"].items():
        assert not participants.loc[subject, "included"], (subject, kind)
    expected = {"missing_t2w": "missing T2w", "truncated_t1w": "truncated", "nan_t2w": "NaN", "4d_t1w": "3D image"}
    for subject, kind in truth["broken"].items():
        assert expected[kind] in participants.loc[subject, "reason"]
    splits = {s: (run_dir / f"results/cohort/{s}.txt").read_text().split() for s in ("train", "val", "test")}
    included = sorted(participants.index[participants.included])
    assert sorted(sum(splits.values(), [])) == included


def test_cropped_volumes_share_one_grid_with_sides_divisible_by_8(run_dir):
    box = json.loads((run_dir / "results/preprocessed/crop_box.json").read_text())
    manifest = pd.read_csv(run_dir / "results/cropped/manifest.tsv", sep="\t")
    assert all(side % 8 == 0 for side in box["shape"])
    assert set(manifest["shape"]) == {"x".join(map(str, box["shape"]))}
    image, affine = read_channels(manifest["image"].iloc[0] if Path(manifest["image"].iloc[0]).is_absolute()
                                  else run_dir / manifest["image"].iloc[0])
    assert image.shape[0] == 2 and np.allclose(np.diag(affine)[:3], 8.0)


def test_lesions_only_inside_the_brain_and_each_draw_its_own(run_dir):
    draws = yaml.safe_load(TINY.read_text())["lesion_draws"]["test"]
    for subject in (run_dir / "results/cohort/test.txt").read_text().split():
        brain, _ = read_mask(run_dir / f"results/cropped/{subject}_brainmask.nii.gz")
        masks = [read_mask(run_dir / f"results/lesions/{subject}_draw-{k}_mask.nii.gz")[0]
                 for k in range(1, draws + 1)]
        for lesion in masks:
            assert lesion.any() and not (lesion & ~brain).any()
        assert not np.array_equal(masks[0], masks[1])  # independent placements of one subject


def test_paired_statistics_over_the_test_volumes(run_dir):
    """table1_stats.csv compares every method with Spatial-MSMA on every volume (draws x subjects), and the
    table says what is significant."""
    draws = yaml.safe_load(TINY.read_text())["lesion_draws"]["test"]
    n_subjects = len((run_dir / "results/cohort/test.txt").read_text().split())
    stats = pd.read_csv(run_dir / "results/table1_stats.csv")
    versus_msma = stats[(stats["versus"] == "spatial_msma") & (stats["metric"] == "tpr")]
    assert set(versus_msma["protocol"]) == {"oracle", "fpr05", "fpr10"}
    assert (versus_msma["n_subjects"] == n_subjects).all() and (versus_msma["n_volumes"] == n_subjects * draws).all()
    assert (versus_msma["ci_low"] <= versus_msma["ci_high"]).all()
    assert "the paired statistics support it" in (run_dir / "results/table1.md").read_text()
    assert (run_dir / "results/figures/paired_differences.png").stat().st_size > 10_000


def test_seed_spread_retrains_only_the_learned_chain(run_dir):
    """The seed-spread target plans the learned models again under results/seed_spread/seed-{s} with the other
    training seeds, on the main run's cohort, crops and lesions (none of which is planned again)."""
    out = _snakemake(run_dir, "--dry-run", "--cores", "1", "results/seed_spread/table1.csv").stdout
    rules = _rules_to_rerun(run_dir, targets=["results/seed_spread/table1.csv"])
    assert {"train_score_model", "train_flow", "train_ae", "table1", "seed_spread"} <= rules, rules
    assert not rules & {"synthetic_cohort", "filter_cohort", "preprocess", "crop", "simulate_lesions"}, rules
    seed = yaml.safe_load(TINY.read_text())["seed"]
    for other in (seed + 1, seed + 2):
        assert f"results/seed_spread/seed-{other}/models/score/model.pt" in out


@pytest.mark.parametrize(("module", "reruns", "keeps"), [
    ("crop.py", {"crop_box", "crop", "zscore_model", "table1"}, {"synthetic_cohort", "filter_cohort", "preprocess"}),
    # imported by neither script directly: train_flow.py -> flow.train -> flow.data, heatmap_flow.py likewise
    ("flow/data.py", {"train_flow", "heatmap_flow", "table1"},
     {"preprocess", "train_score_model", "score_norms", "train_ae", "heatmap_residual"}),
])
def test_editing_a_module_reruns_the_rules_that_run_it_and_what_follows(run_dir, module, reruns, keeps):
    """A real edit (Snakemake compares checksums, so a bare touch is not a change) of one module of the run's
    own checkout copy."""
    code = run_dir / "src" / "spatial_msma" / module
    original = code.read_bytes()
    stat = code.stat()
    try:
        code.write_bytes(original + b"# an edit\n")
        rules = _rules_to_rerun(run_dir)
    finally:
        code.write_bytes(original)
        os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert reruns <= rules, rules
    assert not rules & keeps, rules


def test_a_checkout_moved_with_its_results_reruns_nothing(run_dir):
    """Code inputs are relative paths, so moving the folder (code and results together) changes no input."""
    moved = run_dir.with_name("moved")
    run_dir.rename(moved)
    try:
        assert _rules_to_rerun(moved) == set()
    finally:
        moved.rename(run_dir)


@pytest.mark.parametrize(("setting", "reruns", "keeps"), [
    ("flow: {heatmap_jacobian: true}", {"heatmap_flow", "evaluate", "table1"}, {"train_flow", "score_norms"}),
    ("ae: {error: squared}", {"heatmap_residual", "evaluate"}, {"train_ae", "residual_reference", "heatmap_flow"}),
    ("evaluation: {figure_subjects: 1}", {"evaluation_figures"}, {"evaluate", "evaluation_thresholds", "table1"}),
])
def test_a_scoring_or_figure_key_reruns_only_the_jobs_that_read_it(run_dir, tmp_path, setting, reruns, keeps):
    """Rules get only their scope of a config section (spatial_msma.config_scopes)."""
    extra = tmp_path / "changed.yaml"
    extra.write_text(setting + "\n")
    rules = _rules_to_rerun(run_dir, "--configfile", str(TINY), str(extra))
    assert reruns <= rules, rules
    assert not rules & keeps, rules


def test_gpu_resource_is_requested_only_on_gpu_runs(run_dir):
    """A resource the rules request but the command line does not provide makes Snakemake's ILP scheduler
    ignore --cores (measured: a 2-thread and a 1-thread job together on --cores 2), so CPU runs ask for none."""
    def gpus(*extra):
        # the target follows a flag: --configfile (first in _snakemake) takes every value up to the next option
        out = _snakemake(run_dir, "--dry-run", "results/models/score/model.pt", "--forcerun", "train_score_model",
                         *extra).stdout
        return set(re.findall(r"\bgpu=(\d+)", out))

    assert gpus() == {"0"}
    assert gpus("--config", "use_gpu=True") == {"1"}


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint", "--snakefile", str(REPO / "Snakefile")], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_mistyped_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess: {voxel_mmm: 4}\n")
    result = subprocess.run([*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                             "--configfile", str(bad), "--dry-run"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "voxel_mmm" in result.stdout + result.stderr


def _files(folder):
    """Every file under ``folder`` with its size and modification time: what a deletion or rewrite changes."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("setting", "message"), [
    # each of these passed the schema and was rejected only inside a job, after Snakemake deleted its outputs
    ("split: {train: 0.8, val: 0.1, test: 0.2}", "config split: train + val + test must be 1, got 0.8 + 0.1 + 0.2"),
    ("score: {steps: 0}", "config score.steps: must be an integer >= 1, got 0"),
    ("score: {device: gpu}", "config score.device: 'gpu' is not a device; expected 'auto', 'cpu' or 'cuda[:N]'"),
    ("seed: 7.0", "config seed: must be an integer, got 7.0"),
    # these planned nothing ("Nothing to be done"): the old synthetic results stood for the new config
    ("cohort: {source: bids, bids_dir: /mnt/unmounted/bids, cbcl_table: /mnt/unmounted/mh_p_cbcl.csv}",
     "config cohort.bids_dir: there is no folder /mnt/unmounted/bids"),
    (REPO / "config" / "paper.yaml", "config cohort.bids_dir: there is no folder /path/to/bids"),
    ("lesions: {source: folder, folder: /mnt/unmounted/masks}", "config lesions.folder: there is no folder"),
])
def test_a_config_mistake_is_named_and_leaves_the_finished_run_untouched(run_dir, tmp_path, setting, message):
    """A real run (not a dry run) in the folder of a finished run, with one mistake in the config: it stops
    before any job, names the key, and not one file of results/ is deleted or rewritten."""
    extra = setting if isinstance(setting, Path) else tmp_path / "mistake.yaml"
    if not isinstance(setting, Path):
        extra.write_text(setting + "\n")
    before = _files(run_dir / "results")
    result = _snakemake(run_dir, str(extra), "--cores", "2", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stderr[-3000:]
    assert _files(run_dir / "results") == before


def test_a_mask_added_to_the_lesion_folder_reruns_the_lesions(run_dir, tmp_path):
    """Snakemake sees the lesion folder only through the config's path; the workflow's manifest of the
    folder makes a new mask rerun the lesion simulation (and nothing before it). Runs in a copy of the run."""
    copy = tmp_path / "checkout"
    shutil.copytree(run_dir, copy, symlinks=True)
    masks = tmp_path / "masks"
    masks.mkdir()
    affine = load_template().affine
    grid = np.indices((24, 24, 24)).astype(np.float32)
    ball = ((grid - 12) ** 2).sum(axis=0) <= 16  # a 4 mm sphere at 1 mm, about 260 mm^3
    write_nifti(ball, affine, masks / "a.nii.gz")
    extra = tmp_path / "folder.yaml"
    extra.write_text(f"lesions: {{source: folder, folder: {masks}}}\n")
    summary = "results/lesions/summary.tsv"
    _snakemake(copy, str(extra), "--cores", "2", summary)
    assert _rules_to_rerun(copy, "--configfile", str(TINY), str(extra), targets=[summary]) == set()
    write_nifti(ball[::2, ::2, ::2], affine @ np.diag([2.0, 2.0, 2.0, 1.0]), masks / "b.nii.gz")
    rules = _rules_to_rerun(copy, "--configfile", str(TINY), str(extra), targets=[summary])
    assert {"simulate_lesions", "lesion_summary"} <= rules, rules
    assert not rules & {"synthetic_cohort", "filter_cohort", "preprocess", "crop"}, rules


def test_the_same_command_recovers_after_kill_9(tmp_path):
    """kill -9 of Snakemake and its job while the built-in cohort is half written: rerunning the same command
    must ask neither for --unlock (the killed run's lock) nor for --rerun-incomplete (its half-written folder)."""
    target = "results/cohort/participants.tsv"
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile",
               str(TINY), "--cores", "1", target]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    bids = tmp_path / SYNTHETIC_BIDS
    deadline = time.monotonic() + 300
    while not (bids.is_dir() and any(bids.glob("sub-*"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the job ended before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert any((tmp_path / ".snakemake" / "locks").iterdir()), "the killed run left no lock: nothing tested"
    assert any((tmp_path / ".snakemake" / "incomplete").iterdir()), "no incomplete output: nothing tested"
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"process {run.pid}" in rerun.stderr  # the lock it removed
    assert pd.read_csv(tmp_path / target, sep="\t")["included"].sum() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU the config asks for")
def test_use_gpu_without_cuda_stops_before_the_first_job(tmp_path):
    """use_gpu on a machine without CUDA, jobs run locally: it used to run every CPU stage and fail at score
    training; it stops before the first job, naming the key."""
    result = _snakemake(tmp_path, "--config", "use_gpu=True", "--cores", "1", "results/cohort/participants.tsv",
                        check=False)
    assert result.returncode != 0
    assert "config use_gpu: asks for a GPU, but torch finds no CUDA device on this machine" in result.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_report_carries_tables_and_figures(run_dir):
    report = run_dir / "results" / "report.html"
    _snakemake(run_dir, "--report", str(report))
    text = report.read_text(errors="replace")
    for expected in ("table1.csv", "cohort.png", "montage.png", "lesions.png", "Spatial-MSMA"):
        assert expected in text, expected


def _scan_table(run_dir, tmp_path):
    """Scans to apply the model to: two test subjects' raw scans, the cohort's planted broken subjects (missing
    T2w, truncated, NaN, 4D) and a volume of noise that is no head; absolute paths."""
    participants = pd.read_csv(run_dir / "results/cohort/participants.tsv", sep="\t", dtype=str,
                               keep_default_na=False).set_index("participant_id")
    broken = json.loads((run_dir / "resources/synthetic/bids/truth.json").read_text())["broken"]
    good = (run_dir / "results/cohort/test.txt").read_text().split()[:2]
    rows = [(s, *(str(run_dir / p) if p else "" for p in participants.loc[s, ["t1w", "t2w"]]))
            for s in good + list(broken)]
    noise = np.random.default_rng(0).uniform(0, 1000, (48, 56, 48)).astype(np.float32)
    for modality in ("T1w", "T2w"):
        nib.save(nib.Nifti1Image(noise, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / f"noise_{modality}.nii.gz")
    rows.append(("sub-noise", str(tmp_path / "noise_T1w.nii.gz"), str(tmp_path / "noise_T2w.nii.gz")))
    table = tmp_path / "scans.tsv"
    pd.DataFrame(rows, columns=["subject", "t1w", "t2w"]).to_csv(table, sep="\t", index=False)
    return table, good, broken


def test_apply_a_bundle_to_new_scans_in_their_own_space(run_dir, tmp_path):
    """The bundle target, then the apply path on raw scans: every subject gets a status; a good one gets its
    heatmap and lesion mask on its own T1w grid, a per-lesion table and an overlay; a bad one a refusal saying
    why, without stopping the others. The agreement check runs on every lesioned test volume in native space."""
    table, good, broken = _scan_table(run_dir, tmp_path)
    extra = tmp_path / "apply.yaml"
    extra.write_text(f"apply: {{scans: {table}}}\n")
    _snakemake(run_dir, str(extra), "--cores", "2", "apply", "results/apply_check/agreement.csv")
    manifest = json.loads((run_dir / "results/bundle/manifest.json").read_text())
    assert {"score_model.pt", "flow_model.pt", "thresholds.json", "crop_box.json"} <= set(manifest["files"])
    assert manifest["config"]["seed"] == yaml.safe_load(TINY.read_text())["seed"]

    summary = pd.read_csv(run_dir / "results/apply/summary.csv").set_index("subject")
    assert (summary.loc[good, "status"] == "ok").all()
    expected = {"missing_t2w": "no T2w scan", "truncated_t1w": "unreadable or truncated",
                "nan_t2w": "NaN or infinite", "4d_t1w": "expected a 3D image",
                "noise": "registration to the template failed"}
    for subject, kind in [*broken.items(), ("sub-noise", "noise")]:
        assert summary.loc[subject, "status"] == "refused" and expected[kind] in summary.loc[subject, "reason"]
        assert not (run_dir / f"results/apply/{subject}/{subject}_heatmap.nii.gz").exists()
    for subject in good:
        out = run_dir / "results/apply" / subject
        t1w = nib.load(summary.loc[subject, "t1w"])
        for name in ("heatmap", "lesions", "lesion_labels"):
            native = nib.load(out / f"{subject}_{name}.nii.gz")
            assert native.shape == t1w.shape and np.allclose(native.affine, t1w.affine)
        mask = np.asarray(nib.load(out / f"{subject}_lesions.nii.gz").dataobj) > 0
        labels = np.asarray(nib.load(out / f"{subject}_lesion_labels.nii.gz").dataobj)
        lesions = pd.read_csv(out / f"{subject}_lesions.csv")
        assert list(lesions.columns) == ["lesion", "volume_mm3", "voxels", "x_mm", "y_mm", "z_mm", "peak_score",
                                         "mean_score", "threshold", "protocol"]
        assert lesions["voxels"].sum() == mask.sum() and (lesions["protocol"] == "fpr05").all()
        assert ((labels > 0) == mask).all()  # the table's lesion ids, voxel by voxel
        assert (np.bincount(labels.ravel().astype(int), minlength=len(lesions) + 1)[1:] == lesions["voxels"]).all()
        assert summary.loc[subject, "n_lesions"] == len(lesions)
        assert (out / f"{subject}_overlay.png").stat().st_size > 10_000

    draws = yaml.safe_load(TINY.read_text())["lesion_draws"]["test"]
    n_test = len((run_dir / "results/cohort/test.txt").read_text().split())
    agreement = pd.read_csv(run_dir / "results/apply_check/agreement.csv")
    assert len(agreement) == n_test * draws and agreement["native_tpr"].notna().all()
    assert agreement[["native_tpr", "template_tpr"]].stack().between(0, 1).all()
    # the reference lesions are the template evaluation's, carried with their template-grid ids: none split, none lost
    assert (agreement["native_gt"] == agreement["template_gt"]).all()
    checked = pd.read_csv(run_dir / "results/apply_check/agreement_summary.csv").set_index("metric")
    assert set(checked.index) == {"tpr", "ppv"} and (checked["n_volumes"] == n_test * draws).all()


def test_a_fresh_checkout_applies_a_copied_bundle_without_training(run_dir, tmp_path):
    """A checkout with no results and a bundle copied from elsewhere plans only the apply jobs; a bundle that
    lost a file is refused, before any subject, with what is wrong."""
    if not (run_dir / "results/bundle/manifest.json").exists():
        _snakemake(run_dir, "--cores", "1", "results/bundle")
    clone = tmp_path / "clone"
    for name in WORKFLOW_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, clone / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    bundle = tmp_path / "copied_bundle"
    shutil.copytree(run_dir / "results/bundle", bundle)
    table, good, _ = _scan_table(run_dir, tmp_path)
    extra = tmp_path / "apply.yaml"
    extra.write_text(f"apply: {{scans: {table}, bundle: {bundle}}}\n")
    assert _rules_to_rerun(clone, str(extra), targets=["apply"]) == {"apply_bundle_check", "apply_subject",
                                                                     "apply_summary", "apply"}
    (bundle / "flow_model.pt").unlink()
    refused = _snakemake(clone, str(extra), "--cores", "1", "apply", check=False)
    assert refused.returncode != 0
    assert "file flow_model.pt is missing" in (clone / "results/apply/logs/bundle_check.log").read_text()
    assert not (clone / "results/apply" / good[0]).exists()
