"""Resumable training, shared by every model the workflow trains (score network, flow, autoencoder).

A long training job on a cluster gets killed (time limit, pre-emption, a node failure). Snakemake then
deletes the job's declared outputs, so the resumable state lives in a checkpoint directory that is NOT a
declared output: every ``checkpoint_every`` steps the model, optimizer, LR schedule, EMA weights, step
counter and all random-number-generator states are written atomically; a rerun finds the latest one
and continues from it, and with the same seed on CPU reaches the same weights as an uninterrupted run.

Bit-reproducibility on CPU: the result of a run depends on the seed, on the number of intra-op threads
(oneDNN splits the reduction of a convolution's weight gradient by thread, so 1 and 2 threads give other
bits; see :func:`fixed_cpu_threads`) and on the instruction set the kernels dispatch to (AVX-512 vs AVX2:
``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``), not on the run being interrupted. The same machine and
library versions give identical bytes; another machine only where its CPU dispatches to the same kernels
(same instruction set; oneDNN also sizes its blocks by the caches). CUDA runs are reproducible only up to
float rounding (:func:`set_deterministic`).

The models trained on whole images (score network, AE) share one loop, :class:`ImageTrainer` (optionally
with early stopping on the validation loss, :class:`EarlyStopping`: the AE uses it); the flow,
which samples voxels and keeps the best validated weights, has its own loop built from the same pieces
(:func:`make_ema`, :func:`fingerprint`, :class:`CheckpointDir`, :func:`training_state`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from spatial_msma import io
from spatial_msma.disk_stack import DiskStack, StackWriter
from spatial_msma.io import InputError, as_path_list, atomic_path, check_number, check_numbers, save_figure
from spatial_msma.progress import Progress, script_logger

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{9})\.pt$")

#: Config keys that may differ between a checkpoint and the run that resumes it: how long or how verbosely
#: a run goes (so ``steps`` can be raised to extend one), where it runs and how much it processes per pass.
#: None changes what a run computes up to a given step. (Keys that only change how a finished model scores
#: images never reach a training job: :mod:`spatial_msma.config_scopes` keeps them out of its params.)
RESUMABLE_KEYS = frozenset(
    {"steps", "checkpoint_every", "keep_checkpoints", "val_every", "log_every", "device", "chunk_voxels"}
)


def save_torch(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` atomically and reproducibly: serialised in memory first, because torch names the
    archive's root folder after the file it writes, and the atomic temporary name is random."""
    buffer = BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA device is available (use 'auto' or 'cpu')")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"device {name!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    return torch.device(name)


def set_deterministic(device: torch.device) -> None:
    """Ask torch for deterministic kernels: strict on CPU, warn-only on CUDA.

    On CUDA a few 3D kernels (e.g. the backward of trilinear up-sampling) have no deterministic version;
    refusing to train would be worse than a run that is reproducible only up to float rounding.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)


@contextmanager
def fixed_cpu_threads(device: torch.device, threads: int | None, logger: logging.Logger) -> Iterator[None]:
    """Run the block with ``threads`` intra-op torch threads on CPU (restored afterwards); ``None`` or a CUDA
    device: leave the count alone.

    A CPU training step's bits depend on the thread count (oneDNN splits the weight-gradient reduction of a
    convolution across threads), and Snakemake scales a rule's threads down to ``--cores``: a trainer that
    used the threads it was granted gave other weights under ``--cores 1``. Fixed, the count is part of the
    computation rather than of the scheduling. Granted fewer cores, the threads share them: measured on a
    2-core machine, 2 threads on 1 core ran a score-network step as fast as 1 thread did (3.2 s).
    """
    if threads is None or device.type != "cpu":
        yield
        return
    granted = torch.get_num_threads()
    if granted != threads:
        logger.info("training with %d CPU threads (fixed, so the weights do not depend on the %d granted)",
                    threads, granted)
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(granted)


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters and buffers via torch's ``AveragedModel``.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates (TensorFlow's
    ``num_updates`` warm-up): with a fixed 0.999 the average of a few-hundred-step run would still be
    mostly the random initialisation. Integer buffers (normflows' permutation indices, MADE's degrees, a
    batch norm's step counter) cannot be interpolated: they follow the live model instead.
    """
    if not 0.0 <= decay < 1.0:
        raise InputError(f"ema_decay must be in [0, 1), got {decay}")

    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        if not averaged[0].is_floating_point():  # torch groups the tensors by dtype: all or none are
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)
            return
        n = float(n_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - effective)

    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr / warmup to lr over ``warmup_steps`` steps, constant afterwards."""
    warmup_steps = max(int(warmup_steps), 0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )


def rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """The state of torch's global CPU/CUDA generators and of every named explicit generator."""
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in generators.items():
        state[f"gen_{name}"] = gen.get_state()
    return state


