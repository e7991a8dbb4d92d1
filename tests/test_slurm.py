"""The SLURM profile against a REAL SLURM: munge + slurmctld + slurmd from Debian, one node, no mock.

tests/slurm/cluster.py installs the packages if they are missing (root + apt-get), starts the daemons under a
temp dir (one fake GPU as gres), and stops them by pid afterwards. The workflow's tiny test config, cut to
12 synthetic subjects (5 usable), then runs through `snakemake --profile profiles/slurm` up to the trained
score model (the whole DAG is ~60 SLURM jobs, ~11 min on 2 busy cores: too long for the suite):
synthetic cohort, CBCL filter (a checkpoint), per-subject preprocessing and cropping (CPU rules) and
train_score_model (a `gpu: 1` rule), every job a real sbatch submission. The local node's partition and
core count reach the profile through its environment variables (MSMA_SLURM_*), so the profile file runs
unchanged. Skipped only when the packages cannot be installed or this machine has a SLURM config of its own.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm" / "cluster.py"
TINY = REPO / "tests" / "config" / "tiny.yaml"
TARGETS = ["results/models/score/model.pt"]
GPU_RULES = {"train_score_model"}
SNAKEMAKE_TIMEOUT_S = 900

pytestmark = pytest.mark.slow


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
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    # the fewest subjects the schema allows, 6 of them broken: 5 usable -> train/val/test 3/1/1
    smaller = workdir / "smaller.yaml"
    smaller.write_text("synthetic: {n_subjects: 12, voxel_mm: 4.0, broken: [missing_t2w, truncated_t1w, nan_t2w, "
                       "4d_t1w, missing_t2w, truncated_t1w]}\n")
    env = {**os.environ, "PYTHONHASHSEED": "0", "SLURM_CONF": cluster["conf"],
           "MSMA_SLURM_PARTITION": cluster["partition"], "MSMA_SLURM_GPU_PARTITION": cluster["partition"],
           "MSMA_SLURM_CPUS_PER_GPU": "1"}
    cmd = ["timeout", "-s", "KILL", str(SNAKEMAKE_TIMEOUT_S),
           sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(TINY), str(smaller),
           "--profile", str(REPO / "profiles" / "slurm"),
           # scalar settings for a 2-core test node (a command-line dict would replace the profile's whole one)
           "--jobs", "2", "--latency-wait", "5", "--retries", "0", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs", *TARGETS]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SNAKEMAKE_TIMEOUT_S + 60)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake --profile profiles/slurm failed (rc {result.returncode}):\n{log[-8000:]}"
    return workdir, log, cluster


def _submitted(log):
    """{slurm job id: rule} from Snakemake's 'submitted with SLURM jobid' lines."""
    found = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/", log)
    return {int(jobid): rule for jobid, rule in found}


def _scontrol(jobid, env):
    out = subprocess.run(["scontrol", "show", "job", "-o", str(jobid)], capture_output=True, text=True, env=env,
                         check=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def test_every_job_was_submitted_to_slurm_and_completed(slurm_run):
    _, log, cluster = slurm_run
    submitted = _submitted(log)
    rules = set(submitted.values())
    assert {"synthetic_cohort", "filter_cohort", "preprocess", "crop_box", "crop", "train_score_model"} <= rules
    assert len(submitted) == len(set(submitted)) >= 8
    completed = {}
    for line in Path(cluster["jobcomp"]).read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        completed[int(fields["JobId"])] = fields["JobState"]
    assert {jobid: completed.get(jobid) for jobid in submitted} == dict.fromkeys(submitted, "COMPLETED")


def test_gpu_rule_got_a_gpu_and_cpu_rules_none(slurm_run):
    _, log, cluster = slurm_run
    env = {**os.environ, "SLURM_CONF": cluster["conf"]}
    for jobid, rule in _submitted(log).items():
        job = _scontrol(jobid, env)
        assert job["Partition"] == cluster["partition"]
        assert job["Comment"].startswith(f"rule_{rule}")
        gpus = "gres:gpu:1" in job.get("TresPerJob", "") or "gres/gpu=1" in job.get("TRES", "")
        assert gpus == (rule in GPU_RULES), (rule, job.get("TresPerJob"), job.get("TRES"))


def test_outputs_are_right(slurm_run):
    workdir, _, _ = slurm_run
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
    rules = _rule_resources()
    gpu_rules = {rule for rule, block in rules.items() if re.search(r"\bgpu\s*=", block)}
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
