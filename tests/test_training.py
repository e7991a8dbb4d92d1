"""Generic resumable-training helpers: devices, EMA, warm-up, checkpoints, fingerprints, RNG state, the CSV log."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.training import (
    RESUMABLE_KEYS,
    CheckpointDir,
    CsvLog,
    ImageTrainer,
    LoopSettings,
    fingerprint,
    make_ema,
    resolve_device,
    restore_rng_state,
    restore_training_state,
    resume_or_start,
    rng_state,
    save_torch,
    training_state,
    warmup_scheduler,
)

torch.set_num_threads(1)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


def test_ema_follows_the_warmed_up_decay():
    """After the first update (a copy) each update lerps by 1 - min(decay, (1 + n) / (10 + n))."""
    model = nn.Linear(1, 1, bias=False)
    ema = make_ema(model, decay=0.9)
    expected = None
    for k, value in enumerate([1.0, 2.0, 4.0, 8.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        if k == 0:
            expected = value
        else:
            decay = min(0.9, (1 + k) / (10 + k))
            expected = decay * expected + (1 - decay) * value
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(InputError):
        make_ema(model, decay=1.0)


def test_ema_averages_float_buffers_and_copies_integer_ones():
    """Integer buffers (permutation indices, step counters) cannot be interpolated: they follow the model."""
    model = nn.Module()
    model.register_buffer("scale", torch.zeros(2))
    model.register_buffer("order", torch.tensor([0, 1]))
    ema = make_ema(model, decay=0.5)
    ema.update_parameters(model)
    model.scale.fill_(4.0)
    model.order.copy_(torch.tensor([1, 0]))
    ema.update_parameters(model)
    assert torch.equal(ema.module.order, torch.tensor([1, 0]))
    assert ema.module.scale.tolist() == pytest.approx([4.0 * 9 / 11] * 2)  # decay min(0.5, 2 / 11)


def test_fingerprint_ignores_resumable_keys_and_is_json_normalised():
    cfg = {"lr": 1e-3, "channels": (8, 16), **{key: 1 for key in RESUMABLE_KEYS}}
    key = fingerprint(cfg, 7, shape=(2, 3))
    assert key == {"config": {"lr": 1e-3, "channels": [8, 16]}, "seed": 7, "shape": [2, 3]}
    assert fingerprint({**cfg, "steps": 99, "device": "cuda"}, 7, shape=(2, 3)) == key
    assert fingerprint({**cfg, "lr": 2e-3}, 7, shape=(2, 3)) != key


def test_torch_files_are_byte_stable_wherever_they_are_written(tmp_path):
    """torch names a zip archive's root folder after the file; the atomic writer must not leak its
    random temporary name into the bytes."""
    obj = {"w": torch.arange(4.0), "meta": {"a": 1}}
    save_torch(obj, tmp_path / "one.pt")
    save_torch(obj, tmp_path / "sub" / "two.pt")
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "sub" / "two.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "one.pt", weights_only=True)["w"], obj["w"])


def test_warmup_is_linear_then_constant():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_scheduler(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    opt0 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    warmup_scheduler(opt0, 0)
    assert opt0.param_groups[0]["lr"] == pytest.approx(0.3)


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(5)
    state = rng_state({"g": gen})
    first = (torch.rand(3, generator=gen), torch.rand(3))
    restore_rng_state(state, {"g": gen})
    assert torch.equal(torch.rand(3, generator=gen), first[0])
    assert torch.equal(torch.rand(3), first[1])
    with pytest.raises(InputError, match="other"):
        restore_rng_state(state, {"other": gen})


def test_checkpoints_are_pruned_and_the_latest_wins(tmp_path):
    ckpt = CheckpointDir(tmp_path / "ck", keep=2)
    assert ckpt.latest() is None
    for step in (5, 10, 15):
        ckpt.save(step, {"step": step, "w": torch.full((2,), float(step))})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["step_000000010.pt", "step_000000015.pt"]
    assert ckpt.load(ckpt.latest())["step"] == 15
    # a temporary left by a writer killed mid-save is never mistaken for a checkpoint, and is cleaned up
    (tmp_path / "ck" / ".step_000000020.abc.tmp.pt").write_bytes(b"partial")
    assert ckpt.latest().name == "step_000000015.pt"
    ckpt.remove_temporaries()
    assert not list((tmp_path / "ck").glob(".step_*"))
    (tmp_path / "ck" / "step_000000030.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="step_000000030.pt"):
        ckpt.load(ckpt.latest())


def test_training_state_round_trip_and_fingerprint(tmp_path):
    def build():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        return model, opt, warmup_scheduler(opt, 3), make_ema(model, 0.9), {"train": torch.Generator().manual_seed(1)}

    def run(objs, n):
        model, opt, sched, ema, gens = objs
        for _ in range(n):
            x = torch.randn(4, 3, generator=gens["train"])
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)

    straight = build()
    run(straight, 6)
    first = build()
    run(first, 3)
    ckpt = CheckpointDir(tmp_path / "ck")
    ckpt.save(3, training_state(3, *first, fingerprint={"a": 1}))
    logger = logging.getLogger("test")
    state = resume_or_start(ckpt, {"a": 1}, logger)
    second = build()
    assert restore_training_state(state, *second) == 3
    run(second, 3)
    for a, b in zip(straight[0].parameters(), second[0].parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight[3].module.weight, second[3].module.weight)
    # a different configuration does not resume: its checkpoints are removed
    assert resume_or_start(ckpt, {"a": 2}, logger) is None
    assert ckpt.latest() is None


def test_csv_log_truncates_rows_past_the_resume_step_and_partial_lines(tmp_path):
    log = CsvLog(tmp_path / "log.csv", ["step", "loss"])
    log.truncate(0)
    for step in range(1, 5):
        log.append({"step": step, "loss": step / 10})
    with (tmp_path / "log.csv").open("a") as handle:
        handle.write("5,0.")  # a kill in the middle of a row
    log.truncate(2)
    assert (tmp_path / "log.csv").read_text() == "step,loss\n1,0.1\n2,0.2\n"
    log.append({"step": 3, "loss": None})
    assert (tmp_path / "log.csv").read_text().endswith("3,\n")
    with pytest.raises(ValueError, match="loss"):
        log.append({"step": 4})


def train_tiny_conv_net(directory, granted_threads: int, cpu_threads: int | None) -> bytes:
    """Train a two-layer 3D conv net with :class:`ImageTrainer` in a process granted ``granted_threads``;
    return the model file's bytes."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(str(directory / f"img{i}.nii.gz"))
        if not os.path.exists(paths[-1]):
            io.write_channels(rng.normal(size=(2, 8, 8, 8)).astype(np.float32), np.eye(4), paths[-1])
    out = directory / f"granted{granted_threads}_pin{cpu_threads}"
    cfg = LoopSettings(steps=4, batch_size=2, ema_decay=0.9, checkpoint_every=2, val_every=2, val_images=1,
                       warmup=2, device="cpu")
    torch.set_num_threads(granted_threads)
    try:
        trainer = ImageTrainer("tiny", cfg, 3, paths[:3], paths[3:], out / "ck", logging.getLogger("test"),
                               cpu_threads=cpu_threads)

        def batch_loss(model, step, gen):
            x = trainer.draw(gen, cfg.batch_size)
            return (model(x + torch.randn(x.shape, generator=gen)) - x).pow(2).mean(), {}

        def build():
            return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.SiLU(), nn.Conv3d(8, 2, 3, padding=1))

        net = trainer.train(build, batch_loss, lambda model, x: model(x).pow(2).mean(),
                            (torch.from_numpy(trainer.data.val),), "tiny")
        assert torch.get_num_threads() == granted_threads  # the fixed count is restored afterwards
        trainer.write(net, out / "model.pt", out / "log.csv", None, lambda frame, path: None, "tiny.v1", {})
    finally:
        torch.set_num_threads(1)
    return (out / "model.pt").read_bytes()


