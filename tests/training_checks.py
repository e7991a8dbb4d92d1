"""Test helper shared by the tests of the models trained by :class:`spatial_msma.training.ImageTrainer`:
kill a training run mid-way as a cluster would, and check that its rerun resumed and matches a straight run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

CHILD = """
import importlib, json, sys, torch
torch.set_num_threads(1)
from spatial_msma.progress import script_logger
module, function, args = json.loads(open(sys.argv[1]).read())
getattr(importlib.import_module(module), function)(**args, logger=script_logger(args["model_out"] + ".log"))
"""


def kill_after_first_checkpoint(module: str, function: str, args: dict, checkpoint_dir: Path) -> int:
    """Run ``module.function(**args)`` in a child process, SIGKILL it once it has written a checkpoint, and
    return the step of the newest checkpoint left behind (the model itself must not have been written)."""
    args_file = checkpoint_dir.parent / f"{checkpoint_dir.name}.args.json"
    args_file.write_text(json.dumps([module, function, args]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(args_file)],
                             env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240  # a guard against a hang, not a timing assertion
    while not list(checkpoint_dir.glob("step_*.pt")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not Path(args["model_out"]).exists()
    return max(int(p.stem.split("_")[1]) for p in checkpoint_dir.glob("step_*.pt"))


def assert_resumed_like_a_straight_run(log_text: str, resumed: Path, straight: Path, killed_at: int,
                                       steps: int) -> None:
    """The rerun in ``resumed`` said it continued from step ``killed_at``, logged every step once (rows past
    the checkpoint dropped), and wrote the same model file and log, byte for byte, as the run in ``straight``."""
    assert f"resuming from {resumed / 'ck'}/step_{killed_at:09d}.pt (step {killed_at})" in log_text
    assert f"steps {killed_at}..{steps}" in log_text
    assert pd.read_csv(resumed / "log.csv")["step"].tolist() == list(range(1, steps + 1))
    for name in ("model.pt", "log.csv"):
        assert (resumed / name).read_bytes() == (straight / name).read_bytes(), name


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a model file holds."""
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