def restore_rng_state(state: Mapping[str, object], generators: Mapping[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch_cpu"])  # type: ignore[arg-type]
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])  # type: ignore[arg-type]
    for name, gen in generators.items():
        key = f"gen_{name}"
        if key not in state:
            raise InputError(f"checkpoint has no state for random generator {name!r}")
        gen.set_state(state[key])  # type: ignore[arg-type]


class CheckpointDir:
    """``step_<9 digits>.pt`` files in one directory; the newest complete one is the resume point."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory = Path(directory)
        self.keep = max(int(keep), 1)

    def _checkpoints(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self._checkpoints()
        return found[-1][1] if found else None

    def save(self, step: int, state: Mapping[str, object]) -> Path:
        """Write atomically, then delete all but the newest ``keep`` checkpoints."""
        path = self.directory / f"step_{step:09d}.pt"
        save_torch(dict(state), path)
        for _, old in self._checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, path: Path) -> dict[str, object]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means: unusable checkpoint, say which
            raise InputError(
                f"checkpoint {path}: unreadable ({type(err).__name__}: {err}); delete it to restart"
            ) from err

    def clear(self) -> None:
        """Remove every checkpoint and leftover temporary file (a stale run with another config)."""
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if CHECKPOINT_PATTERN.match(path.name) or path.name.startswith(".step_"):
                    path.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Delete half-written temporaries a killed writer left (``atomic_path`` names them ``.step_*``)."""
        if self.directory.is_dir():
            for path in self.directory.glob(".step_*"):
                path.unlink(missing_ok=True)


