"""Training the score network by denoising score matching, resumably, with a CSV log and a loss figure."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from spatial_msma import io
from spatial_msma.io import InputError, as_path_list, check_number, check_numbers, config_section, plain_dict
from spatial_msma.score.network import MODEL_FORMAT, NetworkConfig, ScoreNet
from spatial_msma.score.sde import LOSS_REDUCTIONS, T_SAMPLINGS, VESDE, auto_sigmas, dsm_loss
from spatial_msma.training import ImageTrainer, LoopSettings, plot_loss_curves

#: Intra-op torch threads of a CPU training run: the ``threads`` rule ``train_score_model`` asks for, fixed
#: so that ``--cores 1`` (which scales the rule down to 1 thread) gives the same weights, byte for byte, as
#: the default 2 (:func:`spatial_msma.training.fixed_cpu_threads`). Not used on CUDA.
CPU_THREADS = 2


@dataclass(frozen=True)
class ScoreConfig(LoopSettings):
    """The ``score`` config section: the loop's settings (:class:`~spatial_msma.training.LoopSettings`) and
    the score network's. Defaults are sized for the 2-core CPU default config (4 mm, a few minutes of its
    20-minute budget; timings in benchmarks/README.md)."""

    # the loop's keys whose defaults depend on the model (they keep LoopSettings' place in the section)
    steps: int = 150
    batch_size: int = 2
    ema_decay: float = 0.999
    network: NetworkConfig = NetworkConfig()
    sigma_min: float | str = "auto"
    sigma_max: float | str = "auto"
    sigma_auto_max_images: int = 100
    t_eps: float = 1e-5
    t_sampling: str = "uniform"
    log_sigma_mean: float = -1.2
    log_sigma_std: float = 1.2
    t_uniform_fraction: float = 0.2
    batch_doubling: bool = False
    loss_reduction: str = "mean"
    val_levels: int = 4

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
        check_number(out.t_uniform_fraction, "score.t_uniform_fraction", 0, high=1)
        check_number(out.log_sigma_std, "score.log_sigma_std", 0, above=True)
        if out.loss_reduction not in LOSS_REDUCTIONS:
            raise InputError(
                f"config score.loss_reduction: expected one of {LOSS_REDUCTIONS}, got {out.loss_reduction!r}"
            )
        check_numbers(out, "score", ("val_levels", "sigma_auto_max_images"), 1, integer=True)
        out.validate_loop("score")
        return out

    def to_dict(self) -> dict[str, object]:
        return plain_dict(self)


@dataclass(frozen=True)
class BrainMasks:
    """The training images' brain masks as a sequence that reads a mask when it is indexed, checking it lies
    on the images' grid ``shape``: the sigma estimates use at most ``sigma_auto_max_images`` of them, and a
    paper-sized cohort's masks together would be a gigabyte."""

    paths: Sequence[str]
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        mask = io.read_mask(self.paths[i])[0]
        if mask.shape != self.shape:
            raise InputError(f"brain mask {self.paths[i]}: shape {mask.shape} differs from the images {self.shape}")
        return mask


def fixed_validation_batch(
    val: np.ndarray, sde: VESDE, cfg: ScoreConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same val images, noise levels and noise draws at every evaluation, so val losses compare.

    Levels are the midpoints of ``val_levels`` equal bins of t in [0, 1]; noise comes from its own
    generator (``seed + 1``) and never touches the training stream.
    """
    t = (torch.arange(cfg.val_levels, dtype=torch.float64) + 0.5) / cfg.val_levels
    sigmas = sde.sigma(t).float()
    x = torch.from_numpy(val).repeat_interleave(cfg.val_levels, dim=0)
    sigma = sigmas.repeat(len(val))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    return x, sigma, z


def train_score_model(train_images: Sequence[str | os.PathLike], train_masks: Sequence[str | os.PathLike],
                      val_images: Sequence[str | os.PathLike], model_out: str | os.PathLike,
                      log_out: str | os.PathLike, figure_out: str | os.PathLike | None,
                      checkpoint_dir: str | os.PathLike, cfg: Mapping[str, object] | ScoreConfig, seed: int,
                      logger: logging.Logger | None = None) -> None:
    """Train (or resume training) the score network; write the model, the CSV log and the loss figure.

    The model file holds the EMA weights with everything needed to rebuild and use the network (network
    config, channels, image shape, sigma_min/max and what ``auto`` measured) -- see
    :func:`spatial_msma.score.network.load_score_model`. The val loss is the DSM loss of the EMA weights on
    the first ``val_images`` val images at fixed noise (:func:`fixed_validation_batch`).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, ScoreConfig) else ScoreConfig.from_dict(cfg)
    train_images, train_masks = as_path_list(train_images), as_path_list(train_masks)
    if len(train_images) != len(train_masks):
        raise InputError(f"score training: {len(train_images)} train images but {len(train_masks)} brain masks")
    trainer = ImageTrainer("score training", cfg, seed, train_images, val_images, checkpoint_dir, logger,
                           cpu_threads=CPU_THREADS)
    state, device = trainer.resumed, trainer.device
    if state is None:
        sigma_min, sigma_max, measured = auto_sigmas(
            trainer.data.train, BrainMasks(train_masks, trainer.data.shape), cfg.sigma_min, cfg.sigma_max,
            cfg.sigma_auto_max_images, np.random.default_rng(seed),
        )
    else:
        sigma_min, sigma_max = float(state["sigma_min"]), float(state["sigma_max"])  # type: ignore[arg-type]
        measured = dict(state["sigma_estimates"])  # type: ignore[arg-type]
    sde = VESDE(sigma_min, sigma_max, cfg.t_eps)
    logger.info("sigma_min %.4g, sigma_max %.4g (measured: %s)", sigma_min, sigma_max,
                ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))

    def loss(model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return dsm_loss(model, x, sigma, z, cfg.loss_reduction)

    def batch_loss(model: torch.nn.Module, step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, int]]:
        batch_size = cfg.batch_size * (2 if cfg.batch_doubling and step >= cfg.steps // 2 else 1)
        x = trainer.draw(gen, batch_size)
        t = sde.sample_t(batch_size, gen, cfg.t_sampling, cfg.log_sigma_mean, cfg.log_sigma_std,
                         cfg.t_uniform_fraction)
        z = torch.randn(x.shape, generator=gen)
        return loss(model, x.to(device), sde.sigma(t).to(device), z.to(device)), {"batch_size": batch_size}

    sigmas = {"sigma_min": sigma_min, "sigma_max": sigma_max}
    net = trainer.train(lambda: ScoreNet(trainer.data.in_channels, trainer.data.shape, cfg.network), batch_loss,
                        loss, fixed_validation_batch(trainer.data.val, sde, cfg, seed), cfg.network.to_dict(),
                        log_fields=("batch_size",), **sigmas, sigma_estimates=measured)
    trainer.write(net, model_out, log_out, figure_out, functools.partial(plot_training_log, cfg=cfg), MODEL_FORMAT,
                  cfg.network.to_dict(), **sigmas, t_eps=cfg.t_eps, sigma_estimates=measured)


def plot_training_log(frame: pd.DataFrame, path: str | os.PathLike, cfg: ScoreConfig) -> None:
    """Train loss (raw and running mean) and the fixed-noise val loss of the EMA weights, log scale."""
    plot_loss_curves(frame, path, f"DSM loss ({cfg.loss_reduction} over voxels)",
                     f"Score network training: batch {cfg.batch_size}, lr {cfg.lr:g}"
                     + (", batch doubled half way" if cfg.batch_doubling else ""),
                     val_label="val (EMA weights, fixed noise)")
