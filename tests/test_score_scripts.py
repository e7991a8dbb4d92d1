"""The three score workflow scripts, run by a real Snakemake on a tiny DAG (tiny volumes, a few steps)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatial_msma import io

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
SHAPE = (16, 16, 16)

SNAKEFILE = """
SUBJECTS = {subjects}
TRAIN, VAL, TEST = SUBJECTS[:4], SUBJECTS[4:6], SUBJECTS[6:]
SCORE = {{"network": {{"channels": [8, 8], "norm_num_groups": 4}}, "steps": 4, "checkpoint_every": 2,
          "val_every": 2, "device": "cpu"}}
NORMS = {{"n_levels": 3, "t_min": 0.0, "t_max": 0.5, "device": "cpu"}}

rule all:
    input: "results/msma_image_auroc.csv"

rule train_score_model:
    input:
        train=expand("cropped/{{s}}.nii.gz", s=TRAIN),
        train_masks=expand("cropped/{{s}}_brainmask.nii.gz", s=TRAIN),
        val=expand("cropped/{{s}}.nii.gz", s=VAL),
    output:
        model="results/models/score/model.pt",
        log="results/models/score/training_log.csv",
        figure="results/figures/score_training.png",
    params: cfg=SCORE, seed=3, checkpoint_dir="results/checkpoints/score"
    log: "logs/train_score_model.log"
    threads: 1
    script: "{scripts}/train_score_model.py"

def images(w):
    subjects = {{"train": TRAIN, "val": VAL, "test": TEST, "test_lesioned": TEST}}[w.set]
    name = "lesions/{{s}}_image.nii.gz" if w.set == "test_lesioned" else "cropped/{{s}}.nii.gz"
    return {{"images": expand(name, s=subjects), "masks": expand("cropped/{{s}}_brainmask.nii.gz", s=subjects)}}

rule score_norms_set:
    input: unpack(images), model="results/models/score/model.pt"
    output: manifest="results/score_norms/{{set}}/manifest.tsv"
    params:
        cfg=NORMS,
        subjects=lambda w: {{"train": TRAIN, "val": VAL, "test": TEST, "test_lesioned": TEST}}[w.set]
    log: "logs/score_norms_{{set}}.log"
    threads: 1
    script: "{scripts}/score_norms.py"

rule msma_image:
    input:
        train="results/score_norms/train/manifest.tsv",
        val="results/score_norms/val/manifest.tsv",
        test="results/score_norms/test/manifest.tsv",
        test_lesioned="results/score_norms/test_lesioned/manifest.tsv",
        lesion_masks=expand("lesions/{{s}}_mask.nii.gz", s=TEST),
    output:
        auroc="results/msma_image_auroc.csv",
        scores="results/msma_image_scores.csv",
        figure="results/figures/score_norms.png",
    params: cfg={{"n_levels": None, "n_components": 1}}, seed=3
    log: "logs/msma_image.log"
    script: "{scripts}/msma_image.py"
"""


@pytest.mark.slow
def test_scripts_run_under_snakemake(tmp_path):
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    brain = (g**2).sum(0) < 0.7
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    subjects = [f"sub-{i:02d}" for i in range(9)]
    for s in subjects:
        data = np.stack([np.where(brain, 0.3 * g[0] + rng.normal(0, 0.05, SHAPE), -1.0) for _ in range(2)])
        io.write_channels(data.astype(np.float32), affine, tmp_path / "cropped" / f"{s}.nii.gz")
        io.write_nifti(brain, affine, tmp_path / "cropped" / f"{s}_brainmask.nii.gz")
        lesion = np.zeros(SHAPE, bool)
        lesion[7:10, 7:10, 7:10] = True
        data[1, lesion] += 0.8
        io.write_channels(data.astype(np.float32), affine, tmp_path / "lesions" / f"{s}_image.nii.gz")
        io.write_nifti(lesion, affine, tmp_path / "lesions" / f"{s}_mask.nii.gz")
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(subjects=subjects, scripts=SCRIPTS))
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(tmp_path),
                          "-s", str(tmp_path / "Snakefile")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "results/checkpoints/score/step_000000004.pt").exists()
    assert "score training: step 4/4" in (tmp_path / "logs/train_score_model.log").read_text()
    manifest = pd.read_csv(tmp_path / "results/score_norms/test_lesioned/manifest.tsv", sep="\t")
    assert manifest["subject"].tolist() == subjects[6:]
    assert all((tmp_path / p).exists() for p in manifest["path"])
    auroc = pd.read_csv(tmp_path / "results/msma_image_auroc.csv")
    assert auroc["feature"].iloc[0] == "gmm_nll" and auroc["n_lesioned"].iloc[0] == 3
    scores = pd.read_csv(tmp_path / "results/msma_image_scores.csv")
    assert scores.groupby("set").size().to_dict() == {"test": 3, "test_lesioned": 3, "train": 4, "val": 2}
    for figure in ("score_training.png", "score_norms.png"):
        assert (tmp_path / "results/figures" / figure).stat().st_size > 10_000
