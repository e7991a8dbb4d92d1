"""Memory that does not grow with the number of subjects (issue 22): the training jobs keep their sets on disk
(:mod:`spatial_msma.disk_stack`) and read a batch at a time, the per-set fits stream one image at a time, and
all of it gives the numbers the in-memory code gave. Plus benchmarks/memory_scaling.py on synthetic files."""

from __future__ import annotations

import hashlib
import logging
import runpy
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic_norms import write_synthetic_set

from spatial_msma import io
from spatial_msma.baselines.zscore import fit_zscore
from spatial_msma.disk_stack import StackWriter
from spatial_msma.flow.data import feature_stats, iter_subjects
from spatial_msma.flow.train import VoxelSet, sample_batch
from spatial_msma.training import ImageTrainer, LoopSettings

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (2, 24, 24, 24)
IMAGE_BYTES = int(np.prod(IMAGE_SHAPE)) * 4


def write_images(directory: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(str(directory / f"img{i:02d}.nii.gz"))
        io.write_channels(rng.normal(size=IMAGE_SHAPE).astype(np.float32), np.eye(4), paths[-1])
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return write_images(tmp_path_factory.mktemp("images"), 40)


def peak_bytes(function, *args, **kwargs):
    """(result, peak traced bytes above the start) of ``function(*args, **kwargs)``: numpy's buffers included."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_disk_stack_reads_back_the_rows_of_the_array_it_was_written_from(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.normal(size=(11, 3, 2)).astype(np.float32)
    with StackWriter(tmp_path / "s.f32", (3, 2), np.float32) as writer:
        writer.append(array[:4])
        writer.append(array[4:])
        stack = writer.finish()
    assert stack.shape == array.shape and len(stack) == 11 and stack.nbytes == array.nbytes
    rows = np.array([7, 0, 7, 10, 3])  # repeats, any order, as a training draw gives them
    assert np.array_equal(stack.read(rows), array[rows])
    assert np.array_equal(stack.span(2, 9), array[2:9]) and np.array_equal(stack[5], array[5])
    assert stack.read([]).shape == (0, 3, 2)
    with StackWriter(tmp_path / "t.f32", (3, 2), np.float32) as writer, pytest.raises(ValueError, match="shape"):
        writer.append(array[:, :2])
    stack.unlink()
    assert not stack.path.exists()


def tiny_trainer(paths: list[str], directory: Path) -> ImageTrainer:
    cfg = LoopSettings(steps=2, batch_size=3, ema_decay=0.9, val_images=1, device="cpu")
    return ImageTrainer("tiny", cfg, 3, paths[:-1], paths[-1:], directory, logging.getLogger("test"))


def test_the_image_trainer_does_not_hold_the_training_set(images, tmp_path):
    """Loading 39 training images and drawing batches peaks at a few images' bytes, not 39 (the stacked array of
    the old code alone was 39 images; reading them before stacking made it 78)."""
    tiny_trainer([*images[:2], images[-1]], tmp_path / "warm")  # first-use allocations of torch (~65 MB), not data
    trainer, peak = peak_bytes(tiny_trainer, images, tmp_path / "ck")
    assert len(trainer.data.train) == 39
    assert peak < 8 * IMAGE_BYTES, peak / IMAGE_BYTES
    generator = torch.Generator().manual_seed(0)

    def draws() -> None:
        for _ in range(20):
            trainer.draw(generator, 3)

    _, peak = peak_bytes(draws)
    assert peak < 8 * IMAGE_BYTES, peak / IMAGE_BYTES  # a batch of 3 at a time


def test_the_image_trainer_draws_the_batches_and_hash_of_the_in_memory_arrays(images, tmp_path):
    """Same draws as indexing the stacked array (so the trained weights do not change) and the same data hash
    as of the stacked arrays (so a checkpoint written before the change still resumes)."""
    trainer = tiny_trainer(images, tmp_path / "ck")
    stacked = np.stack([io.read_channels(p)[0] for p in images[:-1]])
    val = np.stack([io.read_channels(images[-1])[0]])
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(5):
        expected = torch.from_numpy(stacked)[torch.randint(len(stacked), (3,), generator=theirs)]
        assert torch.equal(trainer.draw(ours, 3), expected)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(stacked.data)
    digest.update(val.data)
    assert trainer.data.identity() == {"train": [Path(p).name for p in images[:-1]], "shape": list(stacked.shape),
                                       "data_hash": digest.hexdigest()}


def test_training_images_of_another_shape_are_named(images, tmp_path):
    odd = str(tmp_path / "odd.nii.gz")
    io.write_channels(np.zeros((2, 24, 24, 16), np.float32), np.eye(4), odd)
    with pytest.raises(io.InputError, match=f"image {odd}: shape"):
        tiny_trainer([*images[:3], odd, images[-1]], tmp_path / "ck")


def test_zscore_streams_and_gives_the_floats_of_the_stacked_computation(images):
    paths = images[:20]
    model, peak = peak_bytes(fit_zscore, paths, 0.5)
    stack = np.stack([io.read_channels(p)[0] for p in paths]).astype(np.float64)
    assert model["mean"].tobytes() == stack.mean(axis=0).astype(np.float32).tobytes()
    assert model["sd"].tobytes() == np.maximum(stack.std(axis=0, ddof=1), 0.5).astype(np.float32).tobytes()
    # float64 sums, mean and one image's deviations (about 15 images' float32 bytes), not the 20 stacked in float64
    assert peak < 24 * IMAGE_BYTES, peak / IMAGE_BYTES


@pytest.fixture(scope="module")
def norm_set(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("norms"), 30, seed=0, shape=(16, 16, 16), n_levels=4)


def test_a_voxel_set_on_disk_holds_the_stacked_arrays_and_streams(norm_set, tmp_path):
    subjects = list(iter_subjects(norm_set.manifest, norm_set.image_paths, True, 1e-6))
    voxels, peak = peak_bytes(VoxelSet.write, iter_subjects(norm_set.manifest, norm_set.image_paths, True, 1e-6),
                              tmp_path / "set", with_images=True)
    one_subject = subjects[0].features.nbytes + subjects[0].index.nbytes + subjects[0].image.nbytes
    assert voxels.n_subjects == 30
    # one subject's cache, image and arrays at a time (about 7 subjects' worth of bytes), not all 30
    assert peak < 12 * one_subject, peak / one_subject
    features = np.concatenate([s.features for s in subjects])
    index = np.concatenate([s.index for s in subjects])
    mean, std = feature_stats(lambda: (s.features for s in subjects))
    rows = np.array([5, 0, len(features) - 1, 5])
    got_features, got_index = voxels.rows(rows, mean, std)
    assert got_features.tobytes() == ((features - mean) / std).astype(np.float32)[rows].tobytes()
    assert np.array_equal(got_index, index[rows]) and got_index.dtype == np.int64
    assert np.array_equal(voxels.images.read([3, 1]), np.stack([subjects[3].image, subjects[1].image]))
    assert np.array_equal(voxels.slots(rows), np.repeat(np.arange(30), [len(s.index) for s in subjects])[rows])
    streamed = feature_stats(voxels.subject_features)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(streamed, (mean, std), strict=True))
    chosen, batch_rows, local = sample_batch(voxels, torch.Generator().manual_seed(0), 64, 3)
    assert set(voxels.slots(batch_rows.numpy())) <= set(chosen.tolist())
    assert np.array_equal(voxels.slots(batch_rows.numpy()), chosen[local].numpy())
    voxels.unlink()
    assert not voxels.features.path.exists() and not voxels.images.path.exists()


def write_benchmark(path: Path, rss: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"s": 1.0, "h:m:s": "0:00:01", "max_rss": rss, "max_vms": 1.0}]).to_csv(path, sep="\t", index=False)


def write_run(results: Path, subjects: int, train_rss: float, per_subject_rss: float) -> None:
    participants = pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(subjects + 2)],
                                 "included": [True] * subjects + [False] * 2,
                                 "split": ["train", "train", "val"] * (subjects // 3) + [""] * 2})
    (results / "cohort").mkdir(parents=True)
    participants.to_csv(results / "cohort" / "participants.tsv", sep="\t", index=False)
    write_benchmark(results / "benchmarks" / "train_score_model.tsv", train_rss)
    write_benchmark(results / "seed_runs" / "seed-1" / "benchmarks" / "train_score_model.tsv", train_rss / 2)
    for i in range(subjects):
        write_benchmark(results / "benchmarks" / "preprocess" / f"sub-{i:03d}.tsv", per_subject_rss + i % 3)
    write_benchmark(results / "benchmarks" / "lesion_summary.tsv", "-")  # too short for Snakemake to sample
    (results / "tables").mkdir()
    write_benchmark(results / "tables" / "not_a_benchmark.tsv", 1e6)


def test_memory_scaling_reports_max_rss_per_rule_and_the_ratio(tmp_path, capsys):
    write_run(tmp_path / "small", 6, train_rss=400.0, per_subject_rss=100.0)
    write_run(tmp_path / "large", 18, train_rss=1200.0, per_subject_rss=101.0)
    script = runpy.run_path(str(REPO / "benchmarks" / "memory_scaling.py"))
    text = script["main"]([str(tmp_path / "small"), str(tmp_path / "large")])
    assert "Subjects: 6 (train 4) vs 18 (train 12); ratio 3.00." in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| rule")}
    assert set(rows) == {"train_score_model", "preprocess", "lesion_summary"}  # not tables/not_a_benchmark
    assert rows["train_score_model"] == ["2", "300", "400", "2", "900", "1200", "3.00 **grows**"]
    assert rows["preprocess"] == ["6", "101", "102", "18", "102", "103", "1.01"]
    assert rows["lesion_summary"][-1] == "-"
    only = script["main"]([str(tmp_path / "small"), str(tmp_path / "large"), "--rules", "preprocess"])
    assert "train_score_model" not in only and "| preprocess |" in only
    with pytest.raises(SystemExit):
        script["main"]([str(tmp_path / "small"), str(tmp_path / "nowhere")])
    capsys.readouterr()
