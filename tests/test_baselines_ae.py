"""The AE baseline for real on tiny volumes: config errors, training, resume after SIGKILL, and a heatmap
that finds an inserted blob."""

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from training_checks import assert_resumed_like_a_straight_run, kill_after_first_checkpoint, same_weights, weights

from spatial_msma import io
from spatial_msma.baselines.ae import AeConfig, AeDetector, ae_reconstruction, load_ae_model, train_ae
from spatial_msma.baselines.residual import ResidualDetector, raw_heatmap
from spatial_msma.detector import write_set_heatmaps
from spatial_msma.io import InputError

torch.set_num_threads(1)

SHAPE = (16, 16, 16)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
CFG = {
    "channels": [8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "latent_channels": 4,
    "steps": 12,
    "batch_size": 2,
    "warmup": 3,
    "checkpoint_every": 4,
    "val_every": 4,
    "val_images": 2,
    "device": "cpu",
}


def brain_mask() -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    return ((g / np.array([0.8, 0.85, 0.75])[:, None, None, None]) ** 2).sum(0) < 1


def make_image(rng: np.random.Generator) -> np.ndarray:
    """Two-channel ellipsoid 'brain' (T1-like bright, T2-like dark, background -1): a smooth gradient with a
    random offset per image, noise SD 0.02. The brain is far from 0, so a network that outputs zeros (or
    copies its input) cannot pass the blob test below."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    mask = brain_mask()
    offset = rng.uniform(-0.2, 0.2)
    base = 0.5 + 0.3 * g[0] + offset
    return np.stack([np.where(mask, base + rng.normal(0, 0.02, SHAPE), -1.0),
                     np.where(mask, -base + rng.normal(0, 0.02, SHAPE), -1.0)]).astype(np.float32)


def write_images(directory: Path, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        images.append(str(directory / f"sub-{i:02d}.nii.gz"))
        masks.append(str(directory / f"sub-{i:02d}_brainmask.nii.gz"))
        io.write_channels(make_image(rng), AFFINE, images[-1])
        io.write_nifti(brain_mask(), AFFINE, masks[-1])
    return images, masks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    images, masks = write_images(tmp_path_factory.mktemp("images"), 8)
    return {"train": images[:6], "val": images[6:], "masks": masks}


def run(data, out: Path, cfg=CFG, seed=7, logger=None):
    train_ae(data["train"], data["val"], out / "model.pt", out / "log.csv", out / "fig.png", out / "ck", cfg, seed,
             logger)


@pytest.mark.parametrize("bad, key", [
    ({"stepz": 3}, "stepz"),
    ({"error": "l2"}, "error"),
    ({"norm": "batch"}, "norm"),
    ({"channels": [8, 16], "strides": [2]}, "strides"),
    ({"channels": "wide"}, "channels"),
    ({"latent_channels": 0}, "latent_channels"),
    ({"checkpoint_every": 5, "log_every": 2}, "log_every"),
    ({"ema_decay": 1.0}, "ema_decay"),
])
def test_config_errors_name_the_key(bad, key):
    with pytest.raises(InputError, match=key):
        AeConfig.from_dict(bad)


def test_image_sides_must_divide_by_the_strides(tmp_path):
    images, _ = write_images(tmp_path, 2)
    with pytest.raises(InputError, match="multiples of 6"):
        train_ae(images, [], tmp_path / "m.pt", tmp_path / "l.csv", None, tmp_path / "ck",
                 {**CFG, "strides": [2, 3]}, 1)


def test_training_lowers_the_loss_and_writes_model_log_figure(data, tmp_path):
    cfg = {**CFG, "steps": 40, "batch_size": 4, "val_every": 10, "checkpoint_every": 20}
    run(data, tmp_path, cfg)
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log.columns) == ["step", "lr", "train_loss", "val_loss"]
    assert log["step"].tolist() == list(range(1, 41))
    assert log["val_loss"].notna().tolist() == [s % 10 == 0 for s in range(1, 41)]
    assert log["train_loss"].iloc[-5:].mean() < 0.5 * log["train_loss"].iloc[:3].mean()
    val = log["val_loss"].dropna()
    assert val.iloc[-1] < val.iloc[0]
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    model = load_ae_model(tmp_path / "model.pt")
    assert model.meta["image_shape"] == list(SHAPE) and model.meta["in_channels"] == 2
    assert model.meta["network"]["channels"] == [8, 16]
    assert same_weights(model.net.state_dict(), {k: v for k, v in weights(tmp_path / "model.pt").items()})


def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(data, tmp_path, caplog):
    cfg = {**CFG, "steps": 400, "checkpoint_every": 4, "val_every": 50}
    out = tmp_path / "killed"
    out.mkdir()
    args = {"train_images": data["train"], "val_images": data["val"], "model_out": str(out / "model.pt"),
            "log_out": str(out / "log.csv"), "figure_out": None, "checkpoint_dir": str(out / "ck"),
            "cfg": cfg, "seed": 7}
    killed_at = kill_after_first_checkpoint("spatial_msma.baselines.ae", "train_ae", args, out / "ck")
    assert 4 <= killed_at < 400

    # the rerun (as Snakemake would start it: same arguments) continues from the checkpoint ...
    cfg_short = {**cfg, "steps": killed_at + 8}  # ... and `steps` may change without invalidating it
    caplog.set_level(logging.INFO, logger="rerun")
    train_ae(**{**args, "cfg": cfg_short}, logger=logging.getLogger("rerun"))
    assert "AE training: step" in caplog.text and "steps/s, ETA" in caplog.text
    run(data, tmp_path / "straight", cfg_short)
    assert_resumed_like_a_straight_run(caplog.text, out, tmp_path / "straight", killed_at, killed_at + 8)


def test_checkpoints_of_another_configuration_are_not_resumed(data, tmp_path):
    run(data, tmp_path, {**CFG, "steps": 4})
    assert (tmp_path / "ck" / "step_000000004.pt").exists()
    run(data, tmp_path, {**CFG, "steps": 4, "latent_channels": 2})
    assert load_ae_model(tmp_path / "model.pt").meta["network"]["latent_channels"] == 2
    assert pd.read_csv(tmp_path / "log.csv")["step"].tolist() == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(11)
    images, _ = write_images(out, 24, seed=3)
    cfg = {**CFG, "steps": 600, "batch_size": 4, "lr": 3e-3, "val_every": 100, "checkpoint_every": 600,
           "log_every": 10}
    train_ae(images, [], out / "model.pt", out / "log.csv", None, out / "ck", cfg, 1)
    return load_ae_model(out / "model.pt"), rng


def test_residual_is_high_on_an_inserted_blob(trained):
    model, rng = trained
    brain = brain_mask()
    image = make_image(rng)
    blob = np.zeros(SHAPE, bool)
    blob[6:10, 5:9, 7:11] = True  # inside the brain
    assert brain[blob].all()
    lesioned = image.copy()
    lesioned[:, blob] += 0.6
    heat = np.where(brain, raw_heatmap(lesioned, ae_reconstruction(model, lesioned), "abs"), 0.0)
    assert heat.shape == SHAPE and heat.dtype == np.float32
    rest = brain & ~blob
    assert heat[blob].mean() > 3 * heat[rest].mean()
    assert np.percentile(heat[blob], 25) > np.percentile(heat[rest], 95)
    # the same image without the blob: nothing stands out there, and squared error ranks the same way
    clean = raw_heatmap(image, ae_reconstruction(model, image), "abs")
    assert heat[blob].mean() > 3 * clean[blob].mean()
    squared = raw_heatmap(lesioned, ae_reconstruction(model, lesioned), "squared")
    assert squared[blob].mean() > 5 * squared[rest].mean()
    with pytest.raises(InputError, match="does not match the model"):
        ae_reconstruction(model, lesioned[:1])


def test_write_heatmaps_names_files_by_subject_with_the_image_affine(data, trained, tmp_path):
    model, _ = trained
    model_path = tmp_path / "model.pt"
    torch.save({**model.meta, "state_dict": model.net.state_dict()}, model_path)
    detector = ResidualDetector(AeDetector.load(model_path, CFG), "raw", error="squared")
    write_set_heatmaps(detector, data["val"], data["masks"][6:], tmp_path / "heat")
    written = sorted(p.name for p in (tmp_path / "heat").iterdir())
    assert written == ["sub-06.nii.gz", "sub-07.nii.gz"]
    img = nib.load(tmp_path / "heat" / "sub-06.nii.gz")
    assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
    image, _ = io.read_channels(data["val"][0])
    expected = np.where(brain_mask(), raw_heatmap(image, ae_reconstruction(model, image), "squared"), 0.0)
    assert np.allclose(np.asarray(img.dataobj), expected)


# ---------------------------------------------------------------------------------------------------------
# Early stopping on the lesion-free validation images

NO_GAIN = 1e9  # a min_delta no improvement can beat: the first evaluation stays the best


@pytest.mark.parametrize("bad, key", [
    ({"early_stopping": {"patience": 0}}, "early_stopping.patience"),
    ({"early_stopping": {"patience": 2, "min_delta": -1}}, "early_stopping.min_delta"),
    ({"early_stopping": {"patiense": 2}}, "patiense"),
    ({"early_stopping": 5}, "early_stopping"),
])
def test_early_stopping_config_errors_name_the_key(bad, key):
    with pytest.raises(InputError, match=key):
        AeConfig.from_dict(bad)


def test_early_stopping_stops_after_patience_evaluations_and_writes_the_best_weights(data, tmp_path):
    """With no improvement possible after the first evaluation (step 4), patience 2 stops at step 12 (evaluations
    at 8 and 12 not better), and the model file holds the EMA weights of step 4: those of a 4-step run."""
    stopping = {**CFG, "steps": 400, "early_stopping": {"patience": 2, "min_delta": NO_GAIN}}
    run(data, tmp_path / "stopped", stopping)
    log = pd.read_csv(tmp_path / "stopped" / "log.csv")
    assert log["step"].tolist() == list(range(1, 13))
    model = load_ae_model(tmp_path / "stopped" / "model.pt")
    assert (model.meta["best_step"], model.meta["stopped_at"]) == (4, 12)
    assert model.meta["best_val_loss"] == pytest.approx(log["val_loss"].dropna().iloc[0])
    run(data, tmp_path / "four", {**CFG, "steps": 4})
    assert same_weights(weights(tmp_path / "stopped" / "model.pt"), weights(tmp_path / "four" / "model.pt"))
    # patience 3 > the 3 evaluations of a 12-step run: it runs to the cap, and writes the weights of its best
    # evaluation: those of a run that ends there
    run(data, tmp_path / "capped", {**CFG, "early_stopping": {"patience": 3}})
    capped = load_ae_model(tmp_path / "capped" / "model.pt").meta
    val = pd.read_csv(tmp_path / "capped" / "log.csv").set_index("step")["val_loss"].dropna()
    assert capped["stopped_at"] == 0 and capped["best_step"] == val.idxmin()
    run(data, tmp_path / "best", {**CFG, "steps": int(val.idxmin())})
    assert same_weights(weights(tmp_path / "capped" / "model.pt"), weights(tmp_path / "best" / "model.pt"))


def test_without_validation_images_early_stopping_is_off_and_all_steps_run(data, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="noval")
    train_ae(data["train"], [], tmp_path / "m.pt", tmp_path / "l.csv", None, tmp_path / "ck",
             {**CFG, "early_stopping": {"patience": 1, "min_delta": NO_GAIN}}, 1, logging.getLogger("noval"))
    assert "no early stopping" in caplog.text
    assert pd.read_csv(tmp_path / "l.csv")["step"].tolist() == list(range(1, 13))


def test_killed_early_stopping_run_resumes_its_stopping_state_and_matches_an_uninterrupted_one(data, tmp_path,
                                                                                               caplog):
    """The best weights and the count of evaluations without improvement live in the checkpoints: a run
    killed after its first checkpoint stops at the same step (164 = 4 + 40 x 4) with the same bytes."""
    cfg = {**CFG, "steps": 400, "checkpoint_every": 4, "val_every": 4,
           "early_stopping": {"patience": 40, "min_delta": NO_GAIN}}
    out = tmp_path / "killed"
    out.mkdir()
    args = {"train_images": data["train"], "val_images": data["val"], "model_out": str(out / "model.pt"),
            "log_out": str(out / "log.csv"), "figure_out": None, "checkpoint_dir": str(out / "ck"),
            "cfg": cfg, "seed": 7}
    killed_at = kill_after_first_checkpoint("spatial_msma.baselines.ae", "train_ae", args, out / "ck")
    assert 4 <= killed_at < 164, "killed too late to test the resumed stopping state"
    caplog.set_level(logging.INFO, logger="rerun")
    train_ae(**args, logger=logging.getLogger("rerun"))
    assert f"(step {killed_at})" in caplog.text and "stopped early at step 164" in caplog.text
    run(data, tmp_path / "straight", cfg)
    assert pd.read_csv(out / "log.csv")["step"].tolist() == list(range(1, 165))
    for name in ("model.pt", "log.csv"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert load_ae_model(out / "model.pt").meta["best_step"] == 4
