"""Training the Spatial-MSMA flow (or fitting the per-voxel Gaussian ablation) from cached score norms.

Each step draws ``images_per_step`` training images and ``batch_voxels`` random in-brain voxels among
them, runs the image encoder on those images (so h(x) trains jointly with the flow) and minimises the
mean NLL with AdamW (linear warm-up, then constant, as the paper), gradient clipping and an EMA copy.
Every ``val_every`` steps the raw and EMA weights are scored on a fixed, seeded sample of validation
voxels; the lowest validation NLL seen decides the weights that are written. Resumable through
:mod:`spatial_msma.training`: a checkpoint (weights, EMA, optimiser, schedule, RNG state, best weights,
log rows) is written atomically every ``checkpoint_every`` steps and a rerun continues from it,
reproducing the uninterrupted run bit for bit on CPU. The per-voxel Gaussian is fitted on the same data
and its validation NLL on the same voxels is logged as the bar the flow has to clear.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.data import SubjectData, feature_stats, level_selection, load_subjects, subsample_voxels
from spatial_msma.flow.gaussian import VoxelGaussian, fit_voxel_gaussian, save_voxel_gaussian
from spatial_msma.flow.model import ModelMeta, SpatialFlow, save_flow
from spatial_msma.io import as_path_list, save_figure, write_table
from spatial_msma.progress import Progress
from spatial_msma.training import (
    CheckpointDir,
    fingerprint,
    make_ema,
    resolve_device,
    restore_training_state,
    resume_or_start,
    set_deterministic,
    training_state,
    warmup_scheduler,
)


@dataclass
class VoxelSet:
    """Subjects' in-brain voxels packed into flat tensors: features (N, L) standardised, index (N, 3),
    image slot (N,), plus the stacked images (S, C, X, Y, Z) and per-subject offsets."""

    features: torch.Tensor
    index: torch.Tensor
    slot: torch.Tensor
    images: torch.Tensor
    offsets: torch.Tensor  # (S + 1,) int64, on the CPU (sampling happens there)

    @classmethod
    def build(cls, subjects: Sequence[SubjectData], mean: np.ndarray, std: np.ndarray,
              device: torch.device) -> VoxelSet:
        feats = np.concatenate([(s.features - mean) / std for s in subjects]).astype(np.float32)
        index = np.concatenate([s.index for s in subjects])
        counts = [s.index.shape[0] for s in subjects]
        slot = np.repeat(np.arange(len(subjects)), counts)
        images = np.stack([s.image for s in subjects]).astype(np.float32)
        return cls(torch.from_numpy(feats).to(device), torch.from_numpy(index).to(device),
                   torch.from_numpy(slot).to(device), torch.from_numpy(images).to(device),
                   torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])))


def sample_batch(voxels: VoxelSet, generator: torch.Generator, n_voxels: int,
                 n_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick ``n_images`` distinct images (fewer if there are fewer) and ``n_voxels`` voxels among them.

    Returns the chosen image slots, each voxel's row in ``voxels`` and its position in the chosen list
    (``local``), so the encoder runs once per chosen image. Drawn on the CPU from ``generator`` (its
    state is checkpointed, so a resumed run draws the same batches).
    """
    n_subj = len(voxels.offsets) - 1
    chosen = torch.randperm(n_subj, generator=generator)[:n_images]
    local = torch.randint(0, len(chosen), (n_voxels,), generator=generator)
    lo, hi = voxels.offsets[chosen[local]], voxels.offsets[chosen[local] + 1]
    rows = lo + torch.floor(torch.rand(n_voxels, generator=generator, dtype=torch.float64) * (hi - lo)).long()
    return chosen, rows, local


def batch_log_prob(model: SpatialFlow, voxels: VoxelSet, chosen: torch.Tensor, rows: torch.Tensor,
                   local: torch.Tensor) -> torch.Tensor:
    """log p of the sampled voxels, the encoder evaluated on the chosen images (with gradients)."""
    device = voxels.features.device
    rows, local = rows.to(device), local.to(device)
    g = model.image_features(voxels.images[chosen.to(device)])
    index = voxels.index[rows]
    context = model.context(index, g[local] if g is not None else None)
    return model.log_prob(voxels.features[rows], index, context)


@torch.no_grad()
def set_nll(model: SpatialFlow, voxels: VoxelSet, rows: torch.Tensor, chunk: int) -> float:
    """Mean NLL of the voxels ``rows`` (the fixed validation sample), encoder run once per image."""
    model.eval()
    g = None
    if model.encoder is not None:
        g = torch.cat([model.image_features(voxels.images[i:i + 8]) for i in range(0, len(voxels.images), 8)])
    total = 0.0
    for start in range(0, len(rows), chunk):
        r = rows[start:start + chunk]
        index = voxels.index[r]
        context = model.context(index, g[voxels.slot[r]] if g is not None else None)
        total += float(-model.log_prob(voxels.features[r], index, context).double().sum())
    return total / len(rows)


