"""Training the score network by denoising score matching, resumably, with a CSV log and a loss figure."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spatial_msma import io
from spatial_msma.io import InputError, config_section
from spatial_msma.progress import Progress
from spatial_msma.score.network import MODEL_FORMAT, NetworkConfig, ScoreNet
from spatial_msma.score.sde import LOSS_REDUCTIONS, T_SAMPLINGS, VESDE, auto_sigmas, dsm_loss
from spatial_msma.training import (
    CheckpointDir,
    CsvLog,
    as_path_list,
    make_ema,
    plot_loss_curves,
    resolve_device,
    restore_training_state,
    resume_or_start,
    save_torch_atomic,
    set_deterministic,
    training_state,
    warmup_scheduler,
)

LOG_COLUMNS = ("step", "batch_size", "lr", "train_loss", "val_loss")

#: Keys that change how long or how verbosely a run goes, not what it computes up to a given step:
#: a checkpoint stays valid when only these differ (so ``steps`` can be raised to extend a run).
RUN_LENGTH_KEYS = ("steps", "checkpoint_every", "keep_checkpoints", "val_every", "log_every", "device")


@dataclass(frozen=True)
class ScoreConfig:
    """The ``score`` config section. Defaults are the 2-core CPU default (4 mm, about 5 minutes)."""

    network: NetworkConfig = NetworkConfig()
    sigma_min: float | str = "auto"
    sigma_max: float | str = "auto"
    sigma_auto_max_images: int = 100
    t_eps: float = 1e-5
    t_sampling: str = "uniform"
    log_sigma_mean: float = -1.2
    log_sigma_std: float = 1.2
    t_uniform_fraction: float = 0.2
    steps: int = 150
    batch_size: int = 2
    lr: float = 1e-3
    warmup: int = 20
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    batch_doubling: bool = False
    loss_reduction: str = "mean"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    val_every: int = 25
    val_images: int = 4
    val_levels: int = 4
    log_every: int = 1
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> ScoreConfig:
        cfg = config_section(cls, cfg, "score")
        cfg["network"] = NetworkConfig.from_dict(cfg.get("network"))  # type: ignore[arg-type]
        out = cls(**cfg)  # type: ignore[arg-type]
        for key in ("sigma_min", "sigma_max"):
            value = getattr(out, key)
            if value != "auto" and (isinstance(value, str | bool) or not float(value) > 0):
                raise InputError(f"config score.{key}: expected 'auto' or a positive number, got {value!r}")
        if out.t_sampling not in T_SAMPLINGS:
            raise InputError(f"config score.t_sampling: expected one of {T_SAMPLINGS}, got {out.t_sampling!r}")
        if not 0.0 <= out.t_uniform_fraction <= 1.0:
            raise InputError(f"config score.t_uniform_fraction: must be in [0, 1], got {out.t_uniform_fraction}")
        if not out.log_sigma_std > 0:
            raise InputError(f"config score.log_sigma_std: must be > 0, got {out.log_sigma_std}")
        if out.loss_reduction not in LOSS_REDUCTIONS:
            raise InputError(
                f"config score.loss_reduction: expected one of {LOSS_REDUCTIONS}, got {out.loss_reduction!r}"
            )
        for key in ("steps", "batch_size", "checkpoint_every", "val_every", "val_levels", "log_every",
                    "sigma_auto_max_images"):
            if int(getattr(out, key)) < 1:
                raise InputError(f"config score.{key}: must be >= 1, got {getattr(out, key)}")
        if out.checkpoint_every % out.log_every:
            # a resumed run restarts the running train-loss mean at the checkpoint: rows must not straddle it
            raise InputError(f"config score.checkpoint_every ({out.checkpoint_every}) must be a multiple of "
                             f"score.log_every ({out.log_every})")
        return out

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        return d


def load_volumes(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Read (C, X, Y, Z) images into one (N, C, X, Y, Z) float32 array; all must share a shape."""
    if not paths:
        return np.zeros((0,), np.float32)
    volumes = [io.read_channels(p)[0] for p in paths]
    for path, vol in zip(paths, volumes, strict=True):
        if vol.shape != volumes[0].shape:
            raise InputError(f"image {path}: shape {vol.shape} differs from {paths[0]} {volumes[0].shape}")
    return np.stack(volumes)


