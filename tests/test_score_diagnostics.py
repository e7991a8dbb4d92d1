"""Per-level diagnostics: caches with lesion signal at the three lowest levels only must say exactly that."""

import numpy as np
import pandas as pd
import pytest
from test_score_msma import AFFINE, SHAPE, SIGMAS, _write_set

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.cache import cache_path, write_manifest, write_norm_cache
from spatial_msma.score.diagnostics import level_aurocs, voxel_reference, write_level_diagnostics


def test_signal_is_found_at_the_shifted_levels_only(tmp_path):
    rng = np.random.default_rng(1)
    clean, _ = _write_set(tmp_path, "val", 4, rng)
    lesioned, masks = _write_set(tmp_path, "val_lesioned", 4, rng, lesioned=True)
    table = level_aurocs(lesioned, clean, masks, seed=0)
    assert table["sigma"].to_numpy() == pytest.approx(SIGMAS)
    assert (table["voxel_auroc"].iloc[:3] > 0.95).all()  # patch norms x3 inside the lesion
    assert (table["voxel_auroc"].iloc[3:].between(0.35, 0.65)).all()  # untouched levels: chance
    assert (table["image_auroc"].iloc[:3] == 1.0).all()
    assert table["lesion_voxels"].iloc[0] == 4 * 27
    assert table["lesioned_images"].iloc[0] == 4


def test_table_and_figure_written_per_split(tmp_path):
    rng = np.random.default_rng(2)
    val_clean, _ = _write_set(tmp_path, "val", 2, rng)
    val_lesioned, val_masks = _write_set(tmp_path, "val_lesioned", 2, rng, lesioned=True)
    clean, _ = _write_set(tmp_path, "test", 3, rng)
    lesioned, masks = _write_set(tmp_path, "test_lesioned", 3, rng, lesioned=True)
    train, _ = _write_set(tmp_path, "train", 4, rng)
    write_level_diagnostics({"val": (val_lesioned, val_clean, val_masks), "test": (lesioned, clean, masks)},
                            train, tmp_path / "levels.csv", tmp_path / "levels.png", seed=0)
    written = pd.read_csv(tmp_path / "levels.csv")
    assert written["split"].tolist() == ["val"] * len(SIGMAS) + ["test"] * len(SIGMAS)
    assert (written["voxel_auroc_standardised"].iloc[:3] > 0.95).all()
    assert (tmp_path / "levels.png").stat().st_size > 10_000


def test_mismatched_levels_are_an_error(tmp_path):
    rng = np.random.default_rng(3)
    clean, _ = _write_set(tmp_path, "a", 2, rng, sigmas=SIGMAS * 2)
    lesioned, masks = _write_set(tmp_path, "b", 2, rng, lesioned=True)
    with pytest.raises(InputError, match="sigma levels"):
        level_aurocs(lesioned, clean, masks, seed=0)


def test_standardised_auroc_sees_a_lesion_the_raw_norm_hides_under_anatomy(tmp_path):
    """Half the brain has 10x larger norms (like tissue edges); a lesion in the quiet half doubles its norms.
    Raw norms rank the lesion below the loud half (AUROC < 0.5); per-voxel z against healthy images finds it."""
    rng = np.random.default_rng(4)
    brain = np.zeros(SHAPE, bool)
    brain[2:10, 2:10, 2:10] = True
    loud = np.zeros(SHAPE, bool)
    loud[2:10, 2:10, 6:10] = True
    lesion = np.zeros(SHAPE, bool)
    lesion[3:6, 3:6, 2:5] = True

    def write(name, n, with_lesion):
        manifest = tmp_path / name / "manifest.tsv"
        subjects = [f"sub-{i:02d}" for i in range(n)]
        masks = []
        for subject in subjects:
            patch = rng.lognormal(0, 0.1, (len(SIGMAS), *SHAPE)).astype(np.float32) * np.where(loud, 10.0, 1.0)
            if with_lesion:
                patch[:, lesion] *= 2.0
                masks.append(tmp_path / f"{name}-{subject}_mask.nii.gz")
                io.write_nifti(lesion, AFFINE, masks[-1])
            write_norm_cache(cache_path(manifest, subject), patch, np.ones(len(SIGMAS), np.float32), SIGMAS, brain,
                             AFFINE)
        write_manifest(manifest, subjects, [f"{subject}.nii.gz" for subject in subjects])
        return manifest, masks

    train, _ = write("train", 6, False)
    clean, _ = write("clean", 3, False)
    lesioned, masks = write("lesioned", 3, True)
    mean, sd = voxel_reference(train)
    assert mean.shape == (len(SIGMAS), *SHAPE)
    assert mean[0, 5, 5, 8] == pytest.approx(np.log(10.0), abs=0.1) and mean[0, 5, 5, 3] == pytest.approx(0.0, abs=0.1)
    table = level_aurocs(lesioned, clean, masks, seed=0, reference=(mean, sd))
    assert (table["voxel_auroc"] < 0.5).all()
    assert (table["voxel_auroc_standardised"] > 0.95).all()
