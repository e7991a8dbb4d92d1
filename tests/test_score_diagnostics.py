"""Per-level diagnostics: caches with lesion signal at the three lowest levels only must say exactly that."""

import numpy as np
import pandas as pd
import pytest
from test_score_msma import SIGMAS, _write_set

from spatial_msma.io import InputError
from spatial_msma.score.diagnostics import level_aurocs, write_level_diagnostics


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
    clean, _ = _write_set(tmp_path, "test", 3, rng)
    lesioned, masks = _write_set(tmp_path, "test_lesioned", 3, rng, lesioned=True)
    write_level_diagnostics({"val": (lesioned[:2], clean[:2], masks[:2]), "test": (lesioned, clean, masks)},
                            tmp_path / "levels.csv", tmp_path / "levels.png", seed=0)
    written = pd.read_csv(tmp_path / "levels.csv")
    assert written["split"].tolist() == ["val"] * len(SIGMAS) + ["test"] * len(SIGMAS)
    assert (tmp_path / "levels.png").stat().st_size > 10_000


def test_mismatched_levels_are_an_error(tmp_path):
    rng = np.random.default_rng(3)
    clean, _ = _write_set(tmp_path, "a", 2, rng, sigmas=SIGMAS * 2)
    lesioned, masks = _write_set(tmp_path, "b", 2, rng, lesioned=True)
    with pytest.raises(InputError, match="sigma levels"):
        level_aurocs(lesioned, clean, masks, seed=0)