def fixed_sample(n_total: int, n_sample: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of rows (all rows if there are fewer), fixed for the whole run."""
    rng = np.random.default_rng([seed, 7])
    if n_sample >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n_sample, replace=False))


def gaussian_set_nll(model: VoxelGaussian, voxels: VoxelSet, rows: np.ndarray) -> float:
    x = voxels.features[torch.from_numpy(rows)].cpu().numpy()
    index = voxels.index[torch.from_numpy(rows)].cpu().numpy()
    return float(model.nll(x, index, one_sided=False).astype(np.float64).mean())


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def plot_training(log: pd.DataFrame, path: str | os.PathLike, title: str) -> None:
    """Train/validation NLL curves with the per-voxel Gaussian's validation NLL as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    flow_rows = log[log["step"] > 0]
    if len(flow_rows):
        ax.plot(flow_rows["step"], flow_rows["train_nll"], label="train (mean since last eval)")
        ax.plot(flow_rows["step"], flow_rows["val_nll"], marker="o", label="val, raw weights")
        ax.plot(flow_rows["step"], flow_rows["val_nll_ema"], marker="s", label="val, EMA weights")
    ax.axhline(float(log["val_nll_gaussian"].iloc[0]), color="k", ls="--", label="val, per-voxel Gaussian")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats, standardised log norms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def train_flow(train_manifest: str | os.PathLike, train_images: Sequence[str | os.PathLike],
               val_manifest: str | os.PathLike, val_images: Sequence[str | os.PathLike],
               model_path: str | os.PathLike, checkpoint_dir: str | os.PathLike, log_csv: str | os.PathLike,
               figure_path: str | os.PathLike, cfg: FlowConfig | dict[str, Any] | None, seed: int,
               logger: logging.Logger | None = None) -> dict[str, float]:
    """Train (or fit, for ``voxel_gaussian``) one method's density model and write model, CSV log, figure.

    ``train_manifest`` / ``val_manifest``: the sets' score-norm manifests, their images in the same order.
    ``cfg`` is the method's ``flow`` section (dict or :class:`FlowConfig`; an ablation's overrides already
    applied, :func:`spatial_msma.methods.flow_section`). ``checkpoint_dir`` holds the
    resumable state (not a Snakemake output, so a rerun keeps it). Returns the final validation NLLs
    (``val_nll`` of the written model, ``val_nll_gaussian``).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, FlowConfig) else FlowConfig.from_dict(cfg)
    train_images, val_images = as_path_list(train_images), as_path_list(val_images)
    device = resolve_device(cfg.device)
    train = load_subjects(train_manifest, train_images, cfg.log_transform, cfg.log_eps, max_sigma=cfg.max_sigma)
    train = subsample_voxels(train, cfg.voxels_per_subject, seed)
    levels = level_selection(train[0].sigmas, cfg.max_sigma)
    val = load_subjects(val_manifest, val_images, cfg.log_transform, cfg.log_eps, levels=levels)
    mean, std = feature_stats(train)
    meta = ModelMeta(levels=levels.tolist(), sigmas=train[0].sigmas.tolist(), shape=tuple(train[0].mask.shape),
                     affine=train[0].affine.tolist(), in_channels=int(train[0].image.shape[0]),
                     feature_mean=mean.tolist(), feature_std=std.tolist())
    meta.check_compatible(val[0].sigmas, val[0].mask.shape, val[0].affine, f"validation set ({val_manifest})")
    logger.info("flow: %d training / %d validation images, levels %s of %d, %d training voxels, device %s",
                len(train), len(val), levels.tolist(), len(meta.sigmas),
                sum(s.index.shape[0] for s in train), device)

    train_set = VoxelSet.build(train, mean, std, device)
    val_set = VoxelSet.build(val, mean, std, device)
    val_rows = fixed_sample(len(val_set.features), cfg.val_voxels, seed)
    gaussian = fit_voxel_gaussian(train, meta, cfg.gaussian_pool, cfg.gaussian_ridge)
    gaussian_nll = gaussian_set_nll(gaussian, val_set, val_rows)
    logger.info("flow: per-voxel Gaussian validation NLL %.4f on %d voxels", gaussian_nll, len(val_rows))

    if cfg.model == "voxel_gaussian":
        save_voxel_gaussian(gaussian, model_path, cfg.to_dict())
        log = pd.DataFrame([{"step": 0, "train_nll": float("nan"), "val_nll": gaussian_nll,
                             "val_nll_ema": float("nan"), "val_nll_gaussian": gaussian_nll, "lr": 0.0,
                             "selected": "gaussian"}])
        write_table(log, log_csv)
        plot_training(log, figure_path, "per-voxel Gaussian")
        return {"val_nll": gaussian_nll, "val_nll_gaussian": gaussian_nll}

    model = SpatialFlow(cfg, meta, seed, voxel_stats=(gaussian.mean, gaussian.std)).to(device)
    return _train_loop(model, train_set, val_set, torch.from_numpy(val_rows).to(device), gaussian_nll,
                       Path(model_path), Path(checkpoint_dir), log_csv, figure_path, cfg, seed, logger)


def _train_loop(model: SpatialFlow, train_set: VoxelSet, val_set: VoxelSet, val_rows: torch.Tensor,
                gaussian_nll: float, model_path: Path, checkpoint_dir: Path, log_csv: str | os.PathLike,
                figure_path: str | os.PathLike, cfg: FlowConfig, seed: int,
                logger: logging.Logger) -> dict[str, float]:
    device = train_set.features.device
    set_deterministic(device)
    ema = make_ema(model, cfg.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_scheduler(optimizer, cfg.warmup_steps)
    generators = {"batches": torch.Generator().manual_seed(seed + 1)}
    meta = model.meta
    resume_key = fingerprint(cfg.to_dict(), seed, levels=list(meta.levels), shape=list(meta.shape),
                             feature_mean=list(meta.feature_mean), n_train=len(train_set.offsets) - 1,
                             n_val=len(val_set.offsets) - 1)
    checkpoints = CheckpointDir(checkpoint_dir)
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_nll": float("inf"), "source": "", "step": 0, "state": None}
    step, loss_sum, loss_n = 0, 0.0, 0
    state = resume_or_start(checkpoints, resume_key, logger)
    if state is not None:
        step = restore_training_state(state, model, optimizer, scheduler, ema, generators)
        rows, best, loss_sum, loss_n = state["rows"], state["best"], state["loss_sum"], state["loss_n"]

    def checkpoint() -> None:
        checkpoints.save(step, training_state(step, model, optimizer, scheduler, ema, generators,
                                              fingerprint=resume_key, rows=rows, best=best,
                                              loss_sum=loss_sum, loss_n=loss_n))

    progress = Progress(cfg.steps, "flow", logger, start=step)
    while step < cfg.steps:
        model.train()
        chosen, batch_rows, local = sample_batch(train_set, generators["batches"], cfg.batch_voxels,
                                                 cfg.images_per_step)
        loss = -batch_log_prob(model, train_set, chosen, batch_rows, local).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"flow: non-finite training loss at step {step + 1}; lower flow.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        step += 1
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if step % cfg.val_every == 0 or step == cfg.steps:
            val_raw = set_nll(model, val_set, val_rows, cfg.chunk_voxels)
            val_ema = set_nll(ema.module, val_set, val_rows, cfg.chunk_voxels)
            for source, value, net in (("raw", val_raw, model), ("ema", val_ema, ema.module)):
                if value < best["val_nll"]:
                    best = {"val_nll": value, "source": source, "step": step, "state": _state_copy(net)}
            rows.append({"step": step, "train_nll": loss_sum / max(loss_n, 1), "val_nll": val_raw,
                         "val_nll_ema": val_ema, "val_nll_gaussian": gaussian_nll,
                         "lr": optimizer.param_groups[0]["lr"], "selected": f"{best['source']}@{best['step']}"})
            loss_sum, loss_n = 0.0, 0
            write_table(pd.DataFrame(rows), log_csv)
            logger.info("flow: step %d val NLL raw %.4f, EMA %.4f (Gaussian %.4f, best %s@%d %.4f)", step,
                        val_raw, val_ema, gaussian_nll, best["source"], best["step"], best["val_nll"])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
        progress.update(step, nll=loss.item())

    final = copy.deepcopy(model).cpu()
    final.load_state_dict(best["state"])
    save_flow(final, model_path, extra={"val_nll": best["val_nll"], "selected": best["source"],
                                         "selected_step": best["step"], "val_nll_gaussian": gaussian_nll})
    log = pd.DataFrame(rows)
    write_table(log, log_csv)
    plot_training(log, figure_path, f"Spatial-MSMA flow ({cfg.flow_type}, base {cfg.base})")
    verdict = "better" if best["val_nll"] < gaussian_nll else "NOT better"
    logger.info("flow: wrote %s (%s weights of step %d, val NLL %.4f: %s than the per-voxel Gaussian's %.4f)",
                model_path, best["source"], best["step"], best["val_nll"], verdict, gaussian_nll)
    return {"val_nll": best["val_nll"], "val_nll_gaussian": gaussian_nll}
