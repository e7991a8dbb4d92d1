"""The AE baseline (after Luo et al. 2023): a ResNet-style 3D convolutional autoencoder trained with MSE on
healthy images; its reconstruction is the healthy estimate whose residual is the heatmap
(:mod:`spatial_msma.baselines.residual`: raw or standardised per voxel), brain-masked.

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
volumes the trained AE reconstructed the brain with the wrong intensity offset (a larger in-brain error
than without norm, see benchmarks/README.md); group norm has the same per-image invariance, and
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from monai.networks.nets import AutoEncoder
from torch import nn

from spatial_msma.baselines.residual import ERRORS
from spatial_msma.io import InputError, check_number, check_numbers, config_section, plain_dict
from spatial_msma.training import (
    EarlyStopping,
    ImageTrainer,
    LoopSettings,
    VolumeNet,
    load_model_file,
    plot_loss_curves,
    resolve_device,
)

if TYPE_CHECKING:
    from spatial_msma.detector import Case

#: Tag of an AE model file written by :func:`train_ae`.
MODEL_FORMAT = "spatial_msma.ae_model.v1"
NETWORK_KEYS = ("channels", "strides", "num_res_units", "latent_channels")


@dataclass(frozen=True)
class AeConfig(LoopSettings):
    """The ``ae`` config section: the loop's settings (:class:`~spatial_msma.training.LoopSettings`) and the
    autoencoder's.

    Sized for the default config (4 mm, 40 x 48 x 40, 2 channels, 2 shared CPU cores, a 25-minute budget
    for the whole DAG of which this stage gets a few minutes): channels (16, 32, 64), 2 residual subunits
    and latent 8 at batch 4; a heatmap is one forward pass. Training runs until its validation loss (the EMA
    weights on the lesion-free val images, every ``val_every`` steps) stops improving -- ``early_stopping``:
    ``patience`` evaluations without an improvement larger than ``min_delta`` -- and writes the
    best-validated weights; ``steps`` is the budget cap. On the default cohort the val loss still falls
    at 1500 steps (by ~0.5 % per 25 steps: benchmarks/README.md), so there the cap of 600 steps binds
    (about 2.3 minutes on one core, within the score network's 4 minutes of training); early stopping ends
    the longer runs (the paper config's ``steps: 50000``) where the healthy reconstructions stop improving
    rather than where the budget says. ``early_stopping: null`` runs all ``steps`` and writes the last EMA
    weights.
    ``latent_channels`` sets the bottleneck width (compression): too wide and lesions are reconstructed too.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    latent_channels: int = 8
    error: str = "abs"
    steps: int = 600
    batch_size: int = 4
    ema_decay: float = 0.99
    early_stopping: EarlyStopping | None = EarlyStopping()

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None, where: str = "ae") -> AeConfig:
        section = config_section(cls, cfg, where, lists=("channels", "strides"))
        if "early_stopping" in section:
            section["early_stopping"] = EarlyStopping.from_dict(section["early_stopping"],  # type: ignore[arg-type]
                                                                f"{where}.early_stopping")
        out = cls(**section)  # type: ignore[arg-type]
        out.validate(where)
        return out

    def validate(self, where: str = "ae") -> None:
        if not self.channels or len(self.channels) != len(self.strides):
            raise InputError(f"config {where}.strides: needs one stride per entry of channels "
                             f"({len(self.channels)} channels, {len(self.strides)} strides)")
        for key in ("channels", "strides"):
            for value in getattr(self, key):
                check_number(value, f"{where}.{key}", 1, integer=True)
        if self.error not in ERRORS:
            raise InputError(f"config {where}.error: expected one of {ERRORS}, got {self.error!r}")
        check_numbers(self, where, ("num_res_units", "latent_channels"), 1, integer=True)
        self.validate_loop(where)

    def to_dict(self) -> dict[str, object]:
        return plain_dict(self)

    def network(self) -> dict[str, object]:
        return {k: v for k, v in self.to_dict().items() if k in NETWORK_KEYS}

    @property
    def divisor(self) -> int:
        return math.prod(self.strides)


class AeNet(VolumeNet):
    """x -> x̂ for (B, C, X, Y, Z) volumes: MONAI ``AutoEncoder`` with residual units and a narrow bottleneck."""

    def __init__(self, in_channels: int, image_shape: Sequence[int], cfg: AeConfig):
        super().__init__(in_channels, image_shape, cfg.divisor,
                         f"the product of the AE's strides {list(cfg.strides)}")
        self.cfg = cfg
        self.ae = AutoEncoder(
            **self.monai_channels(),
            channels=cfg.channels,
            strides=cfg.strides,
            num_res_units=cfg.num_res_units,
            inter_channels=[cfg.latent_channels],
            num_inter_units=cfg.num_res_units,
            norm=None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae(x)


@torch.no_grad()
def ae_reconstruction(model: AeNet | AeModel, image: np.ndarray) -> np.ndarray:
    """The AE's reconstruction of one (C, X, Y, Z) image: its healthy estimate, float32, same shape.

    ``model`` is an :class:`AeNet` or the :class:`AeModel` that :func:`load_ae_model` returns (eval mode).
    """
    net = model.net if isinstance(model, AeModel) else model
    net.check_image(image, "AE reconstruction")
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[None]
    return net(x)[0].cpu().numpy().astype(np.float32)


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

    The val loss is the same MSE, of the EMA weights on the first ``val_images`` val images. With
    ``early_stopping`` training ends once that loss stops improving (at most ``steps`` steps) and the model
    file holds the best-validated EMA weights, with ``best_step``, ``best_val_loss`` and ``stopped_at``
    (0: it ran to ``steps``).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, AeConfig) else AeConfig.from_dict(cfg)
    # 1 thread, the rule's: its bits then do not depend on the cores a scheduler grants (training.fixed_cpu_threads)
    trainer = ImageTrainer("AE training", cfg, seed, train_images, val_images, checkpoint_dir, logger, cpu_threads=1,
                           early_stopping=cfg.early_stopping)

    def batch_loss(model: nn.Module, step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, object]]:
        return reconstruction_loss(model, trainer.draw(gen, cfg.batch_size).to(trainer.device)), {}

    net = trainer.train(lambda: AeNet(trainer.data.in_channels, trainer.data.shape, cfg), batch_loss,
                        reconstruction_loss, [torch.from_numpy(trainer.data.val)], cfg.network())
    stop = trainer.stopping
    fields = ({"best_step": stop.best_step, "best_val_loss": stop.best_val, "stopped_at": stop.stopped_at}
              if cfg.early_stopping is not None else {})
    trainer.write(net, model_out, log_out, figure_out, functools.partial(plot_training_log, cfg=cfg), MODEL_FORMAT,
                  cfg.network(), **fields)