class CsvLog:
    """An append-only CSV training log kept next to the checkpoints (a declared output would be deleted
    by Snakemake when the job dies). :meth:`truncate` drops rows past the resume step, and a partial
    last line a kill left behind, so the log of a resumed run equals that of an uninterrupted one."""

    def __init__(self, path: str | os.PathLike, columns: Iterable[str]):
        self.path = Path(path)
        self.columns = list(columns)
        if self.columns[0] != "step":
            raise ValueError("the first CSV log column must be 'step'")

    def truncate(self, max_step: int) -> None:
        """Keep the header and complete rows with step <= ``max_step``; start a new file if unusable."""
        rows: list[list[str]] = []
        if self.path.exists():
            with self.path.open(newline="") as handle:
                lines = handle.read().splitlines(keepends=True)
            complete = [line for line in lines if line.endswith("\n")]
            parsed = list(csv.reader(complete))
            if parsed and parsed[0] == self.columns:
                for row in parsed[1:]:
                    if len(row) == len(self.columns) and row[0].isdigit() and int(row[0]) <= max_step:
                        rows.append(row)
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows(rows)

    def append(self, row: Mapping[str, object]) -> None:
        missing = set(self.columns) - set(row)
        if missing:
            raise ValueError(f"CSV log row lacks {sorted(missing)}")
        with self.path.open("a", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerow([_fmt(row[c]) for c in self.columns])


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def training_state(
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel,
    generators: Mapping[str, torch.Generator],
    **extra: object,
) -> dict[str, object]:
    """Everything a resumed run needs, as plain tensors/containers (loadable with ``weights_only=True``).

    The tensors are live references: pass the result straight to :meth:`CheckpointDir.save`.
    """
    return {
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict(),
        "rng": rng_state(generators),
        **extra,
    }


def restore_training_state(
    state: Mapping[str, object],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel,
    generators: Mapping[str, torch.Generator],
) -> int:
    """Load a :func:`training_state` dict into live objects; returns the step to continue from."""
    model.load_state_dict(state["model"])  # type: ignore[arg-type]
    optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
    scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
    ema.load_state_dict(state["ema"])  # type: ignore[arg-type]
    restore_rng_state(state["rng"], generators)  # type: ignore[arg-type]
    return int(state["step"])  # type: ignore[arg-type]


def resume_or_start(
    checkpoints: CheckpointDir, fingerprint: Mapping[str, object], logger: logging.Logger
) -> dict[str, object] | None:
    """Return the latest checkpoint's state if it was written by a run with the same ``fingerprint``.

    A checkpoint from a run with another configuration, seed or training set cannot be continued
    meaningfully: it is removed (with a warning) and training starts from scratch.
    """
    checkpoints.remove_temporaries()
    path = checkpoints.latest()
    if path is None:
        return None
    state = checkpoints.load(path)
    if state.get("fingerprint") != dict(fingerprint):
        logger.warning("checkpoints in %s come from a different configuration or data: starting afresh",
                       checkpoints.directory)
        checkpoints.clear()
        return None
    logger.info("resuming from %s (step %d)", path, int(state["step"]))  # type: ignore[arg-type]
    return state


def fingerprint(config: Mapping[str, object], seed: int, **data: object) -> dict[str, object]:
    """What a checkpoint must share with a run to be resumed by it: the config less :data:`RESUMABLE_KEYS`,
    the seed, and whatever identifies the training data (``data``).

    JSON-normalised (tuples become lists), so the copy a checkpoint stores compares equal to a fresh one.
    """
    relevant = {k: v for k, v in config.items() if k not in RESUMABLE_KEYS}
    return json.loads(json.dumps({"config": relevant, "seed": int(seed), **data}))


def load_volumes(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Read (C, X, Y, Z) images into one (N, C, X, Y, Z) float32 array; all must share a shape. For a few
    images (the validation ones); a training set goes to disk (:func:`stack_volumes`)."""
    if not paths:
        return np.zeros((0,), np.float32)
    volumes = [io.read_channels(p)[0] for p in paths]
    for path, vol in zip(paths, volumes, strict=True):
        if vol.shape != volumes[0].shape:
            raise InputError(f"image {path}: shape {vol.shape} differs from {paths[0]} {volumes[0].shape}")
    return np.stack(volumes)


def stack_volumes(paths: Sequence[str | os.PathLike], stack: str | os.PathLike, digest: Any) -> DiskStack:
    """Write (C, X, Y, Z) images, read one at a time, to the disk stack ``stack`` (N, C, X, Y, Z) float32,
    and feed each one's bytes to ``digest`` (a ``hashlib`` object) in order: the same hash as of the stacked
    array. All must share a shape (an :class:`InputError` names the first that does not)."""
    first = io.read_channels(paths[0])[0]
    with StackWriter(stack, first.shape, np.float32) as writer:
        for i, path in enumerate(paths):
            volume = io.read_channels(path)[0] if i else first
            if volume.shape != first.shape:
                raise InputError(f"image {path}: shape {volume.shape} differs from {paths[0]} {first.shape}")
            digest.update(np.ascontiguousarray(volume, np.float32).data)
            writer.append(volume[None])
        return writer.finish()


#: The file of :class:`ImageTrainer`'s training images in its checkpoint directory (scratch, rewritten at every
#: start, deleted once the model is written).
TRAIN_STACK = "train_images.f32"


@dataclass(frozen=True)
class TrainingImages:
    """The images one run trains and validates on: the training set as a :class:`DiskStack` (N, C, X, Y, Z)
    float32, read a batch at a time, so a job's memory does not grow with the cohort; the validation images
    (at most the config's ``val_images``) as one in-memory array, as is the fixed validation batch."""

    train: DiskStack
    val: np.ndarray
    train_names: tuple[str, ...]
    data_hash: str

    @classmethod
    def load(cls, train_paths: Sequence[str], val_paths: Sequence[str], what: str,
             stack: str | os.PathLike) -> TrainingImages:
        """Write the training images to the disk stack ``stack``, hashing them on the way, and read the
        validation images."""
        if not train_paths:
            raise InputError(f"{what}: no training images")
        digest = hashlib.blake2b(digest_size=16)
        train = stack_volumes(train_paths, stack, digest)
        val = load_volumes(val_paths)
        if len(val) and val.shape[1:] != train.shape[1:]:
            raise InputError(f"val image {val_paths[0]}: shape {val.shape[1:]} differs from train {train.shape[1:]}")
        digest.update(np.ascontiguousarray(val).data)
        return cls(train, val, tuple(Path(p).name for p in train_paths), digest.hexdigest())

    @property
    def in_channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.train.shape[2:])

    def identity(self) -> dict[str, object]:
        """The data part of a :func:`fingerprint`: file names, array shape and a content hash of both sets
        (a regenerated cohort keeps its file names)."""
        return {"train": list(self.train_names), "shape": list(self.train.shape), "data_hash": self.data_hash}


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """The settings of :class:`ImageTrainer`'s loop, one base of the config section of every model it trains.

    A section adds its own keys and sets the defaults of ``steps``, ``batch_size`` and ``ema_decay``, which
    depend on the model; the rest share defaults, and their checks live here once.
    """

    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup: int = 20
    grad_clip: float = 1.0
    ema_decay: float
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    val_every: int = 25
    val_images: int = 4
    log_every: int = 1
    device: str = "auto"

    def validate_loop(self, where: str) -> None:
        """Raise :class:`InputError` naming ``where.<key>`` for a loop setting out of range."""
        check_numbers(self, where, ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "val_every",
                                    "log_every"), 1, integer=True)
        check_number(self.val_images, f"{where}.val_images", 0, integer=True)
        check_number(self.lr, f"{where}.lr", 0, above=True)
        check_number(self.ema_decay, f"{where}.ema_decay", 0, high=1, below=True)
        if self.checkpoint_every % self.log_every:
            # a resumed run restarts the running train-loss mean at the checkpoint: rows must not straddle it
            raise InputError(f"config {where}.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                             f"{where}.log_every ({self.log_every})")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EarlyStopping:
    """Stop :class:`ImageTrainer` once the validation loss (of the EMA weights, every ``val_every`` steps) has
    not improved on its best by more than ``min_delta`` for ``patience`` evaluations in a row; the weights
    returned are then the best-validated EMA weights, not the last. ``steps`` stays the budget cap.

    The stopping state (best loss and step, evaluations without improvement, the best weights, whether it
    stopped) lives in every checkpoint, so a resumed run stops where an uninterrupted one does and returns
    the same bytes. (``val_every`` may still differ on resume, as for any run, but it then changes what an
    evaluation "in a row" means: keep it.)
    """

    patience: int = 4
    min_delta: float = 0.0

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None, where: str) -> EarlyStopping | None:
        """The ``early_stopping`` mapping of a config section, or None for null (no early stopping)."""
        if cfg is None:
            return None
        if isinstance(cfg, EarlyStopping):
            return cfg
        if not isinstance(cfg, Mapping):
            raise InputError(f"config {where}: expected a mapping {{patience, min_delta}} or null, got {cfg!r}")
        out = cls(**io.config_section(cls, cfg, where))  # type: ignore[arg-type]
        check_number(out.patience, f"{where}.patience", 1, integer=True)
        check_number(out.min_delta, f"{where}.min_delta", 0)
        return out


@dataclass
class StoppingState:
    """Where early stopping stands: the best validation loss and its step, evaluations since, the best
    weights (a copy of the EMA state) and whether training stopped (``stopped_at``, 0 while it runs)."""

    best_val: float = float("inf")
    best_step: int = 0
    bad_evals: int = 0
    stopped_at: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, step: int, val: float, ema: nn.Module, rule: EarlyStopping) -> bool:
        """Record the evaluation at ``step``; True when training must stop here."""
        if val < self.best_val - rule.min_delta:
            self.best_val, self.best_step, self.bad_evals = val, step, 0
            self.best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        else:
            self.bad_evals += 1
        if self.bad_evals >= rule.patience:
            self.stopped_at = step
        return bool(self.stopped_at)

    def to_state(self) -> dict[str, object]:
        return {"best_val": self.best_val, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "stopped_at": self.stopped_at, "best_state": self.best_state}

    @classmethod
    def from_state(cls, state: Mapping[str, object] | None) -> StoppingState:
        return cls() if state is None else cls(**state)  # type: ignore[arg-type]


