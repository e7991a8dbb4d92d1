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

Memory does not grow with the number of subjects: the sets' voxels and images are written once to disk
stacks (:class:`VoxelSet`) and read back a batch, or a subject, at a time.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spatial_msma.disk_stack import DiskStack, StackWriter
from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.data import (
    SubjectData,
    SubjectVoxels,
    feature_stats,
    iter_subjects,
    level_selection,
    subsample_voxels,
)
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

#: Where :func:`train_flow` writes its sets' voxels and images, under the checkpoint directory (scratch: every
#: job start writes them anew, a finished job deletes them).
SCRATCH = "voxels"


@dataclass(frozen=True)
class VoxelSet:
    """Subjects' in-brain voxels on disk (:class:`~spatial_msma.disk_stack.DiskStack`): features (N, L) before
    standardisation, voxel indices (N, 3), the images (S, C, X, Y, Z) (None where the model uses none), the
    per-subject row offsets (S + 1,) and the grid the first subject set (the others were checked against it).

    The flow used to stack all of these in memory, which grows with the cohort (a paper-sized set's
    features alone are tens of GB); a step now reads the rows and images it drew, and the statistics and
    the per-voxel Gaussian read one subject at a time. Rows read are the numbers the stacked arrays held,
    so the batches, and the trained weights, are the same.
    """

    features: DiskStack
    index: DiskStack
    images: DiskStack | None
    offsets: np.ndarray
    sigmas: np.ndarray
    grid: tuple[int, ...]
    affine: np.ndarray
    in_channels: int

    @classmethod
    def write(cls, subjects: Iterable[SubjectData], directory: Path, with_images: bool) -> VoxelSet:
        """Write ``subjects`` (read one at a time) to stacks in ``directory``; the images only ``with_images``."""
        stream = iter(subjects)
        first = next(stream)
        counts = []
        with contextlib.ExitStack() as files:
            features = files.enter_context(StackWriter(directory / "features.f32", first.features.shape[1:],
                                                       np.float32))
            index = files.enter_context(StackWriter(directory / "index.i32", (3,), np.int32))
            images = (files.enter_context(StackWriter(directory / "images.f32", first.image.shape, np.float32))
                      if with_images else None)
            for subject in itertools.chain([first], stream):
                features.append(subject.features)
                index.append(subject.index)
                if images is not None:
                    images.append(subject.image[None])
                counts.append(subject.index.shape[0])
            return cls(features.finish(), index.finish(), images.finish() if images is not None else None,
                       np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), first.sigmas,
                       tuple(first.mask.shape), first.affine, int(first.image.shape[0]))

    @property
    def n_subjects(self) -> int:
        return len(self.offsets) - 1

    def subject_features(self) -> Iterator[np.ndarray]:
        """Each subject's (N_s, L) features before standardisation, in set order."""
        for start, stop in itertools.pairwise(self.offsets):
            yield self.features.span(start, stop)

    def subjects(self) -> Iterator[SubjectVoxels]:
        """Each subject's features (before standardisation) and voxel indices, in set order."""
        for start, stop in itertools.pairwise(self.offsets):
            yield SubjectVoxels(self.features.span(start, stop), self.index.span(start, stop).astype(np.int64))

    def rows(self, rows: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The standardised features (float32) and the int64 voxel indices of rows ``rows``."""
        return (self.features.read(rows) - mean) / std, self.index.read(rows).astype(np.int64)

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """The subject (its place in the set) each of ``rows`` belongs to."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def unlink(self) -> None:
        for stack in (self.features, self.index, self.images):
            if stack is not None:
                stack.unlink()


@dataclass(frozen=True)
class ValidationSample:
    """The fixed validation voxels, in memory on the device (their number is the config's ``val_voxels``,
    whatever the set's size): standardised features, indices and each voxel's image slot; the set's images
    stay on disk (``voxels``), read 8 at a time when the encoder runs over them."""

    features: torch.Tensor
    index: torch.Tensor
    slot: torch.Tensor
    voxels: VoxelSet

    @classmethod
    def draw(cls, voxels: VoxelSet, n_sample: int, seed: int, mean: np.ndarray, std: np.ndarray,
             device: torch.device) -> ValidationSample:
        """The rows :func:`fixed_sample` picks from the whole set."""
        rows = fixed_sample(int(voxels.offsets[-1]), n_sample, seed)
        features, index = voxels.rows(rows, mean, std)
        return cls(torch.from_numpy(features).to(device), torch.from_numpy(index).to(device),
                   torch.from_numpy(voxels.slots(rows)).to(device), voxels)


def sample_batch(voxels: VoxelSet, generator: torch.Generator, n_voxels: int,
                 n_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick ``n_images`` distinct images (fewer if there are fewer) and ``n_voxels`` voxels among them.

    Returns the chosen image slots, each voxel's row in ``voxels`` and its position in the chosen list
    (``local``), so the encoder runs once per chosen image. Drawn on the CPU from ``generator`` (its
    state is checkpointed, so a resumed run draws the same batches).
    """
    offsets = torch.from_numpy(voxels.offsets)
    chosen = torch.randperm(voxels.n_subjects, generator=generator)[:n_images]
    local = torch.randint(0, len(chosen), (n_voxels,), generator=generator)
    lo, hi = offsets[chosen[local]], offsets[chosen[local] + 1]
    rows = lo + torch.floor(torch.rand(n_voxels, generator=generator, dtype=torch.float64) * (hi - lo)).long()
    return chosen, rows, local


def batch_log_prob(model: SpatialFlow, voxels: VoxelSet, stats: tuple[np.ndarray, np.ndarray], chosen: torch.Tensor,
                   rows: torch.Tensor, local: torch.Tensor, device: torch.device) -> torch.Tensor:
    """log p of the sampled voxels, the encoder evaluated on the chosen images (with gradients); ``stats``:
    the features' standardisation (mean, SD)."""
    features, index = (torch.from_numpy(a).to(device) for a in voxels.rows(rows.numpy(), *stats))
    g = None
    if model.encoder is not None:
        g = model.image_features(torch.from_numpy(voxels.images.read(chosen.numpy())).to(device))
    context = model.context(index, g[local.to(device)] if g is not None else None)
    return model.log_prob(features, index, context)


@torch.no_grad()
def set_nll(model: SpatialFlow, sample: ValidationSample, chunk: int) -> float:
    """Mean NLL of the fixed validation sample, the encoder run once per image (8 images at a time)."""
    model.eval()
    g = None
    if model.encoder is not None:
        images, device = sample.voxels.images, sample.features.device
        g = torch.cat([model.image_features(torch.from_numpy(images.span(i, min(i + 8, len(images)))).to(device))
                       for i in range(0, len(images), 8)])
    total = 0.0
    for start in range(0, len(sample.features), chunk):
        index = sample.index[start:start + chunk]
        context = model.context(index, g[sample.slot[start:start + chunk]] if g is not None else None)
        total += float(-model.log_prob(sample.features[start:start + chunk], index, context).double().sum())
    return total / len(sample.features)


def fixed_sample(n_total: int, n_sample: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of rows (all rows if there are fewer), fixed for the whole run."""
    rng = np.random.default_rng([seed, 7])
    if n_sample >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n_sample, replace=False))


def gaussian_set_nll(model: VoxelGaussian, sample: ValidationSample) -> float:
    x, index = sample.features.cpu().numpy(), sample.index.cpu().numpy()
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
    resumable state (not a Snakemake output, so a rerun keeps it) and, while the job runs, the sets' disk
    stacks (:data:`SCRATCH`). Returns the final validation NLLs
    (``val_nll`` of the written model, ``val_nll_gaussian``).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, FlowConfig) else FlowConfig.from_dict(cfg)
    train_images, val_images = as_path_list(train_images), as_path_list(val_images)
    device = resolve_device(cfg.device)
    scratch = Path(checkpoint_dir) / SCRATCH
    with_images = cfg.model != "voxel_gaussian" and cfg.use_global
    train = VoxelSet.write(subsample_voxels(iter_subjects(train_manifest, train_images, cfg.log_transform,
                                                          cfg.log_eps, max_sigma=cfg.max_sigma),
                                            cfg.voxels_per_subject, seed), scratch / "train", with_images)
    try:
        levels = level_selection(train.sigmas, cfg.max_sigma)
        val = VoxelSet.write(iter_subjects(val_manifest, val_images, cfg.log_transform, cfg.log_eps, levels=levels),
                             scratch / "val", with_images)
        try:
            return _fit(train, val, levels, Path(model_path), Path(checkpoint_dir), log_csv, figure_path, cfg, seed,
                        device, val_manifest, logger)
        finally:
            val.unlink()
    finally:
        train.unlink()


def _fit(train: VoxelSet, val: VoxelSet, levels: np.ndarray, model_path: Path, checkpoint_dir: Path,
         log_csv: str | os.PathLike, figure_path: str | os.PathLike, cfg: FlowConfig, seed: int,
         device: torch.device, val_manifest: str | os.PathLike, logger: logging.Logger) -> dict[str, float]:
    """:func:`train_flow` once both sets are on disk: statistics, the per-voxel Gaussian, then the flow."""
    mean, std = feature_stats(train.subject_features)
    meta = ModelMeta(levels=levels.tolist(), sigmas=train.sigmas.tolist(), shape=train.grid,
                     affine=train.affine.tolist(), in_channels=train.in_channels,
                     feature_mean=mean.tolist(), feature_std=std.tolist())
    meta.check_compatible(val.sigmas, val.grid, val.affine, f"validation set ({val_manifest})")
    logger.info("flow: %d training / %d validation images, levels %s of %d, %d training voxels, device %s",
                train.n_subjects, val.n_subjects, levels.tolist(), len(meta.sigmas), int(train.offsets[-1]), device)

    val_sample = ValidationSample.draw(val, cfg.val_voxels, seed, mean, std, device)
    gaussian = fit_voxel_gaussian(train.subjects(), meta, cfg.gaussian_pool, cfg.gaussian_ridge)
    gaussian_nll = gaussian_set_nll(gaussian, val_sample)
    logger.info("flow: per-voxel Gaussian validation NLL %.4f on %d voxels", gaussian_nll, len(val_sample.features))

    if cfg.model == "voxel_gaussian":
        save_voxel_gaussian(gaussian, model_path, cfg.to_dict())
        log = pd.DataFrame([{"step": 0, "train_nll": float("nan"), "val_nll": gaussian_nll,
                             "val_nll_ema": float("nan"), "val_nll_gaussian": gaussian_nll, "lr": 0.0,
                             "selected": "gaussian"}])
        write_table(log, log_csv)
        plot_training(log, figure_path, "per-voxel Gaussian")
        return {"val_nll": gaussian_nll, "val_nll_gaussian": gaussian_nll}

    model = SpatialFlow(cfg, meta, seed, voxel_stats=(gaussian.mean, gaussian.std)).to(device)
    return _train_loop(model, train, (mean, std), val_sample, gaussian_nll, model_path, checkpoint_dir, log_csv,
                       figure_path, cfg, seed, device, logger)


def _train_loop(model: SpatialFlow, train_set: VoxelSet, stats: tuple[np.ndarray, np.ndarray],
                val_sample: ValidationSample, gaussian_nll: float, model_path: Path, checkpoint_dir: Path,
                log_csv: str | os.PathLike, figure_path: str | os.PathLike, cfg: FlowConfig, seed: int,
                device: torch.device, logger: logging.Logger) -> dict[str, float]:
    set_deterministic(device)
    ema = make_ema(model, cfg.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_scheduler(optimizer, cfg.warmup_steps)
    generators = {"batches": torch.Generator().manual_seed(seed + 1)}
    meta = model.meta
    resume_key = fingerprint(cfg.to_dict(), seed, levels=list(meta.levels), shape=list(meta.shape),
                             feature_mean=list(meta.feature_mean), n_train=train_set.n_subjects,
                             n_val=val_sample.voxels.n_subjects)
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
        loss = -batch_log_prob(model, train_set, stats, chosen, batch_rows, local, device).mean()
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
            val_raw = set_nll(model, val_sample, cfg.chunk_voxels)
            val_ema = set_nll(ema.module, val_sample, cfg.chunk_voxels)
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
