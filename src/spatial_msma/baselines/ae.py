"""The AE baseline (after Luo et al. 2023): a ResNet-style 3D convolutional autoencoder trained with MSE on
healthy images; the heatmap is the per-voxel reconstruction error summed over channels, brain-masked.

Network: MONAI's :class:`~monai.networks.nets.AutoEncoder` with ``num_res_units`` > 0, i.e. an encoder of
strided :class:`~monai.networks.blocks.ResidualUnit` blocks (conv-norm-PReLU subunits with a residual
shortcut), a residual bottleneck block that narrows the code to ``latent_channels``, and a decoder of
transposed convolutions each followed by a residual unit. That is the ResNet-style 3D AE of the paper
from MONAI's tested blocks rather than a bespoke module; there are NO skip connections, so the only path
from input to output is the bottleneck (at the default 4 mm: 8 channels x 5 x 6 x 5 = 1200 numbers for
2 x 40 x 48 x 40 = 153600 input values, 128x compression): a lesion the training images never showed
cannot be copied through, which is what makes the reconstruction error an anomaly score.

No normalisation layers (``norm=None``, PReLU activations): MONAI's default instance norm right after the
first convolution makes the features invariant to an affine change of the input intensities, and on test
volumes the trained AE reconstructed the brain with the wrong intensity offset (mean in-brain error 0.49
vs 0.44 without norm after 250 steps, 0.22 after 1000); group norm has the same per-image invariance, and
batch norm's integer ``num_batches_tracked`` buffer cannot be averaged by the EMA (``torch.lerp`` on Long).

Error type: ``error: abs`` (default) scores ``sum_c |x_c - x̂_c|``, the L1 residual of the reconstruction-
based brain-MRI anomaly detection literature (Baur et al. 2021) and the same per-voxel error as this
workflow's Inpaint and Restoration rows, so the table compares detectors, not error metrics; ``squared``
scores ``sum_c (x_c - x̂_c)^2``, the per-voxel term of the MSE the network was trained on. Which one Luo
et al. used could not be checked offline: the switch is there to try both.

Training is resumable exactly like the score network's (:mod:`spatial_msma.training`): checkpoints every
``checkpoint_every`` steps outside the declared outputs, a CSV log beside them, the EMA weights written
atomically as the final model only at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import AutoEncoder
from torch import nn

from spatial_msma import io
from spatial_msma.io import InputError, config_section
from spatial_msma.progress import Progress
from spatial_msma.score.train import load_volumes
from spatial_msma.training import (
    CheckpointDir,
    CsvLog,
    as_path_list,
    make_ema,
    plot_loss_curves,
    read_model_file,
    resolve_device,
    restore_training_state,
    resume_or_start,
    save_torch_atomic,
    set_deterministic,
    training_state,
    warmup_scheduler,
)

#: Tag of an AE model file written by :func:`train_ae`.
MODEL_FORMAT = "spatial_msma.ae_model.v1"
ERRORS = ("abs", "squared")
LOG_COLUMNS = ("step", "lr", "train_loss", "val_loss")
NETWORK_KEYS = ("channels", "strides", "num_res_units", "latent_channels")

#: Keys that change how long or how verbosely a run goes, not what it computes up to a given step
#: (``error`` only changes the heatmap): a checkpoint stays valid when only these differ.
RUN_LENGTH_KEYS = ("steps", "checkpoint_every", "keep_checkpoints", "val_every", "log_every", "device", "error")


@dataclass(frozen=True)
class AeConfig:
    """The ``ae`` config section.

    Sized for the default config (4 mm, 40 x 48 x 40, 2 channels, 2 shared CPU cores, whole DAG in about
    20 minutes; budget for this stage 2-3 minutes). Measured there (torch 2.13 CPU, 2 threads, load
    average 6-7 from other jobs, so +-50 %): channels (16, 32, 64), 2 residual subunits, latent 8
    (0.36 M parameters) took 0.33-0.42 s per step at batch 4 (median; single steps up to 0.9 s) and
    0.16-0.22 s at batch 2, so 300 steps at batch 4 are about 2 minutes and show each of the ~40 training
    images about 30 times; a heatmap is one forward pass, 0.2-0.4 s per image. The trade-off: on test
    volumes the reconstruction error of healthy tissue kept falling well past 250 steps (mean in-brain
    error 0.44 -> 0.22 from 250 to 1000 steps), so a longer or wider run (a GPU, the paper's 2 mm grid,
    tens of thousands of steps) sharpens healthy reconstructions and lowers false positives along edges,
    at linear cost.
    ``latent_channels`` sets the bottleneck width (compression): too wide and lesions are reconstructed too.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    latent_channels: int = 8
    error: str = "abs"
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    warmup: int = 20
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    val_every: int = 25
    val_images: int = 4
    log_every: int = 1
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None, where: str = "ae") -> AeConfig:
        cfg = config_section(cls, cfg, where)
        for key in ("channels", "strides"):
            if key in cfg:
                value = cfg[key]
                if isinstance(value, str) or not isinstance(value, Sequence):
                    raise InputError(f"config {where}.{key}: expected a list of integers, got {value!r}")
                cfg[key] = tuple(value)
        out = cls(**cfg)  # type: ignore[arg-type]
        out.validate(where)
        return out

    def validate(self, where: str = "ae") -> None:
        if not self.channels or len(self.channels) != len(self.strides):
            raise InputError(f"config {where}.strides: needs one stride per entry of channels "
                             f"({len(self.channels)} channels, {len(self.strides)} strides)")
        for key in ("channels", "strides"):
            bad = [v for v in getattr(self, key) if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                raise InputError(f"config {where}.{key}: entries must be positive integers, got {bad}")
        if self.error not in ERRORS:
            raise InputError(f"config {where}.error: expected one of {ERRORS}, got {self.error!r}")
        for key in ("num_res_units", "latent_channels", "steps", "batch_size", "checkpoint_every", "val_every",
                    "log_every", "keep_checkpoints"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"config {where}.{key}: must be an integer >= 1, got {value!r}")
        if self.val_images < 0:
            raise InputError(f"config {where}.val_images: must be >= 0, got {self.val_images}")
        if not self.lr > 0:
            raise InputError(f"config {where}.lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"config {where}.ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every % self.log_every:
            raise InputError(f"config {where}.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                             f"{where}.log_every ({self.log_every})")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        return d

    def network(self) -> dict[str, object]:
        return {k: v for k, v in self.to_dict().items() if k in NETWORK_KEYS}

    @property
    def divisor(self) -> int:
        return math.prod(self.strides)


class AeNet(nn.Module):
    """x -> x̂ for (B, C, X, Y, Z) volumes: MONAI ``AutoEncoder`` with residual units and a narrow bottleneck."""

    def __init__(self, in_channels: int, image_shape: Sequence[int], cfg: AeConfig):
        super().__init__()
        bad = [(axis, n) for axis, n in enumerate(image_shape) if n % cfg.divisor]
        if bad:
            raise InputError(f"AE: image shape {tuple(image_shape)}: axes {bad} are not multiples of "
                             f"{cfg.divisor} (the product of ae.strides {list(cfg.strides)})")
        self.in_channels = int(in_channels)
        self.image_shape = tuple(int(n) for n in image_shape)
        self.cfg = cfg
        self.ae = AutoEncoder(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=cfg.channels,
            strides=cfg.strides,
            num_res_units=cfg.num_res_units,
            inter_channels=[cfg.latent_channels],
            num_inter_units=cfg.num_res_units,
            norm=None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae(x)


def reconstruction_error(x: torch.Tensor, recon: torch.Tensor, error: str = "abs") -> torch.Tensor:
    """(B, C, ...) -> (B, ...): per-voxel error summed over channels (``abs`` L1 or ``squared``)."""
    if error == "abs":
        return (x - recon).abs().sum(1)
    if error == "squared":
        return (x - recon).pow(2).sum(1)
    raise InputError(f"AE error: expected one of {ERRORS}, got {error!r}")


@torch.no_grad()
def ae_heatmap(model: AeNet | AeModel, image: np.ndarray, mask: np.ndarray, error: str = "abs") -> np.ndarray:
    """The AE heatmap of one (C, X, Y, Z) image: reconstruction error summed over channels, 0 outside ``mask``.

    ``model`` is an :class:`AeNet` or the :class:`AeModel` that :func:`load_ae_model` returns (eval mode);
    float32 (X, Y, Z) out.
    """
    net = model.net if isinstance(model, AeModel) else model
    if image.ndim != 4 or image.shape[0] != net.in_channels or tuple(image.shape[1:]) != net.image_shape:
        raise InputError(f"AE heatmap: image {image.shape} does not match the model's "
                         f"({net.in_channels}, {', '.join(map(str, net.image_shape))})")
    if mask.shape != image.shape[1:]:
        raise InputError(f"AE heatmap: mask {mask.shape} does not match image {image.shape[1:]}")
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[None]
    err = reconstruction_error(x, net(x), error)[0].cpu().numpy()
    return np.where(mask, err, 0.0).astype(np.float32)


@dataclass
class AeModel:
    """A trained AE (EMA weights, eval mode) and its file's metadata."""

    net: AeNet
    meta: dict[str, object]


def load_ae_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> AeModel:
    """Rebuild the network a model file describes and load its weights (no config needed)."""
    data = read_model_file(path, MODEL_FORMAT, "AE model")
    cfg = AeConfig.from_dict(data["network"], where=f"{path}: network")
    net = AeNet(int(data["in_channels"]), tuple(data["image_shape"]), cfg)
    net.load_state_dict(data["state_dict"])
    net.to(device).eval()
    return AeModel(net=net, meta={k: v for k, v in data.items() if k != "state_dict"})


@torch.no_grad()
def validation_loss(net: nn.Module, val: torch.Tensor, chunk: int, device: torch.device) -> float:
    """Mean squared error over the fixed val images (chunks of at least 2: batch 1 is a slow 3D-conv path)."""
    net.eval()
    total = 0.0
    chunk = max(chunk, 2)
    for start in range(0, len(val), chunk):
        x = val[start:start + chunk].to(device)
        total += float((net(x) - x).pow(2).mean()) * len(x)
    return total / len(val)


def _fingerprint(cfg: AeConfig, seed: int, train_paths: Sequence[str | os.PathLike], train: np.ndarray,
                 val: np.ndarray) -> dict[str, object]:
    """What a checkpoint must share with this run to be resumed: config (less run length), seed, the data."""
    relevant = {k: v for k, v in cfg.to_dict().items() if k not in RUN_LENGTH_KEYS}
    digest = hashlib.blake2b(digest_size=16)
    for array in (train, val):
        digest.update(np.ascontiguousarray(array).data)
    raw = {"config": relevant, "seed": int(seed), "train": [Path(p).name for p in train_paths],
           "shape": list(train.shape), "data_hash": digest.hexdigest()}
    return json.loads(json.dumps(raw))


def train_ae(
    train_images: Sequence[str | os.PathLike],
    val_images: Sequence[str | os.PathLike],
    model_out: str | os.PathLike,
    log_out: str | os.PathLike,
    figure_out: str | os.PathLike | None,
    checkpoint_dir: str | os.PathLike,
    cfg: Mapping[str, object] | AeConfig,
    seed: int,
    logger: logging.Logger | None = None,
) -> None:
    """Train (or resume training) the autoencoder with MSE on healthy images; write model, CSV log, figure.

    Batches are drawn with replacement from the training images by an explicit generator (part of the
    checkpointed RNG state); the loss is the mean squared error over all voxels and channels. The val
    loss is the same MSE of the EMA weights on the first ``val_images`` val images. No augmentation: the
    images share the template grid, and flips would teach the AE that asymmetric anatomy is normal.
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, AeConfig) else AeConfig.from_dict(cfg)
    train_images, val_images = as_path_list(train_images), as_path_list(val_images)
    device = resolve_device(cfg.device)
    set_deterministic(device)
    train = load_volumes(train_images)
    if len(train) < 1:
        raise InputError("AE training: no training images")
    val = load_volumes(val_images[: cfg.val_images])
    if len(val) and val.shape[1:] != train.shape[1:]:
        raise InputError(f"val image {val_images[0]}: shape {val.shape[1:]} differs from train {train.shape[1:]}")
    in_channels, shape = int(train.shape[1]), tuple(int(n) for n in train.shape[2:])
    logger.info("AE training: %d train / %d val images of %s, %d channels, device %s",
                len(train), len(val), shape, in_channels, device)

    checkpoints = CheckpointDir(checkpoint_dir, keep=cfg.keep_checkpoints)
    fingerprint = _fingerprint(cfg, seed, train_images, train, val)
    state = resume_or_start(checkpoints, fingerprint, logger)
    torch.manual_seed(seed)
    model = AeNet(in_channels, shape, cfg).to(device)
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
    logger.info("AE network %s: %.3g M parameters; steps %d..%d", cfg.network(), n_params / 1e6, start, cfg.steps)

    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
    progress = Progress(cfg.steps, "AE training", logger, start=start)
    recent: list[float] = []
    for step in range(start, cfg.steps):
        idx = torch.randint(len(train_t), (cfg.batch_size,), generator=generators["train"])
        x = train_t[idx].to(device)
        model.train()
        loss = (model(x) - x).pow(2).mean()
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
        if len(val_t) and (done % cfg.val_every == 0 or done == cfg.steps):
            val_loss = validation_loss(ema.module, val_t, cfg.batch_size, device)
        if done % cfg.log_every == 0 or done == cfg.steps or val_loss is not None:
            log.append({"step": done, "lr": lr, "train_loss": float(np.mean(recent)), "val_loss": val_loss})
            recent = []
        progress.update(done, loss=loss_value, **({"val_loss": val_loss} if val_loss is not None else {}))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoints.save(done, training_state(done, model, optimizer, scheduler, ema, generators,
                                                  fingerprint=fingerprint))

    model_file = {
        "format": MODEL_FORMAT,
        "network": cfg.network(),
        "in_channels": in_channels,
        "image_shape": list(shape),
        "steps": cfg.steps,
        "seed": int(seed),
        "config": json.loads(json.dumps(cfg.to_dict())),
        "state_dict": {k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
    }
    save_torch_atomic(model_file, model_out)
    frame = pd.read_csv(log.path)
    io.write_table(frame, log_out)
    if figure_out is not None:
        plot_training_log(frame, figure_out, cfg)
    logger.info("AE model written to %s", model_out)


def plot_training_log(frame: pd.DataFrame, path: str | os.PathLike, cfg: AeConfig) -> None:
    """Train MSE (raw and running mean) and the val MSE of the EMA weights, log scale."""
    plot_loss_curves(frame, path, "reconstruction MSE (mean over voxels)",
                     f"Autoencoder training: channels {list(cfg.channels)}, latent {cfg.latent_channels}, "
                     f"batch {cfg.batch_size}, lr {cfg.lr:g}")


def write_ae_heatmaps(
    model_path: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: Mapping[str, object] | AeConfig,
    logger: logging.Logger | None = None,
) -> None:
    """AE heatmaps of a set, written as ``out_dir/{subject}.nii.gz`` with each image's affine."""
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, AeConfig) else AeConfig.from_dict(cfg)
    images, masks = as_path_list(images), as_path_list(masks)
    if len(images) != len(masks):
        raise InputError(f"AE heatmaps: {len(images)} images but {len(masks)} brain masks")
    device = resolve_device(cfg.device)
    model = load_ae_model(model_path, device)
    logger.info("AE heatmaps (%s error summed over channels) of %d images, device %s", cfg.error, len(images), device)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    progress = Progress(len(images), "AE heatmaps", logger)
    for k, (image_path, mask_path) in enumerate(zip(images, masks, strict=True)):
        image, affine = io.read_channels(image_path)
        brain, _ = io.read_mask(mask_path)
        subject = Path(mask_path).name.removesuffix("_brainmask.nii.gz")
        heat = ae_heatmap(model, image, brain, cfg.error)
        io.write_nifti(heat, affine, Path(out_dir) / f"{subject}.nii.gz")
        progress.update(k + 1, mean_in_brain=float(heat[brain].mean()) if brain.any() else 0.0)
