"""Flow training: outputs, resume = uninterrupted run, determinism, the voxel Gaussian's known answers."""

from __future__ import annotations

import logging
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from synthetic_norms import write_synthetic_set

from spatial_msma.flow.data import SubjectData, iter_subjects, subsample_voxels
from spatial_msma.flow.gaussian import fit_voxel_gaussian
from spatial_msma.flow.model import ModelMeta, load_payload
from spatial_msma.flow.train import train_flow
from spatial_msma.io import InputError
from spatial_msma.methods import flow_section

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

TINY = {"steps": 20, "batch_voxels": 256, "images_per_step": 2, "val_every": 10, "checkpoint_every": 10,
        "val_voxels": 512, "hidden": 16, "n_layers": 2, "n_modes": 3, "base_hidden": 16, "position_dims": 6,
        "warmup_steps": 5, "global_features": {"channels": [2, 4], "dims": 4, "kernel": 5, "stride": 4, "heads": 2}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    train = write_synthetic_set(root / "train", 4, seed=0, shape=(16, 16, 16), n_levels=4)
    val = write_synthetic_set(root / "val", 2, seed=1, shape=(16, 16, 16), n_levels=4, prefix="val")
    return train, val


def run(data, out: Path, **overrides):
    train, val = data
    cfg = {**TINY, **overrides}
    result = train_flow(train.manifest, train.image_paths, val.manifest, val.image_paths, out / "model.pt",
                        out / "ckpt", out / "log.csv", out / "fig.png", cfg, seed=3)
    return result


def test_training_writes_model_log_and_figure(data, tmp_path):
    result = run(data, tmp_path)
    for name in ("model.pt", "log.csv", "fig.png", "ckpt/step_000000020.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["step"]) == [10, 20]
    assert np.isfinite(log[["train_nll", "val_nll", "val_nll_ema", "val_nll_gaussian"]].to_numpy()).all()
    assert result["val_nll"] == pytest.approx(min(log["val_nll"].min(), log["val_nll_ema"].min()))
    payload = load_payload(tmp_path / "model.pt")
    assert payload["kind"] == "flow" and payload["extra"]["val_nll"] == pytest.approx(result["val_nll"])
    assert payload["meta"]["levels"] == [0, 1, 2, 3]


def test_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    """20 steps at once == 10 steps, process ends, rerun with steps=20 (the 'kill and rerun' path)."""
    run(data, tmp_path / "once")
    run(data, tmp_path / "twice", steps=10)
    run(data, tmp_path / "twice")
    a = load_payload(tmp_path / "once" / "model.pt")
    b = load_payload(tmp_path / "twice" / "model.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "once" / "log.csv"),
                                  pd.read_csv(tmp_path / "twice" / "log.csv"))


def test_same_seed_same_bytes_and_stale_checkpoint_ignored(data, tmp_path, caplog):
    run(data, tmp_path / "a", steps=10)
    run(data, tmp_path / "b", steps=10)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="spatial_msma"):
        run(data, tmp_path / "b", steps=10, lr=3e-4)  # another config: the old checkpoint must not be resumed
    assert "starting afresh" in caplog.text
    assert (tmp_path / "a" / "model.pt").read_bytes() != (tmp_path / "b" / "model.pt").read_bytes()


def test_voxel_gaussian_method_and_mismatched_inputs(data, tmp_path):
    result = run(data, tmp_path, model="voxel_gaussian")
    assert load_payload(tmp_path / "model.pt")["kind"] == "voxel_gaussian"
    assert result["val_nll"] == result["val_nll_gaussian"]
    train, val = data
    with pytest.raises(InputError, match="score-norm files in .* but 3 images"):
        train_flow(train.manifest, train.image_paths[:-1], val.manifest, val.image_paths, tmp_path / "m.pt",
                   tmp_path / "c", tmp_path / "l.csv", tmp_path / "f.png", TINY, seed=0)
    other = write_synthetic_set(tmp_path / "other", 1, seed=5, shape=(8, 16, 16), n_levels=4, prefix="o")
    with pytest.raises(InputError, match="grid"):
        train_flow(train.manifest, train.image_paths, other.manifest, other.image_paths, tmp_path / "m.pt",
                   tmp_path / "c", tmp_path / "l.csv", tmp_path / "f.png", TINY, seed=0)


def test_voxel_gaussian_fit_matches_pooled_statistics():
    """Per-voxel mean/cov = the numpy mean/cov of the 3x3x3-pooled samples; empty regions fall back to the
    global mean/cov of all training voxels."""
    rng = np.random.default_rng(0)
    shape = (5, 5, 5)
    mask = np.zeros(shape, bool)
    mask[:3] = True  # voxels with x >= 4 have no pooled samples -> global fallback
    subjects = []
    for n in range(3):
        index = np.argwhere(mask)
        feats = (rng.normal(size=(len(index), 2)) @ np.array([[1.0, 0.5], [0.0, 0.8]]) + [n, -n]).astype(np.float32)
        subjects.append(SubjectData(f"s{n}", feats, index, np.zeros((2, *shape), np.float32), mask, np.eye(4),
                                    np.ones(2, np.float32)))
    meta = ModelMeta(levels=[0, 1], sigmas=[1.0, 1.0], shape=shape, affine=np.eye(4).tolist(), in_channels=2,
                     feature_mean=[0.0, 0.0], feature_std=[1.0, 1.0])
    model = fit_voxel_gaussian(subjects, meta, pool=3, ridge=0.0)
    centre = (1, 2, 2)
    samples = np.concatenate([s.features[(np.abs(s.index - centre) <= 1).all(1)] for s in subjects]).astype(float)
    assert len(samples) == 27 * 3
    np.testing.assert_allclose(model.mean[centre], samples.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.inv(model.precision[centre]), np.cov(samples.T, bias=True), rtol=1e-4)
    every = np.concatenate([s.features for s in subjects]).astype(float)
    np.testing.assert_allclose(model.mean[4, 4, 4], every.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.inv(model.precision[4, 4, 4]), np.cov(every.T, bias=True), rtol=1e-4)
    # the NLL is the Gaussian log-density at that voxel
    x = samples[:4].astype(np.float32)
    expected = -stats.multivariate_normal(samples.mean(0), np.cov(samples.T, bias=True)).logpdf(x)
    np.testing.assert_allclose(model.nll(x, np.tile(centre, (4, 1)), one_sided=False), expected, rtol=1e-4)


def test_train_flow_script_runs_under_a_snakemake_namespace(data, tmp_path):
    """The workflow script reads the injected ``snakemake`` object and writes the declared outputs."""
    train, val = data
    (tmp_path / "logs").mkdir()
    sm = SimpleNamespace(
        input=SimpleNamespace(train_manifest=str(train.manifest), val_manifest=str(val.manifest),
                              train_images=train.image_paths, val_images=val.image_paths),
        output=SimpleNamespace(model=str(tmp_path / "model.pt"), log=str(tmp_path / "log.csv"),
                               figure=str(tmp_path / "fig.png")),
        params=SimpleNamespace(cfg=flow_section({**TINY, "steps": 10}, "spatial_msma_noglobal"), seed=0,
                               checkpoint_dir=str(tmp_path / "ckpt")),
        log=[str(tmp_path / "logs" / "train_flow.log")], threads=1)
    runpy.run_path(str(REPO / "workflow" / "scripts" / "train_flow.py"), init_globals={"snakemake": sm})
    payload = load_payload(tmp_path / "model.pt")
    assert payload["config"]["use_global"] is False
    assert "flow: step 10/10" in (tmp_path / "logs" / "train_flow.log").read_text()


def test_subsample_voxels_is_a_seeded_subset(data):
    train, _ = data
    subjects = list(iter_subjects(train.manifest, train.image_paths, True, 1e-6))
    small = list(subsample_voxels(subjects, 100, seed=0))
    assert [s.index.shape[0] for s in small] == [100] * len(subjects)
    for full, sub in zip(subjects, small, strict=True):
        rows = {tuple(r) for r in full.index}
        assert all(tuple(r) in rows for r in sub.index)
        lookup = {tuple(r): f for r, f in zip(full.index, full.features, strict=True)}
        np.testing.assert_array_equal(np.stack([lookup[tuple(r)] for r in sub.index]), sub.features)
    again = subsample_voxels(subjects, 100, seed=0)
    assert all(np.array_equal(a.index, b.index) for a, b in zip(small, again, strict=True))
    assert list(subsample_voxels(subjects, None, seed=0)) == subjects
