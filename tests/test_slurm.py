"""The SLURM profile against a REAL SLURM: munge + slurmctld + slurmd from Debian, one node, no mock.

tests/slurm/cluster.py installs the packages if they are missing (root + apt-get), starts the daemons under a
temp dir (two fake GPUs as gres), and stops them by pid afterwards. The workflow's tiny test config, made
smaller still (SMALLER: every rule of the Table-1 DAG stays, with fewer jobs of some), then runs through
`snakemake --profile profiles/slurm` to results/table1.csv, every job a real sbatch submission: cohort, CBCL
filter (a checkpoint), preprocessing, lesions, the z-score, the score model and its norms, the flow, the AE
and GradCAM-MSMA (the GPU rules, with the profile's `gpu: 1`), thresholds, metrics, statistics and Table 1.
The local node's partition and core count reach the profile through its environment variables
(MSMA_SLURM_*), so the profile file runs unchanged. The job-completion log (rule, SLURM job id, state, gres,
seconds) is printed (pytest -s) and written to slurm_jobs.tsv in the run's temp dir. Skipped only when the
packages cannot be installed or this machine has a SLURM config of its own.
"""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spatial_msma.evaluation.tables import PRIMARY

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm" / "cluster.py"
TINY = REPO / "tests" / "config" / "tiny.yaml"
TARGET = "results/table1.csv"
# tiny.yaml made cheaper with every rule of Table 1's DAG kept (only fewer jobs of some): the fewest subjects
# the schema allows, 5 of them broken (5 usable -> train/val/test 3/1/1 with the split set here, whatever the
# default's split; GradCAM-MSMA's GMM cross-validates on the 3 training images, 2 are too few), one lesion
# draw per test subject, one FPR level (each level is one more metrics job per method), and of the
# reconstruction baselines only the AE: Inpaint and Restoration run the same two rules (residual_reference,
# heatmap_residual) with another method wildcard, 14 more jobs.
SMALLER = {
    "methods": ["zscore", "spatial_msma", "ae", "gradcam_msma"],
    "synthetic": {"n_subjects": 12, "voxel_mm": 4.0,
                  "broken": ["missing_t2w", "truncated_t1w", "nan_t2w", "4d_t1w", "missing_t2w"]},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "lesion_draws": {"test": 1},
    "evaluation": {"fpr_levels": [0.05]},
}
# The one GPU rule that Table 1 does not need: a trained bundle applied to new scans (rules/apply.smk).
GPU_RULES_OUTSIDE_TABLE1 = {"apply_subject"}
SNAKEMAKE_TIMEOUT_S = 1500