def fixed_validation_batch(
    val: np.ndarray, sde: VESDE, cfg: ScoreConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The same val images, noise levels and noise draws at every evaluation, so val losses compare.

    Levels are the midpoints of ``val_levels`` equal bins of t in [0, 1]; noise comes from its own
    generator (``seed + 1``) and never touches the training stream.
    """
    n = min(len(val), cfg.val_images)
    if n == 0:
        return None
    t = (torch.arange(cfg.val_levels, dtype=torch.float64) + 0.5) / cfg.val_levels
    sigmas = sde.sigma(t).float()
    x = torch.from_numpy(val[:n]).repeat_interleave(cfg.val_levels, dim=0)
    sigma = sigmas.repeat(n)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    return x, sigma, z


@torch.no_grad()
def validation_loss(model: ScoreNet, batch: tuple[torch.Tensor, ...], cfg: ScoreConfig, device: torch.device) -> float:
    model.eval()
    x, sigma, z = batch
    total = 0.0
    chunk = max(cfg.batch_size, 2)
    for start in range(0, len(x), chunk):
        sl = slice(start, start + chunk)
        part = dsm_loss(model, x[sl].to(device), sigma[sl].to(device), z[sl].to(device), cfg.loss_reduction)
        total += float(part) * len(x[sl])
    return total / len(x)


def _fingerprint(cfg: ScoreConfig, seed: int, train_paths: Sequence[str | os.PathLike], train: np.ndarray,
                 val: np.ndarray) -> dict[str, object]:
    """What a checkpoint must share with this run to be resumed: config (less run length), seed, and the
    training and validation data themselves (a content hash: a regenerated cohort keeps its file names)."""
    relevant = {k: v for k, v in cfg.to_dict().items() if k not in RUN_LENGTH_KEYS}
    digest = hashlib.blake2b(digest_size=16)
    for array in (train, val):
        digest.update(np.ascontiguousarray(array).data)
    raw = {"config": relevant, "seed": int(seed), "train": [Path(p).name for p in train_paths],
           "shape": list(train.shape), "data_hash": digest.hexdigest()}
    return json.loads(json.dumps(raw))


def train_score_model(
    train_images: Sequence[str | os.PathLike],
    train_masks: Sequence[str | os.PathLike],
    val_images: Sequence[str | os.PathLike],
    model_out: str | os.PathLike,
    log_out: str | os.PathLike,
    figure_out: str | os.PathLike | None,
    checkpoint_dir: str | os.PathLike,
    cfg: Mapping[str, object] | ScoreConfig,
    seed: int,
    logger: logging.Logger | None = None,
) -> None:
    """Train (or resume training) the score network; write the model, the CSV log and the loss figure.

    The model file holds the EMA weights with everything needed to rebuild and use the network (network
    config, channels, image shape, sigma_min/max and what ``auto`` measured) -- see
    :func:`spatial_msma.score.network.load_score_model`. No data augmentation: the images are already
    in template space, and flips would teach the model that asymmetric anatomy is normal.
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, ScoreConfig) else ScoreConfig.from_dict(cfg)
    train_images, train_masks = as_path_list(train_images), as_path_list(train_masks)
    val_images = as_path_list(val_images)
    if len(train_images) != len(train_masks):
        raise InputError(f"score training: {len(train_images)} train images but {len(train_masks)} brain masks")
    device = resolve_device(cfg.device)
    set_deterministic(device)
    train = load_volumes(train_images)
    if len(train) < 1:
        raise InputError("score training: no training images")
    masks = [io.read_mask(p)[0] for p in train_masks]
    for path, mask in zip(train_masks, masks, strict=True):
        if mask.shape != train.shape[2:]:
            raise InputError(f"brain mask {path}: shape {mask.shape} differs from the images {train.shape[2:]}")
    val = load_volumes(val_images)
    if len(val) and val.shape[1:] != train.shape[1:]:
        raise InputError(f"val image {val_images[0]}: shape {val.shape[1:]} differs from train {train.shape[1:]}")
    in_channels, shape = int(train.shape[1]), tuple(int(n) for n in train.shape[2:])
    logger.info("score training: %d train / %d val images of %s, %d channels, device %s",
                len(train), len(val), shape, in_channels, device)

    checkpoints = CheckpointDir(checkpoint_dir, keep=cfg.keep_checkpoints)
    fingerprint = _fingerprint(cfg, seed, train_images, train, val)
    state = resume_or_start(checkpoints, fingerprint, logger)
    if state is None:
        sigma_min, sigma_max, measured = auto_sigmas(
            list(train), masks, cfg.sigma_min, cfg.sigma_max, cfg.sigma_auto_max_images,
            np.random.default_rng(seed),
        )
    else:
        sigma_min, sigma_max = float(state["sigma_min"]), float(state["sigma_max"])  # type: ignore[arg-type]
        measured = dict(state["sigma_estimates"])  # type: ignore[arg-type]
    sde = VESDE(sigma_min, sigma_max, cfg.t_eps)
    logger.info("sigma_min %.4g, sigma_max %.4g (measured: %s)", sigma_min, sigma_max,
                ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))

    torch.manual_seed(seed)
    model = ScoreNet(in_channels, shape, cfg.network).to(device)
    ema = make_ema(model, cfg.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = warmup_scheduler(optimizer, cfg.warmup)
    generators = {"train": torch.Generator().manual_seed(seed)}
    log = CsvLog(checkpoints.directory / "training_log.csv", LOG_COLUMNS)
    checkpoints.directory.mkdir(parents=True, exist_ok=True)
    start = 0
    if state is not None:
        start = restore_training_state(state, model, optimizer, scheduler, ema, generators)
    log.truncate(start)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("network %s: %.3g M parameters; steps %d..%d", cfg.network.to_dict(), n_params / 1e6, start, cfg.steps)

    val_batch = fixed_validation_batch(val, sde, cfg, seed)
    train_t = torch.from_numpy(train)
    extra = {"fingerprint": fingerprint, "sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_estimates": measured}
    progress = Progress(cfg.steps, "score training", logger, start=start)
    recent: list[float] = []
    for step in range(start, cfg.steps):
        batch_size = cfg.batch_size * (2 if cfg.batch_doubling and step >= cfg.steps // 2 else 1)
        gen = generators["train"]
        idx = torch.randint(len(train_t), (batch_size,), generator=gen)
        x = train_t[idx]
        t = sde.sample_t(batch_size, gen, cfg.t_sampling, cfg.log_sigma_mean, cfg.log_sigma_std,
                         cfg.t_uniform_fraction)
        sigma = sde.sigma(t)
        z = torch.randn(x.shape, generator=gen)
        model.train()
        loss = dsm_loss(model, x.to(device), sigma.to(device), z.to(device), cfg.loss_reduction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        loss_value = float(loss.detach())
        recent.append(loss_value)
        done = step + 1
        val_loss = None
        if val_batch is not None and (done % cfg.val_every == 0 or done == cfg.steps):
            val_loss = validation_loss(ema.module, val_batch, cfg, device)
        if done % cfg.log_every == 0 or done == cfg.steps or val_loss is not None:
            log.append({"step": done, "batch_size": batch_size, "lr": lr,
                        "train_loss": float(np.mean(recent)), "val_loss": val_loss})
            recent = []
        extra_fields = {"val_loss": val_loss} if val_loss is not None else {}
        progress.update(done, loss=loss_value, **extra_fields)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoints.save(done, training_state(done, model, optimizer, scheduler, ema, generators, **extra))

    ema_net = ema.module
    model_file = {
        "format": MODEL_FORMAT,
        "network": cfg.network.to_dict(),
        "in_channels": in_channels,
        "image_shape": list(shape),
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "t_eps": cfg.t_eps,
        "sigma_estimates": measured,
        "steps": cfg.steps,
        "seed": int(seed),
        "config": json.loads(json.dumps(cfg.to_dict())),
        "state_dict": {k: v.detach().cpu() for k, v in ema_net.state_dict().items()},
    }
    save_torch_atomic(model_file, model_out)
    frame = pd.read_csv(log.path)
    io.write_table(frame, log_out)
    if figure_out is not None:
        plot_training_log(frame, figure_out, cfg)
    logger.info("score model written to %s", model_out)


def plot_training_log(frame: pd.DataFrame, path: str | os.PathLike, cfg: ScoreConfig) -> None:
    """Train loss (raw and running mean) and the fixed-noise val loss of the EMA weights, log scale."""
    plot_loss_curves(frame, path, f"DSM loss ({cfg.loss_reduction} over voxels)",
                     f"Score network training: batch {cfg.batch_size}, lr {cfg.lr:g}"
                     + (", batch doubled half way" if cfg.batch_doubling else ""),
                     val_label="val (EMA weights, fixed noise)")
