"""Resumable training, shared by every model the workflow trains (score network, flow, autoencoder).

A long training job on a cluster gets killed (time limit, pre-emption, a node failure). Snakemake then
deletes the job's declared outputs, so the resumable state lives in a checkpoint directory that is NOT a
declared output: every ``checkpoint_every`` steps the model, optimizer, LR schedule, EMA weights, step
counter and all random-number-generator states are written atomically; a rerun finds the latest one
and continues from it, and with the same seed on CPU reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

if TYPE_CHECKING:
    import pandas as pd

from spatial_msma.io import InputError, atomic_path, save_figure

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{9})\.pt$")


def as_path_list(paths: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[str]:
    """A list of paths from what a Snakemake named input holds: one file is a plain string, several a list."""
    if paths is None:
        return []
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


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


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters (and buffers) via torch's ``AveragedModel``.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates (TensorFlow's
    ``num_updates`` warm-up): with a fixed 0.999 the average of a few-hundred-step run would still be
    mostly the random initialisation.
    """
    if not 0.0 <= decay < 1.0:
        raise InputError(f"ema_decay must be in [0, 1), got {decay}")

    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
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


def save_torch_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file + rename: a kill mid-write leaves the old file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
        save_torch_atomic(dict(state), path)
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


def read_model_file(path: str | os.PathLike, model_format: str, what: str) -> dict:
    """The dict of a model file written with ``save_torch_atomic``, checked to be a ``model_format`` file.

    A missing, unreadable or foreign file is an :class:`InputError` naming ``what`` and the path.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise InputError(f"{what} {path}: file does not exist") from err
    except Exception as err:  # noqa: BLE001 - any unpickling failure: say which file
        raise InputError(f"{what} {path}: unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or data.get("format") != model_format:
        raise InputError(f"{what} {path}: not a {model_format} file")
    return data
