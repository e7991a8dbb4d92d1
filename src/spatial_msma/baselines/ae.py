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

Trained by the score network's loop (:class:`spatial_msma.training.ImageTrainer`), so resumable the same
way: checkpoints every ``checkpoint_every`` steps outside the declared outputs, a CSV log beside them, the
EMA weights written atomically as the final model only at the end.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import AutoEncoder
from torch import nn

from spatial_msma.io import InputError, config_section
from spatial_msma.training import ImageTrainer, LoopSettings, load_model_file, plot_loss_curves, resolve_device

if TYPE_CHECKING:
    from spatial_msma.detector import Case

#: Tag of an AE model file written by :func:`train_ae`.
MODEL_FORMAT = "spatial_msma.ae_model.v1"
ERRORS = ("abs", "squared")
NETWORK_KEYS = ("channels", "strides", "num_res_units", "latent_channels")


@dataclass(frozen=True)
class AeConfig(LoopSettings):
    """The ``ae`` config section: the loop's settings (:class:`~spatial_msma.training.LoopSettings`) and the
    autoencoder's.

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
    ema_decay: float = 0.99

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
        for key in ("num_res_units", "latent_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"config {where}.{key}: must be an integer >= 1, got {value!r}")
        self.validate_loop(where)

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
    return AeModel(*load_model_file(path, MODEL_FORMAT, "AE model", AeNet, AeConfig.from_dict, device))


def reconstruction_loss(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The training loss: mean squared error over all voxels and channels of a batch."""
    return (net(x) - x).pow(2).mean()


def train_ae(train_images: Sequence[str | os.PathLike], val_images: Sequence[str | os.PathLike],
             model_out: str | os.PathLike, log_out: str | os.PathLike, figure_out: str | os.PathLike | None,
             checkpoint_dir: str | os.PathLike, cfg: Mapping[str, object] | AeConfig, seed: int,
             logger: logging.Logger | None = None) -> None:
    """Train (or resume training) the autoencoder with MSE on healthy images; write model, CSV log, figure.

    The val loss is the same MSE, of the EMA weights on the first ``val_images`` val images.
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, AeConfig) else AeConfig.from_dict(cfg)
    trainer = ImageTrainer("AE training", cfg, seed, train_images, val_images, checkpoint_dir, logger)

    def batch_loss(model: nn.Module, step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, object]]:
        return reconstruction_loss(model, trainer.draw(gen, cfg.batch_size).to(trainer.device)), {}

    net = trainer.train(lambda: AeNet(trainer.data.in_channels, trainer.data.shape, cfg), batch_loss,
                        reconstruction_loss, [torch.from_numpy(trainer.data.val)], cfg.network())
    trainer.write(net, model_out, log_out, figure_out, functools.partial(plot_training_log, cfg=cfg), MODEL_FORMAT,
                  cfg.network())


def plot_training_log(frame: pd.DataFrame, path: str | os.PathLike, cfg: AeConfig) -> None:
    """Train MSE (raw and running mean) and the val MSE of the EMA weights, log scale."""
    plot_loss_curves(frame, path, "reconstruction MSE (mean over voxels)",
                     f"Autoencoder training: channels {list(cfg.channels)}, latent {cfg.latent_channels}, "
                     f"batch {cfg.batch_size}, lr {cfg.lr:g}")


@dataclass(frozen=True)
class AeDetector:
    """A trained AE and the reconstruction error it scores (``ae.error``)."""

    model: AeModel
    error: str
    label: ClassVar[str] = "AE heatmaps"
    steps_per_image: ClassVar[int] = 1

    @classmethod
    def load(cls, model_path: str | os.PathLike, cfg: Mapping[str, object] | AeConfig) -> AeDetector:
        """The model file on the device of ``cfg`` (the ``ae`` heatmap keys: ``error``, ``device``)."""
        cfg = cfg if isinstance(cfg, AeConfig) else AeConfig.from_dict(cfg)
        return cls(load_ae_model(model_path, resolve_device(cfg.device)), cfg.error)

    def settings(self) -> str:
        return (f"{self.error} reconstruction error summed over channels, "
                f"device {next(self.model.net.parameters()).device}")

    def heatmap(self, case: Case) -> np.ndarray:
        return ae_heatmap(self.model, case.image, case.brain, self.error)