def test_cpu_training_with_fixed_threads_does_not_depend_on_the_threads_granted(tmp_path):
    """oneDNN splits a convolution's weight-gradient reduction by thread, so 1 and 2 threads give other bits
    (Snakemake grants a rule fewer threads under a smaller --cores); a fixed ``cpu_threads`` gives the same
    model file byte for byte."""
    assert train_tiny_conv_net(tmp_path, 1, cpu_threads=2) == train_tiny_conv_net(tmp_path, 2, cpu_threads=2)


SIGMA_MAX_CHILD = """
import numpy as np
from spatial_msma.score.sde import estimate_sigma_max
x = (3 + 0.05 * np.random.default_rng(0).normal(size=(6, 1, 10, 10, 10))).astype(np.float32)
print([estimate_sigma_max(x, p).hex() for p in (0, 25, 50, 75, 100)])
"""


def test_sigma_max_does_not_depend_on_the_blas_kernel_of_the_cpu():
    """sigma_max auto is stored in the score model file; computed through BLAS (sklearn's Gram-matrix
    distances) its last bits followed the kernel OpenBLAS picks for the CPU, which OPENBLAS_CORETYPE
    imitates (a no-op where numpy uses another BLAS)."""
    outputs = {subprocess.run([sys.executable, "-c", SIGMA_MAX_CHILD], check=True, capture_output=True, text=True,
                              env={**os.environ, "OPENBLAS_CORETYPE": core}).stdout
               for core in ("Prescott", "Haswell", "SkylakeX")}
    assert len(outputs) == 1, outputs
