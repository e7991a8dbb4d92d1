"""Image-level MSMA: level selection, the GMM AUROC on caches with a known shift, the figure and tables."""

import numpy as np
import pandas as pd
import pytest

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.cache import cache_path, write_manifest, write_norm_cache
from spatial_msma.score.msma import lesion_vs_healthy_samples, run_msma_image, select_levels

SHAPE = (12, 12, 12)
SIGMAS = np.geomspace(0.05, 5.0, 6).astype(np.float32)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def test_select_levels():
    assert select_levels(10, None).tolist() == list(range(10))
    assert select_levels(10, 10).tolist() == list(range(10))
    assert select_levels(20, 10).tolist() == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19]
    assert select_levels(5, 1).tolist() == [0]
    with pytest.raises(InputError, match="n_levels"):
        select_levels(5, 6)


def _write_set(directory, name, n, rng, lesioned=False, sigmas=SIGMAS):
    """A set's manifest and lesion masks. Log image norms share one random factor; lesioned images are +0.6 at
    the 3 lowest levels and have patch norms x3 inside a cubic lesion."""
    brain = np.zeros(SHAPE, bool)
    brain[2:10, 2:10, 2:10] = True
    manifest = directory / name / "manifest.tsv"
    subjects = [f"sub-{i:02d}" for i in range(n)]
    masks = []
    for subject in subjects:
        common = rng.normal(0, 0.1)
        log_norms = np.log(100.0) - np.log(sigmas) * 0.3 + common + rng.normal(0, 0.02, len(sigmas))
        patch = rng.lognormal(0, 0.2, (len(sigmas), *SHAPE)).astype(np.float32)
        lesion = np.zeros(SHAPE, bool)
        if lesioned:
            log_norms[:3] += 0.6
            lesion[4:7, 4:7, 4:7] = True
            patch[:3, lesion] *= 3.0
            masks.append(directory / f"{name}-{subject}_mask.nii.gz")
            io.write_nifti(lesion, AFFINE, masks[-1])
        write_norm_cache(cache_path(manifest, subject), patch, np.exp(log_norms).astype(np.float32), sigmas, brain,
                         AFFINE)
    write_manifest(manifest, subjects, [f"{subject}.nii.gz" for subject in subjects])
    return manifest, masks


def test_gmm_separates_shifted_images_and_reports_per_level(tmp_path):
    rng = np.random.default_rng(0)
    train, _ = _write_set(tmp_path, "train", 16, rng)
    val, _ = _write_set(tmp_path, "val", 3, rng)
    test, _ = _write_set(tmp_path, "test", 5, rng)
    lesioned, masks = _write_set(tmp_path, "test_lesioned", 5, rng, lesioned=True)
    table = run_msma_image(train, val, test, lesioned, masks, tmp_path / "auroc.csv", tmp_path / "fig.png",
                           tmp_path / "scores.csv", {"n_levels": None, "n_components": 1}, seed=0)
    written = pd.read_csv(tmp_path / "auroc.csv")
    assert written["feature"].tolist() == ["gmm_nll"] + [f"image_norm_level_{i}" for i in range(6)]
    assert written["auroc"].iloc[0] == 1.0
    by_level = written.set_index("feature")["auroc"]
    assert all(by_level[f"image_norm_level_{i}"] == 1.0 for i in range(3))  # the shifted levels
    assert all(by_level[f"image_norm_level_{i}"] < 1.0 for i in range(3, 6))  # unshifted: overlap
    assert (written[["n_lesioned", "n_lesion_free", "n_levels"]].iloc[0] == [5, 5, 6]).all()
    assert table["auroc"].iloc[0] == 1.0
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert scores.groupby("set").size().to_dict() == {"test": 5, "test_lesioned": 5, "train": 16, "val": 3}
    assert (tmp_path / "fig.png").stat().st_size > 20_000
    # two levels only, both unshifted: the GMM can no longer see the lesions perfectly
    run_msma_image(train, val, test, lesioned, masks, tmp_path / "auroc2.csv", tmp_path / "fig2.png", None,
                   {"n_levels": 2, "n_components": 1}, seed=0)
    two = pd.read_csv(tmp_path / "auroc2.csv")
    assert two["n_levels"].iloc[0] == 2  # levels 0 and 5: one shifted, one not
    with pytest.raises(InputError, match="n_levels"):
        run_msma_image(train, val, test, lesioned, masks, tmp_path / "x.csv", tmp_path / "x.png", None,
                       {"n_levels": 7}, seed=0)


def test_lesion_and_healthy_voxels(tmp_path):
    rng = np.random.default_rng(1)
    lesioned, masks = _write_set(tmp_path, "les", 2, rng, lesioned=True)
    lesion, healthy = lesion_vs_healthy_samples(lesioned, masks, seed=0)
    assert lesion.shape == (2 * 27, 6)
    # brain 8^3 minus the lesion dilated by one voxel (5^3)
    assert healthy.shape == (2 * (512 - 125), 6)
    assert np.median(lesion[:, 0]) > 2 * np.median(healthy[:, 0])
    assert np.median(lesion[:, 5]) == pytest.approx(np.median(healthy[:, 5]), rel=0.2)


def test_mismatched_levels_and_config_errors(tmp_path):
    rng = np.random.default_rng(2)
    train, _ = _write_set(tmp_path, "train", 4, rng)
    other, _ = _write_set(tmp_path, "other", 2, rng, sigmas=SIGMAS * 2)
    lesioned, masks = _write_set(tmp_path, "les", 2, rng, lesioned=True)
    empty, _ = _write_set(tmp_path, "empty", 0, rng)
    with pytest.raises(InputError, match="sigma levels"):
        run_msma_image(train, train, other, lesioned, masks, tmp_path / "a.csv", tmp_path / "a.png", None, {}, 0)
    with pytest.raises(InputError, match="unknown key"):
        run_msma_image(train, train, train, lesioned, masks, tmp_path / "a.csv", tmp_path / "a.png", None,
                       {"components": 2}, 0)
    with pytest.raises(InputError, match="test set"):
        run_msma_image(train, train, empty, lesioned, masks, tmp_path / "a.csv", tmp_path / "a.png", None, {}, 0)
    with pytest.raises(InputError, match="2 lesioned caches but 1 lesion masks"):
        lesion_vs_healthy_samples(lesioned, masks[:1], seed=0)