def _cluster(*args, timeout=120):
    return subprocess.run([sys.executable, str(CLUSTER), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a real SLURM test cluster needs root (slurmd runs jobs as root here)")
    installed = _cluster("install", timeout=900)
    if installed.returncode != 0:
        pytest.skip(f"SLURM packages could not be installed: {installed.stdout.strip()} {installed.stderr[-500:]}")
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("/etc/slurm/slurm.conf exists: this machine has a SLURM of its own, not touching it")
    root = tmp_path_factory.mktemp("slurm")
    started = _cluster("up", root)
    try:
        assert started.returncode == 0, f"cluster did not come up:\n{started.stdout}\n{started.stderr[-4000:]}"
        yield json.loads(started.stdout)
    finally:
        stopped = _cluster("down", root)
        assert stopped.returncode == 0, stopped.stderr
        assert not Path("/etc/slurm/slurm.conf").is_symlink()


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """Table 1 through the SLURM profile; its job-completion log printed and in slurm_jobs.tsv; Snakemake's
    DAG of the target afterwards (every job, done or not)."""
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    smaller = workdir / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(SMALLER))
    env = {**os.environ, "PYTHONHASHSEED": "0", "SLURM_CONF": cluster["conf"],
           "MSMA_SLURM_PARTITION": cluster["partition"], "MSMA_SLURM_GPU_PARTITION": cluster["partition"],
           "MSMA_SLURM_CPUS_PER_GPU": "1"}
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                 str(workdir), "--configfile", str(TINY), str(smaller)]
    cmd = ["timeout", "-s", "KILL", str(SNAKEMAKE_TIMEOUT_S), *snakemake,
           "--profile", str(REPO / "profiles" / "slurm"),
           # scalar settings for a 2-core test node (a command-line dict would replace the profile's whole one);
           # 4 jobs: two run and two wait in SLURM's queue, which starts one the moment a core is free, where
           # Snakemake would see the end of a job only at its next status check (2 s after the last, 10 s more
           # after each that finds nothing finished)
           "--jobs", "4", "--latency-wait", "5", "--retries", "0", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs", TARGET]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SNAKEMAKE_TIMEOUT_S + 60)
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    (workdir / "snakemake.log").write_text(log)
    jobs = _job_log(log, cluster, env)
    jobs.to_csv(workdir / "slurm_jobs.tsv", sep="\t", index=False)
    print(f"\nsnakemake --profile profiles/slurm {TARGET}: rc {result.returncode}, {len(jobs)} SLURM jobs in "
          f"{seconds:.0f} s (job-completion log: {workdir / 'slurm_jobs.tsv'})\n{jobs.to_string(index=False)}\n\n"
          f"per rule:\n{_per_rule(jobs).to_string()}")
    assert result.returncode == 0, f"snakemake --profile profiles/slurm failed (rc {result.returncode}):\n{log[-8000:]}"
    dag = subprocess.run([*snakemake, "--dag", "dot", TARGET], capture_output=True, text=True, env=env, check=True)
    return SimpleNamespace(workdir=workdir, log=log, cluster=cluster, jobs=jobs, dag=_dag_jobs(dag.stdout))


def _submitted(log):
    """{slurm job id: rule} from Snakemake's 'submitted with SLURM jobid' lines."""
    found = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/", log)
    return {int(jobid): rule for jobid, rule in found}


def _scontrol(jobid, env):
    out = subprocess.run(["scontrol", "show", "job", "-o", str(jobid)], capture_output=True, text=True, env=env,
                         check=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _job_log(log, cluster, env):
    """One row per job Snakemake submitted: its rule, SLURM job id, state and run time from SLURM's
    job-completion log (jobcomp/filetxt: a line per finished job; MISSING if it has none), the gres and the
    job comment (rule and wildcards) that SLURM holds for it (scontrol)."""
    completed = {}
    for line in Path(cluster["jobcomp"]).read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        completed[int(fields["JobId"])] = fields
    rows = []
    for jobid, rule in sorted(_submitted(log).items()):
        record, job = completed.get(jobid, {}), _scontrol(jobid, env)
        seconds = (pd.Timestamp(record["EndTime"]) - pd.Timestamp(record["StartTime"])).total_seconds() \
            if record else float("nan")
        rows.append({"rule": rule, "slurm_job": jobid, "state": record.get("JobState", "MISSING"),
                     "gres": job.get("TresPerJob") or "-", "seconds": seconds, "partition": job["Partition"],
                     "comment": job["Comment"]})
    return pd.DataFrame(rows, columns=["rule", "slurm_job", "state", "gres", "seconds", "partition", "comment"])


def _per_rule(jobs):
    return jobs.groupby("rule", sort=False).agg(
        jobs=("slurm_job", "size"), state=("state", lambda s: ",".join(sorted(set(s)))),
        gres=("gres", lambda s: ",".join(sorted(set(s)))), seconds=("seconds", "sum"))


def _dag_jobs(dot):
    """[(rule, style)] of every job in `snakemake --dag dot` (a done job's style is dashed)."""
    return re.findall(r'^\t\d+\[label = "(\w+)[^"]*", color = "[^"]*", style="([^"]*)"\];$', dot, re.M)


def _gpu_rules():
    """The GPU-capable rules: those whose resources declare a `gpu` (rules/*.smk)."""
    return {rule for rule, block in _rule_resources().items() if re.search(r"\bgpu\s*=", block)}


@pytest.mark.slow
@pytest.mark.slurm
def test_every_job_of_the_table1_dag_went_through_sbatch_and_completed(slurm_run):
    jobs = slurm_run.jobs
    assert {style for _, style in slurm_run.dag} == {"rounded,dashed"}, \
        "Snakemake still has jobs to run for the target"
    assert jobs["slurm_job"].is_unique
    assert Counter(jobs["rule"]) == Counter(rule for rule, _ in slurm_run.dag), \
        "the jobs submitted to SLURM are not the jobs of Snakemake's DAG"
    assert (jobs["state"] == "COMPLETED").all(), jobs[jobs["state"] != "COMPLETED"].to_string()
    assert f"{len(jobs)} of {len(jobs)} steps (100%) done" in slurm_run.log


@pytest.mark.slow
@pytest.mark.slurm
def test_gpu_rules_got_their_gpu_and_cpu_rules_none(slurm_run):
    gpu_rules, ran = _gpu_rules(), set(slurm_run.jobs["rule"])
    assert gpu_rules & ran == gpu_rules - GPU_RULES_OUTSIDE_TABLE1
    assert {"train_score_model", "score_norms", "train_flow", "heatmap_flow", "train_ae", "residual_reference",
            "heatmap_residual", "heatmap_gradcam_msma"} <= gpu_rules & ran
    for job in slurm_run.jobs.itertuples():
        assert job.partition == slurm_run.cluster["partition"]
        assert job.comment.startswith(f"rule_{job.rule}")
        assert job.gres == ("gres:gpu:1" if job.rule in gpu_rules else "-"), (job.rule, job.slurm_job, job.gres)


@pytest.mark.slow
@pytest.mark.slurm
def test_table1_has_a_row_per_method_with_finite_metrics(slurm_run):
    workdir = slurm_run.workdir
    volumes = len((workdir / "results/cohort/test.txt").read_text().split()) * SMALLER["lesion_draws"]["test"]
    methods = SMALLER["methods"]
    for name in ("table1.csv", "table1_fpr05.csv"):
        table = pd.read_csv(workdir / "results" / name)
        assert sorted(table["method"]) == sorted(methods), name
        assert table["protocol"].nunique() == 1 and (table["n"] == volumes).all(), name
        means = table[[f"{metric}_mean" for metric in PRIMARY]].to_numpy(dtype=float)
        assert np.isfinite(means).all(), table.to_string()
        assert table["tpr_mean"].between(0, 1).all() and table["ppv_mean"].between(0, 1).all(), name
    assert (pd.read_csv(workdir / TARGET)["protocol"] == "oracle").all()


@pytest.mark.slow
@pytest.mark.slurm
def test_outputs_are_right(slurm_run):
    workdir = slurm_run.workdir
    splits = {s: (workdir / f"results/cohort/{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert len(splits["val"]) == len(splits["test"]) == 1 and len(splits["train"]) >= 2
    for subject in splits["train"] + splits["val"]:
        assert (workdir / f"results/cropped/{subject}.nii.gz").stat().st_size > 0
    log = pd.read_csv(workdir / "results/models/score/training_log.csv")
    assert log["step"].max() + 1 >= 4 and log["train_loss"].notna().all()
    model = torch.load(workdir / "results/models/score/model.pt", map_location="cpu", weights_only=False)
    assert isinstance(model, dict) and model


# ---- the profiles themselves (no cluster needed)

def _profile(name, **env):
    from snakemake.profiles import ProfileConfigFileParser

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with open(REPO / "profiles" / name / "config.yaml") as stream:
            return ProfileConfigFileParser().parse(stream)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rule_resources():
    """{rule: resources block text} of every rule in rules/*.smk."""
    out = {}
    for smk in (REPO / "rules").glob("*.smk"):
        for match in re.finditer(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), re.M | re.S):
            block = re.search(r"^    resources:\n((?:        .*\n)+)", match.group(2), re.M)
            out[match.group(1)] = block.group(1) if block else ""
    return out


def test_slurm_profile_gives_every_gpu_rule_a_gpu_and_names_only_real_rules():
    rules, gpu_rules = _rule_resources(), _gpu_rules()
    assert {"train_score_model", "score_norms", "train_flow", "heatmap_flow"} <= gpu_rules
    args = _profile("slurm")
    per_rule = {}
    for entry in args["set-resources"]:
        rule, _, setting = entry.partition(":")
        key, _, value = setting.partition("=")
        per_rule.setdefault(rule, {})[key] = value
    assert set(per_rule) <= set(rules), f"profile names rules that do not exist: {set(per_rule) - set(rules)}"
    missing = gpu_rules - set(per_rule)
    assert not missing, f"GPU rules without GPU settings in profiles/slurm/config.yaml: {sorted(missing)}"
    for rule in gpu_rules:
        assert per_rule[rule]["gpu"] == "1" and per_rule[rule]["cpus_per_gpu"] == "8", rule
        assert per_rule[rule]["cpus_per_task"] == "0", f"{rule}: cpus_per_task would shadow cpus_per_gpu"
        assert {"slurm_partition", "runtime", "mem_mb"} <= set(per_rule[rule]), rule
    assert {f"{rule}=8" for rule in gpu_rules} <= set(args["set-threads"])
    assert args["executor"] == "slurm" and args["slurm-status-command"] == "squeue"


def test_slurm_profile_takes_account_and_partitions_from_the_environment_only():
    plain = _profile("slurm")
    assert "slurm_account=''" in plain["default-resources"]
    assert "slurm_partition=''" in plain["default-resources"]
    site = _profile("slurm", MSMA_SLURM_ACCOUNT="lab", MSMA_SLURM_PARTITION="cpu", MSMA_SLURM_GPU_PARTITION="gpu",
                    MSMA_SLURM_CPUS_PER_GPU="4")
    assert {"slurm_account='lab'", "slurm_partition='cpu'"} <= set(site["default-resources"])
    assert "train_score_model:slurm_partition='gpu'" in site["set-resources"]
    assert "train_score_model:cpus_per_gpu=4" in site["set-resources"]
    for smk in (REPO / "rules").glob("*.smk"):
        assert not re.search(r"slurm_(account|partition)", smk.read_text()), smk.name


@pytest.mark.parametrize("name", ["slurm", "local", "default"])
def test_every_profile_entry_is_commented(name):
    for line in (REPO / "profiles" / name / "config.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"profiles/{name}/config.yaml: uncommented entry {line!r}"


def test_local_profile_shares_one_gpu():
    args = _profile("local")
    assert args["cores"] == "all" and "gpu=1" in args["resources"]
