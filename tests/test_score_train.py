"""Score-network training for real on tiny volumes: outputs, seeding, and resume after a SIGKILL."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from training_checks import assert_resumed_like_a_straight_run, kill_after_first_checkpoint, same_weights, weights

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.network import load_score_model
from spatial_msma.score.train import ScoreConfig, train_score_model

torch.set_num_threads(1)

SHAPE = (16, 16, 16)
CFG = {
    "network": {"channels": [8, 8], "norm_num_groups": 4},
    "steps": 12,
    "checkpoint_every": 4,
    "val_every": 4,
    "val_images": 2,
    "val_levels": 2,
    "warmup": 3,
    "device": "cpu",
}


def make_images(directory: Path, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two-channel ellipsoid 'brains' with smooth contrast and noise SD 0.05, background -1."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    mask = ((g / np.array([0.8, 0.85, 0.75])[:, None, None, None]) ** 2).sum(0) < 1
    images, masks = [], []
    for i in range(n):
        base = 0.3 * np.cos(3 * g[0] + rng.normal()) + 0.2 * g[1]
        data = np.stack([np.where(mask, base + rng.normal(0, 0.05, SHAPE), -1.0),
                         np.where(mask, -base + rng.normal(0, 0.05, SHAPE), -1.0)])
        images.append(str(directory / f"sub-{i:02d}.nii.gz"))
        masks.append(str(directory / f"sub-{i:02d}_brainmask.nii.gz"))
        io.write_channels(data.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0]), images[-1])
        io.write_nifti(mask, np.diag([4.0, 4.0, 4.0, 1.0]), masks[-1])
    return images, masks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    images, masks = make_images(directory, 6)
    return {"train": images[:4], "train_masks": masks[:4], "val": images[4:]}


def run_training(data, out: Path, cfg=CFG, seed=7):
    train_score_model(data["train"], data["train_masks"], data["val"], out / "model.pt", out / "log.csv",
                      out / "fig.png", out / "ck", cfg, seed)


def test_config_errors_name_the_key():
    with pytest.raises(InputError, match="unknown key"):
        ScoreConfig.from_dict({"stepz": 3})
    with pytest.raises(InputError, match="sigma_min"):
        ScoreConfig.from_dict({"sigma_min": "small"})
    with pytest.raises(InputError, match="log_every"):
        ScoreConfig.from_dict({"checkpoint_every": 5, "log_every": 2})
    with pytest.raises(InputError, match="loss_reduction"):
        ScoreConfig.from_dict({"loss_reduction": "median"})
    with pytest.raises(InputError, match="t_sampling"):
        ScoreConfig.from_dict({"t_sampling": "beta"})
    with pytest.raises(InputError, match="t_uniform_fraction"):
        ScoreConfig.from_dict({"t_uniform_fraction": 1.5})


def test_training_writes_a_self_describing_model_log_and_figure(data, tmp_path):
    run_training(data, tmp_path)
    model = load_score_model(tmp_path / "model.pt")
    meta = model.meta
    assert meta["in_channels"] == 2 and meta["image_shape"] == list(SHAPE) and meta["steps"] == 12
    # sigma_min auto measured the noise SD (0.05) of the training images; sigma_max their spread
    assert meta["sigma_estimates"]["sigma_min_auto"] == pytest.approx(0.05, rel=0.15)
    assert model.sde.sigma_min == meta["sigma_estimates"]["sigma_min_auto"]
    assert model.sde.sigma_max == meta["sigma_estimates"]["sigma_max_auto"] > 1
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log.columns) == ["step", "batch_size", "lr", "train_loss", "val_loss"]
    assert log["step"].tolist() == list(range(1, 13))
    assert log["val_loss"].notna().tolist() == [s % 4 == 0 for s in range(1, 13)]
    assert log["lr"].iloc[0] == pytest.approx(1e-3 / 3) and log["lr"].iloc[-1] == pytest.approx(1e-3)
    # an untrained (zero-output) network has loss E z^2 ~ 1; training must already have lowered it
    assert 0.8 < log["train_loss"].iloc[0] < 1.2
    val = log["val_loss"].dropna()
    assert val.iloc[-1] < val.iloc[0] < 1.2
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    # the EMA weights are what the model file holds, and they run
    x = torch.zeros(1, 2, *SHAPE)
    assert model.net(x, torch.tensor([0.1])).abs().sum() > 0


def test_same_seed_same_bytes_and_batch_doubling(data, tmp_path):
    cfg = {**CFG, "steps": 6, "batch_doubling": True, "checkpoint_every": 2}
    run_training(data, tmp_path / "a", cfg)
    run_training(data, tmp_path / "b", cfg)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert pd.read_csv(tmp_path / "a" / "log.csv")["batch_size"].tolist() == [2, 2, 2, 4, 4, 4]
    run_training(data, tmp_path / "c", cfg, seed=8)
    assert not same_weights(weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "c" / "model.pt"))


def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(data, tmp_path, caplog):
    cfg = {**CFG, "steps": 30, "checkpoint_every": 3, "val_every": 6}
    out = tmp_path / "killed"
    out.mkdir()
    args = {"train_images": data["train"], "train_masks": data["train_masks"], "val_images": data["val"],
            "model_out": str(out / "model.pt"), "log_out": str(out / "log.csv"), "figure_out": None,
            "checkpoint_dir": str(out / "ck"), "cfg": cfg, "seed": 7}
    killed_at = kill_after_first_checkpoint("spatial_msma.score.train", "train_score_model", args, out / "ck")
    assert 3 <= killed_at < 30

    # the rerun (as Snakemake would start it: same arguments) continues from the checkpoint
    caplog.set_level(logging.INFO, logger="rerun")
    train_score_model(**args, logger=logging.getLogger("rerun"))
    run_training(data, tmp_path / "straight", cfg)
    assert_resumed_like_a_straight_run(caplog.text, out, tmp_path / "straight", killed_at, 30)


def test_checkpoints_of_another_configuration_are_not_resumed(data, tmp_path):
    run_training(data, tmp_path, {**CFG, "steps": 4})
    assert (tmp_path / "ck" / "step_000000004.pt").exists()
    run_training(data, tmp_path, {**CFG, "steps": 4, "lr": 5e-4})
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["step"].tolist() == [1, 2, 3, 4] and log["lr"].iloc[-1] == pytest.approx(5e-4)