def plot_training_log(frame: pd.DataFrame, path: str | os.PathLike, cfg: AeConfig) -> None:
    """Train MSE (raw and running mean) and the val MSE of the EMA weights, log scale."""
    plot_loss_curves(frame, path, "reconstruction MSE (mean over voxels)",
                     f"Autoencoder training: channels {list(cfg.channels)}, latent {cfg.latent_channels}, "
                     f"batch {cfg.batch_size}, lr {cfg.lr:g}")


@dataclass(frozen=True)
class AeDetector:
    """A trained AE as a :class:`~spatial_msma.baselines.residual.HealthyEstimator`: its reconstruction is the
    estimate whose residual is scored (``ae.error``: abs or squared, applied by the residual heatmap)."""

    model: AeModel
    label: ClassVar[str] = "AE heatmaps"
    steps_per_image: ClassVar[int] = 1

    @classmethod
    def load(cls, model_path: str | os.PathLike, cfg: Mapping[str, object] | AeConfig) -> AeDetector:
        """The model file on the device of ``cfg`` (the ``ae`` section; only ``device`` is read here, the error
        type belongs to the residual heatmap)."""
        cfg = cfg if isinstance(cfg, AeConfig) else AeConfig.from_dict(cfg)
        return cls(load_ae_model(model_path, resolve_device(cfg.device)))

    def settings(self) -> str:
        return f"reconstruction, device {next(self.model.net.parameters()).device}"

    def estimate(self, case: Case) -> np.ndarray:
        return ae_reconstruction(self.model, case.image)