#: ``(model, step, generator) -> (loss, log fields)``: the loss of one training batch, drawn from
#: ``generator``, and the per-step values the model adds to the CSV log (e.g. a batch size that changes).
BatchLoss = Callable[[nn.Module, int, torch.Generator], tuple[torch.Tensor, Mapping[str, object]]]

#: ``(model, *tensors) -> loss``: the mean loss of a chunk of the fixed validation tensors, on the device.
ValLoss = Callable[..., torch.Tensor]


class ImageTrainer:
    """The resumable training loop of the models trained on whole images (the score network, the AE).

    A model brings its network and the losses of a training batch and of a validation chunk; the rest
    happens here in one fixed order, so that a seed draws the same random numbers, and reaches the same
    weights on CPU, whether or not the run was interrupted: Adam with a linear warm-up, gradient clipping,
    an EMA copy (the weights that are validated and written), a CSV log, a checkpoint every
    ``checkpoint_every`` steps, progress lines. Constructing it loads the images and finds the checkpoint
    to resume (:attr:`resumed`, ``None`` for a fresh run), so a model can read what it stored there before
    it trains. With ``early_stopping`` (:class:`EarlyStopping`) training ends once the validation loss stops
    improving and the best-validated EMA weights are returned; :attr:`stopping` then tells where it stopped.

    ``cpu_threads``: the intra-op thread count of a CPU run, whatever the script was granted
    (:func:`fixed_cpu_threads`), so that the weights do not depend on the scheduler; ``None`` keeps the
    granted count (and the weights then depend on it).
    """

    def __init__(self, label: str, cfg: LoopSettings, seed: int, train_images: Sequence[str | os.PathLike],
                 val_images: Sequence[str | os.PathLike], checkpoint_dir: str | os.PathLike, logger: logging.Logger,
                 cpu_threads: int | None = None, early_stopping: EarlyStopping | None = None):
        self.label, self.cfg, self.seed, self.logger = label, cfg, int(seed), logger
        self.cpu_threads = cpu_threads
        self.early_stopping = early_stopping
        self.stopping = StoppingState()
        self.device = resolve_device(cfg.device)
        set_deterministic(self.device)
        self.data = TrainingImages.load(as_path_list(train_images), as_path_list(val_images)[: cfg.val_images], label,
                                        Path(checkpoint_dir) / TRAIN_STACK)
        logger.info("%s: %d train / %d val images of %s, %d channels, device %s", label, len(self.data.train),
                    len(self.data.val), self.data.shape, self.data.in_channels, self.device)
        self.checkpoints = CheckpointDir(checkpoint_dir, keep=cfg.keep_checkpoints)
        self.fingerprint = fingerprint(cfg.to_dict(), seed, **self.data.identity())
        self.resumed = resume_or_start(self.checkpoints, self.fingerprint, logger)
        if early_stopping is not None and not len(self.data.val):
            logger.warning("%s: no validation images, so no early stopping: all %d steps run", label, cfg.steps)
            self.early_stopping = None
        self.log_path = self.checkpoints.directory / "training_log.csv"

    def draw(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """``batch_size`` training images drawn with replacement, on the CPU, read from the disk stack. No
        augmentation: the images share the template grid, and flips would teach a model that asymmetric
        anatomy is normal."""
        picks = torch.randint(len(self.data.train), (batch_size,), generator=generator)
        return torch.from_numpy(self.data.train.read(picks.numpy()))

    @torch.no_grad()
    def validate(self, net: nn.Module, val_loss: ValLoss, val_batch: Sequence[torch.Tensor]) -> float:
        """The mean of ``val_loss`` over the rows of ``val_batch``, in chunks of ``batch_size`` rows (at least
        2: batch 1 is a slow 3D-convolution path)."""
        net.eval()
        n, chunk = len(val_batch[0]), max(self.cfg.batch_size, 2)
        total = 0.0
        for start in range(0, n, chunk):
            part = [tensor[start:start + chunk].to(self.device) for tensor in val_batch]
            total += float(val_loss(net, *part)) * len(part[0])
        return total / n

    def train(self, build: Callable[[], nn.Module], batch_loss: BatchLoss, val_loss: ValLoss,
              val_batch: Sequence[torch.Tensor], network: object, log_fields: Sequence[str] = (),
              **checkpoint_extra: object) -> nn.Module:
        """Train from scratch or on from :attr:`resumed`; returns the EMA network.

        ``build`` makes the network (after ``torch.manual_seed(seed)``); every ``val_every`` steps the EMA
        network is scored on the fixed ``val_batch`` (tensors sharing their first axis, never changed, so
        val losses compare), unless there are no val images; ``network`` describes it in the log;
        ``checkpoint_extra`` is stored in every checkpoint, for the model to read back from :attr:`resumed`.
        """
        with fixed_cpu_threads(self.device, self.cpu_threads, self.logger):
            return self._train_loop(build, batch_loss, val_loss, val_batch, network, log_fields, checkpoint_extra)

    def _train_loop(self, build: Callable[[], nn.Module], batch_loss: BatchLoss, val_loss: ValLoss,
                    val_batch: Sequence[torch.Tensor], network: object, log_fields: Sequence[str],
                    checkpoint_extra: Mapping[str, object]) -> nn.Module:
        cfg = self.cfg
        torch.manual_seed(self.seed)
        model = build().to(self.device)
        ema = make_ema(model, cfg.ema_decay)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        scheduler = warmup_scheduler(optimizer, cfg.warmup)
        generators = {"train": torch.Generator().manual_seed(self.seed)}
        log = CsvLog(self.log_path, ("step", *log_fields, "lr", "train_loss", "val_loss"))
        self.checkpoints.directory.mkdir(parents=True, exist_ok=True)
        start = 0
        rule, stopping = self.early_stopping, StoppingState()
        if self.resumed is not None:
            start = restore_training_state(self.resumed, model, optimizer, scheduler, ema, generators)
            if rule is not None:
                stopping = StoppingState.from_state(self.resumed.get("early_stopping"))  # type: ignore[arg-type]
        self.stopping = stopping
        log.truncate(start)
        n_params = sum(p.numel() for p in model.parameters())
        self.logger.info("%s: network %s, %.3g M parameters; steps %d..%d", self.label, network, n_params / 1e6,
                         start, cfg.steps)
        extra = {"fingerprint": self.fingerprint, **checkpoint_extra}
        progress = Progress(cfg.steps, self.label, self.logger, start=start)
        recent: list[float] = []
        for step in range(start, cfg.steps if not stopping.stopped_at else start):
            model.train()
            loss, fields = batch_loss(model, step, generators["train"])
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
            val = None
            stop = False
            if len(self.data.val) and (done % cfg.val_every == 0 or done == cfg.steps):
                val = self.validate(ema.module, val_loss, val_batch)
                stop = rule is not None and stopping.update(done, val, ema.module, rule)
            if done % cfg.log_every == 0 or done == cfg.steps or val is not None:
                log.append({"step": done, **fields, "lr": lr, "train_loss": float(np.mean(recent)), "val_loss": val})
                recent = []
            progress.update(done, loss=loss_value, **({"val_loss": val} if val is not None else {}))
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
                state_extra = {**extra, **({"early_stopping": stopping.to_state()} if rule is not None else {})}
                self.checkpoints.save(done, training_state(done, model, optimizer, scheduler, ema, generators,
                                                           **state_extra))
            if stop:
                self.logger.info("%s: stopped early at step %d: val loss not better than %.6g (step %d) by more "
                                 "than %g for %d evaluations", self.label, done, stopping.best_val,
                                 stopping.best_step, rule.min_delta, rule.patience)  # type: ignore[union-attr]
                break
        if rule is not None and stopping.best_state is not None:
            ema.module.load_state_dict(stopping.best_state)  # the best-validated EMA weights
            self.logger.info("%s: writing the EMA weights of step %d (val loss %.6g)", self.label,
                             stopping.best_step, stopping.best_val)
        return ema.module

    def write(self, net: nn.Module, model_out: str | os.PathLike, log_out: str | os.PathLike,
              figure_out: str | os.PathLike | None, plot: Callable[[pd.DataFrame, str | os.PathLike], None],
              model_format: str, network: Mapping[str, object], **fields: object) -> None:
        """Write the model file, the CSV log and (unless ``figure_out`` is None) the loss figure; delete the
        training images' disk stack (scratch: a rerun writes it anew).

        The model file holds ``net``'s weights with all that rebuilds and uses it without the config (the
        ``network`` description, channels, image shape and the model's own ``fields``); read it back with
        :func:`load_model_file`.
        """
        save_torch({"format": model_format, "network": dict(network), "in_channels": self.data.in_channels,
                    "image_shape": list(self.data.shape), **fields, "steps": self.cfg.steps, "seed": self.seed,
                    "config": json.loads(json.dumps(self.cfg.to_dict())),
                    "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, model_out)
        frame = pd.read_csv(self.log_path)
        io.write_table(frame, log_out)
        if figure_out is not None:
            plot(frame, figure_out)
        self.data.train.unlink()
        self.logger.info("%s: model written to %s", self.label, model_out)


def torch_script(smk: Any) -> logging.Logger:
    """The start of every workflow script that runs torch: give torch the rule's threads and return the
    logger of the rule's log file."""
    torch.set_num_threads(smk.threads)
    return script_logger(smk.log[0])


def script_arguments(smk: Any) -> dict[str, object]:
    """The arguments of :class:`ImageTrainer`'s users (``train_score_model``, ``train_ae``) from a workflow
    script's ``snakemake`` object: input train, val; output model, log, figure; params cfg, seed,
    checkpoint_dir (not an output, so a killed job resumes from it). Also gives torch the rule's threads
    and opens the rule's log (:func:`torch_script`)."""
    logger = torch_script(smk)
    return {"train_images": smk.input.train, "val_images": smk.input.val, "model_out": smk.output.model,
            "log_out": smk.output.log, "figure_out": smk.output.figure, "checkpoint_dir": smk.params.checkpoint_dir,
            "cfg": smk.params.cfg, "seed": smk.params.seed, "logger": logger}


def plot_loss_curves(frame: pd.DataFrame, path: str | os.PathLike, ylabel: str, title: str,
                     val_label: str = "val (EMA weights)") -> None:
    """A training log's loss curves on a log scale: the per-step train loss, its running mean (a twentieth of
    the run), and the validation loss where it was measured. Shared by the score network and the AE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(frame["step"], frame["train_loss"], color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
    window = max(1, len(frame) // 20)
    ax.plot(frame["step"], frame["train_loss"].rolling(window, min_periods=1).mean(), color="tab:blue",
            lw=1.8, label=f"train (running mean of {window})")
    val = frame.dropna(subset=["val_loss"])
    if len(val):
        ax.plot(val["step"], val["val_loss"], "o-", color="tab:orange", lw=1.8, ms=4, label=val_label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)


class VolumeNet(nn.Module):
    """The base of the networks :func:`load_model_file` rebuilds (the score network, the AE): (B, C, X, Y, Z)
    volumes of one grid in, as many channels out. Keeps ``in_channels`` and ``image_shape``, after checking
    that every axis divides by ``divisor`` (the network's down-sampling, ``why`` says where it comes from)."""

    def __init__(self, in_channels: int, image_shape: Sequence[int], divisor: int, why: str):
        super().__init__()
        bad = [(axis, n) for axis, n in enumerate(image_shape) if n % divisor]
        if bad:
            raise InputError(f"image shape {tuple(image_shape)}: axes {bad} are not multiples of {divisor}, {why}")
        self.in_channels = int(in_channels)
        self.image_shape = tuple(int(n) for n in image_shape)

    def monai_channels(self) -> dict[str, int]:
        """The keywords of a MONAI 3D network from ``in_channels`` to as many output channels."""
        return {"spatial_dims": 3, "in_channels": self.in_channels, "out_channels": self.in_channels}

    def check_image(self, image: np.ndarray, what: str) -> None:
        """An :class:`InputError` naming ``what`` unless ``image`` is a (C, X, Y, Z) volume of this network."""
        if image.ndim != 4 or image.shape[0] != self.in_channels or tuple(image.shape[1:]) != self.image_shape:
            raise InputError(f"{what}: image {image.shape} does not match the model's "
                             f"({self.in_channels}, {', '.join(map(str, self.image_shape))})")


def load_model_file(path: str | os.PathLike, model_format: str, what: str,
                    network: Callable[[int, tuple[int, ...], Any], nn.Module], network_config: Callable[..., Any],
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network a model file of :meth:`ImageTrainer.write` holds, with the file's other entries (its
    metadata). Rebuilt from the file alone, no config needed: ``network(in_channels, image_shape, config)``
    with the config ``network_config(description, where=...)`` parses from the file's description; its
    weights are loaded and it is put in eval mode on ``device``.

    A missing, unreadable or foreign file (not a ``model_format`` one) is an :class:`InputError` naming
    ``what`` and the path.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise InputError(f"{what} {path}: file does not exist") from err
    except Exception as err:  # noqa: BLE001 - any unpickling failure: say which file
        raise InputError(f"{what} {path}: unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or data.get("format") != model_format:
        raise InputError(f"{what} {path}: not a {model_format} file")
    net = network(int(data["in_channels"]), tuple(int(n) for n in data["image_shape"]),
                  network_config(data["network"], where=f"{path}: network"))
    net.load_state_dict(data["state_dict"])
    net.to(device).eval()
    return net, {k: v for k, v in data.items() if k != "state_dict"}
