"""Lesion simulator: load and size mix, placement rules, MS-MIST intensity model, determinism, errors.

Test subjects are built from the MNI template itself (a 4 mm central crop; T1 from the template, T2 from
the tissue maps with CSF bright and WM dark), so lesions land in real white-matter anatomy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from snakemake.utils import validate

from spatial_msma import io
from spatial_msma.evaluation.metrics import SIZE_BIN_EDGES_MM3, SIZE_BIN_LABELS
from spatial_msma.lesions.config import Contrast, Enhancement, LesionsConfig
from spatial_msma.lesions.grids import block_mean, resample_to_grid, upsample_nearest
from spatial_msma.lesions.placement import MIN_KEPT
from spatial_msma.lesions.report import summarise_lesions
from spatial_msma.lesions.shapes import load_lesion_library
from spatial_msma.lesions.simulate import LesionSimulation, simulate_lesions, simulate_subject_files, subject_seed
from spatial_msma.lesions.size_bins import MS_MIST_BIN_EDGES_MM3, size_bin_label
from spatial_msma.template import load_template

SHAPE = (32, 40, 28)  # 4 mm voxels: 128 x 160 x 112 mm, the cerebrum's white matter
START = (34, 38, 40)  # first template voxel of the crop
K = 4


def build_subject(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A realistic small subject in template space: (image (2, X, Y, Z) in [-1, 1], brain, affine, WM prior).

    T1 is the template T1 area-averaged to 4 mm, T2 a tissue mix (WM 0.36, GM 0.58, CSF 1.0 as in the
    synthetic cohort) scaled from zero (skull voxels in real brain masks make the 0.01 percentile ~0),
    plus a little noise; outside the brain -1, as in the cropped images.
    """
    template = load_template()
    crop = tuple(slice(s, s + n * K) for s, n in zip(START, SHAPE, strict=True))

    def area_mean(volume: np.ndarray) -> np.ndarray:
        return block_mean(np.asarray(volume, dtype=np.float32)[crop], (K, K, K))

    wm, gm, csf = area_mean(template.wm), area_mean(template.gm), area_mean(template.csf)
    brain = area_mean(template.brain) >= 0.5
    rng = np.random.default_rng(seed)
    raw = np.stack([area_mean(template.t1), 0.36 * wm + 0.58 * gm + 1.0 * csf])
    raw += 0.02 * rng.standard_normal(raw.shape).astype(np.float32)
    image = np.full(raw.shape, -1.0, dtype=np.float32)
    for c, lo in ((0, np.percentile(raw[0][brain], 0.01)), (1, 0.0)):
        hi = np.percentile(raw[c][brain], 99.9)
        image[c][brain] = np.clip(2.0 * (raw[c][brain] - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    affine = template.affine @ np.diag([K, K, K, 1.0])
    affine[:3, 3] = nib.affines.apply_affine(template.affine, np.array(START) + (K - 1) / 2.0)
    return image, brain, affine, wm


@pytest.fixture(scope="module")
def subject():
    return build_subject()


@pytest.fixture(scope="module")
def runs(subject):
    """Three subjects with the default config (20 mL)."""
    image, brain, affine, _ = subject
    return [simulate_lesions(image, brain, affine, {}, 42, f"sub-{i:02d}") for i in range(3)]


def surrounding_wm(result: LesionSimulation, brain: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """White matter within 2 voxels of the ground truth, untouched by any lesion (soft label 0)."""
    return ndi.binary_dilation(result.mask, iterations=2) & (result.soft == 0) & (wm > 0.9) & brain


def test_load_within_ten_percent_and_small_lesions_exist(runs):
    for result in runs:
        load = result.lesions["volume_mm3"].sum()
        assert abs(load - 20000.0) <= 2000.0, load
        labelled = np.bincount(result.fine_labels.ravel())[1:] * result.fine.voxel_volume
        np.testing.assert_allclose(labelled, result.lesions["volume_mm3"], rtol=1e-6)
    volumes = pd.concat([r.lesions for r in runs])["volume_mm3"]
    assert (volumes < 500).mean() >= 1 / 3
    assert volumes.min() >= 50 * MIN_KEPT
    assert (volumes > 1000).any(), "large lesions must exist too"


def test_lesions_neither_overlap_nor_touch_and_are_one_component(runs):
    for result in runs:
        labels = result.fine_labels
        for lesion, box in enumerate(ndi.find_objects(labels), start=1):
            grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            own = labels[grown] == lesion
            assert ndi.label(own, structure=np.ones((3, 3, 3)))[1] == 1
            touched = np.unique(labels[grown][ndi.binary_dilation(own, structure=np.ones((3, 3, 3)))])
            assert set(touched) <= {0, lesion}, f"lesion {lesion} touches {touched}"


def test_lesions_lie_in_brain_and_white_matter(subject, runs):
    image, brain, _, _ = subject
    template = load_template()
    for result in runs:
        assert not (result.mask & ~brain).any()
        assert not result.soft[~brain].any()
        np.testing.assert_array_equal(result.image[:, ~brain], image[:, ~brain])
        fine = result.fine_labels > 0
        assert upsample_nearest(brain, result.fine.k)[fine].all()
        wm_fine = resample_to_grid(template.wm, template.affine, result.fine.shape, result.fine.affine)
        assert wm_fine[fine].min() >= 0.5


def test_working_grid_columns(subject, runs):
    for result in runs:
        table = result.lesions
        assert (table["survives"] == (table["working_voxels"] > 0)).all()
        assert table["working_voxels"].sum() <= result.mask.sum()
        # A lesion of V mm^3 fills at most V / 64 of a 4 mm voxel: under 32 mm^3 none can reach 0.5.
        assert not table.loc[table["volume_mm3"] < 32, "survives"].any()
        summary = result.summary("s")
        assert summary["load_ml_working"] == pytest.approx(result.mask.sum() * 64 / 1000.0)
        assert set(table["size_bin"]) <= {"<50", "50-100", "100-500", "500-1000", "1000-5000", ">5000"}


def test_working_grid_equals_fine_grid_without_subdivision_or_smoothing(subject):
    """grid_mm = working voxel and no border smoothing: the soft label is binary, both loads agree."""
    image, brain, affine, _ = subject
    cfg = {"grid_mm": 4.0, "border_sigma_mm": 0.0, "load_ml": 10}
    result = simulate_lesions(image, brain, affine, cfg, 1, "sub-x")
    assert result.fine.k == (1, 1, 1)
    assert set(np.unique(result.soft)) == {0.0, 1.0}
    summary = result.summary("sub-x")
    assert summary["load_ml_working"] == pytest.approx(summary["load_ml_fine"])
    assert result.lesions["survives"].all()


def test_lesions_darker_on_t1_brighter_on_t2_than_white_matter(subject, runs):
    image, brain, _, wm = subject
    for result in runs:
        ring = surrounding_wm(result, brain, wm)
        t1, t2 = result.image[0], result.image[1]
        assert t1[result.mask].mean() < t1[ring].mean() - 0.1
        assert t2[result.mask].mean() > t2[ring].mean() + 0.05
        assert (result.lesions["contrast_t1"] < 1).all() and (result.lesions["contrast_t2"] > 1).all()
        # The WM-threshold filter: lesion voxels had WM-like intensity in the clean image.
        for c, (mean, sd) in enumerate(result.wm_stats.values()):
            assert np.abs(image[c][result.mask] - mean).max() <= 1.5 * sd + 1e-6


def test_enhancement_variants_known_answers(subject):
    """``contrast`` scales the lesion's change 1.5x; ``code`` multiplies the [-1, 1] image under the label."""
    image, brain, affine, wm = subject
    out = {
        mode: simulate_lesions(image, brain, affine, {"enhancement": {"mode": mode}}, 42, "sub-00")
        for mode in ("none", "contrast", "code")
    }
    p0 = (image + 1) / 2
    change_none = (out["none"].image + 1) / 2 - p0
    change_contrast = (out["contrast"].image + 1) / 2 - p0
    unclipped = (np.abs(out["contrast"].image) < 0.999) & (np.abs(out["none"].image) < 0.999)
    np.testing.assert_allclose(change_contrast[unclipped], 1.5 * change_none[unclipped], atol=2e-6)
    expected_code = np.clip(out["none"].image * (1 + 0.5 * out["none"].soft), -1, 1)
    np.testing.assert_allclose(out["code"].image, expected_code, atol=2e-6)
    # The authors' variant brightens WM-level T1 back up: lesions lose most of their T1 darkening.
    gaps = {}
    for mode, result in out.items():
        ring = surrounding_wm(result, brain, wm)
        gaps[mode] = result.image[0][ring].mean() - result.image[0][result.mask].mean()
    assert gaps["code"] < 0.6 * gaps["none"] < gaps["contrast"]


def test_periventricular_bias_moves_lesions_towards_the_ventricles(subject):
    image, brain, affine, _ = subject
    distances = {
        bias: np.median(simulate_lesions(
            image, brain, affine, {"periventricular_bias": bias, "load_ml": 10}, 3, "sub-pv"
        ).lesions["distance_to_ventricles_mm"])
        for bias in (0.0, 1.0)
    }
    assert distances[1.0] < 0.6 * distances[0.0], distances


def write_inputs(tmp_path, subject) -> tuple[str, str]:
    image, brain, affine, _ = subject
    io.write_channels(image, affine, tmp_path / "in.nii.gz")
    io.write_nifti(brain, affine, tmp_path / "in_brainmask.nii.gz")
    return str(tmp_path / "in.nii.gz"), str(tmp_path / "in_brainmask.nii.gz")


def test_same_seed_same_bytes_and_subjects_differ(tmp_path, subject):
    inputs = write_inputs(tmp_path, subject)
    cfg = {"load_ml": 8}

    def run(name: str, subject_id: str) -> list[bytes]:
        paths = [tmp_path / name / f for f in ("image.nii.gz", "mask.nii.gz", "lesions.tsv")]
        simulate_subject_files(*inputs, *paths, cfg=cfg, seed=42, subject=subject_id)
        return [p.read_bytes() for p in paths]

    first, second, other = run("a", "sub-01"), run("b", "sub-01"), run("c", "sub-02")
    assert first == second
    assert first[1] != other[1]


def test_subject_seed_is_platform_stable():
    expected = int.from_bytes(hashlib.sha256(b"42:sub-NDARINV0001ABCD").digest()[:8], "little")
    assert subject_seed(42, "sub-NDARINV0001ABCD") == expected == 10416347336177625857
    assert subject_seed(43, "sub-NDARINV0001ABCD") != expected


def write_library(folder, template) -> list[float]:
    """Two masks on different grids: spheres of radius 3, 5, 7 mm at 1 mm and a 10 mm cube at 2 mm."""
    folder.mkdir()
    grid = np.indices((40, 40, 80)).astype(np.float32)
    spheres = np.zeros((40, 40, 80), dtype=bool)
    volumes = []
    for radius, zc in ((3, 10), (5, 30), (7, 60)):
        ball = ((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + (grid[2] - zc) ** 2) <= radius**2
        spheres |= ball
        volumes.append(float(ball.sum()))
    spheres[0, 0, 0] = True  # a 1 mm^3 speck: below the smallest size bin, ignored
    io.write_nifti(spheres, template.affine, folder / "a.nii.gz")
    cube = np.zeros((20, 20, 20), dtype=bool)
    cube[5:10, 5:10, 5:10] = True
    io.write_nifti(cube, template.affine @ np.diag([2.0, 2.0, 2.0, 1.0]), folder / "b.nii")
    return [*volumes, 1000.0]


def test_folder_source_places_user_lesions(tmp_path, subject):
    image, brain, affine, _ = subject
    volumes = write_library(tmp_path / "masks", load_template())
    library = load_lesion_library(tmp_path / "masks", min_volume_mm3=50)
    assert sorted(les.volume_mm3 for les in library) == pytest.approx(sorted(volumes))
    cfg = {"source": "folder", "folder": str(tmp_path / "masks"), "load_ml": 6}
    result = simulate_lesions(image, brain, affine, cfg, 42, "sub-01")
    table = result.lesions
    assert len(table) >= 3
    assert 6000 - max(volumes) <= table["volume_mm3"].sum() <= 6000
    by_name = {les.source: les.volume_mm3 for les in library}
    for _, row in table.iterrows():
        volume = by_name[row["source"]]
        assert MIN_KEPT * volume <= row["volume_mm3"] <= volume + result.fine.voxel_volume
    assert np.bincount(result.fine_labels.ravel())[1:].sum() * result.fine.voxel_volume == pytest.approx(
        table["volume_mm3"].sum()
    )
    assert not (result.mask & ~brain).any()


def test_coarse_user_lesion_keeps_its_volume_at_the_fine_grid(tmp_path, subject):
    """A 10 mm cube drawn at 2 mm, placed at 1 mm: its outer 1 mm lies between its edge voxel centres and
    their faces (interpolated value 0.5), so cutting at the edge centres or thresholding would keep only
    9^3 of its 10^3 mm^3. Placed lesions keep >= MIN_KEPT of the user's volume and never exceed it."""
    image, brain, affine, _ = subject
    (tmp_path / "cube").mkdir()
    cube = np.zeros((8, 8, 8), dtype=bool)
    cube[2:7, 2:7, 2:7] = True
    io.write_nifti(cube, load_template().affine @ np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "cube" / "c.nii.gz")
    cfg = {"source": "folder", "folder": str(tmp_path / "cube"), "load_ml": 4}
    table = simulate_lesions(image, brain, affine, cfg, 7, "sub-cube").lesions
    assert len(table) == 4
    assert table["volume_mm3"].between(MIN_KEPT * 1000.0, 1000.0).all(), table["volume_mm3"]


def test_bad_parameters_raise_clear_errors(tmp_path, subject):
    image, brain, affine, _ = subject
    cases = [
        ({"lesion_load": 20}, "lesions: unknown key(s) ['lesion_load']"),
        ({"load_ml": 400}, "lesions.load_ml"),
        ({"load_ml": -1}, "lesions.load_ml"),
        ({"enhancement": {"mode": "brighter"}}, "lesions.enhancement.mode"),
        ({"enhancement": {"scale": 2}}, "lesions.enhancement: unknown key(s) ['scale']"),
        ({"bin_weights": [1, 1]}, "lesions.bin_weights"),
        ({"size_bins_mm3": [100, 50]}, "lesions.size_bins_mm3"),
        ({"contrast": {"t1": {"mean": 0.8}, "flair": {"mean": 1.2}}}, "lesions.contrast.flair: needs both"),
        ({"contrast": {"flair": {"mean": 1.2, "sd": 0.1}}}, "lesions.contrast.flair: not a channel"),
        ({"contrast": {"t2": {"mean": 1.2, "spread": 0.1}}}, "lesions.contrast.t2: unknown key(s) ['spread']"),
        ({"source": "folder"}, "lesions.folder"),
        ({"mask_threshold": 0}, "lesions.mask_threshold"),
    ]
    for cfg, key in cases:
        with pytest.raises(io.InputError, match=re.escape(key)):
            simulate_lesions(image, brain, affine, cfg, 0, "sub-01")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(io.InputError, match=f"lesions.folder {empty}.*no NIfTI"):
        simulate_lesions(image, brain, affine, {"source": "folder", "folder": str(empty)}, 0, "sub-01")
    specks = tmp_path / "specks"
    specks.mkdir()
    io.write_nifti(np.eye(3, dtype=bool)[:, :, None].repeat(3, axis=2), np.eye(4), specks / "m.nii.gz")
    with pytest.raises(io.InputError, match="no lesion component"):
        simulate_lesions(image, brain, affine, {"source": "folder", "folder": str(specks)}, 0, "sub-01")
    with pytest.raises(io.InputError, match="channels"):
        simulate_lesions(image[:1], brain, affine, {}, 0, "sub-01")


def test_a_folder_of_intensity_images_is_named_as_such(tmp_path):
    """Scans instead of masks: thresholded at 0.5, each was one head-sized lesion, and the error blamed
    lesions.load_ml. The file and its values are named instead."""
    folder = tmp_path / "scans"
    folder.mkdir()
    io.write_nifti(np.linspace(0, 900, 512).reshape(8, 8, 8), np.eye(4), folder / "t1.nii.gz")
    with pytest.raises(io.InputError, match=re.escape(f"lesions.folder {folder}: t1.nii.gz is not a lesion mask "
                                                      "(values 0 to 900; a mask holds 0 and 1")):
        load_lesion_library(folder)


def test_config_defaults_match_the_schema_and_contrasts_merge_per_channel():
    """The schema and the dataclass both describe the section; one contrast key changes only that value."""
    config = {}
    validate(config, str(Path(__file__).resolve().parents[1] / "config" / "schema.yaml"), set_default=True)
    defaults = dataclasses.asdict(LesionsConfig())
    defaults.update({key: list(defaults[key]) for key in ("size_bins_mm3", "bin_weights")})
    assert config["lesions"] == defaults
    cfg = LesionsConfig.from_dict({"contrast": {"t1": {"mean": 0.7}}, "enhancement": {"mode": "code"}})
    assert cfg.contrast == {"t1": Contrast(0.7, 0.139), "t2": Contrast(1.374, 0.353)}
    assert cfg.enhancement == Enhancement(1.5, "code")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.load_ml = 5.0
    for bad, key in [({"grid_mm": True}, "lesions.grid_mm"), ({"wm_prior_min": 2}, "lesions.wm_prior_min"),
                     ({"enhancement": {"factor": 0}}, "lesions.enhancement.factor"),
                     ({"bin_weights": "even"}, "lesions.bin_weights")]:
        with pytest.raises(io.InputError, match=re.escape(key)):
            LesionsConfig.from_dict(bad)


def test_size_bins_are_ms_mists_for_the_simulator_and_the_evaluation():
    """The lesion table's bins and the evaluation's TPR-per-size bins are the same MS-MIST bins."""
    assert LesionsConfig().size_bins_mm3[:-1] == MS_MIST_BIN_EDGES_MM3
    assert SIZE_BIN_EDGES_MM3[1:-1] == MS_MIST_BIN_EDGES_MM3[1:]
    edges = LesionsConfig().size_bins_mm3
    labels = [size_bin_label(v, edges) for v in (20, 60, 100, 499, 600, 4000, 9000)]
    assert labels == ["<50", "50-100", "100-500", "100-500", "500-1000", "1000-5000", ">5000"]
    assert SIZE_BIN_LABELS == ("< 100", "100-500", "500-1000", "1000-5000", "> 5000")


def test_summary_table_and_figure(tmp_path, subject):
    inputs = write_inputs(tmp_path, subject)
    tables, masks, images = [], [], []
    for name in ("sub-01", "sub-02"):
        paths = [tmp_path / f"{name}_{f}" for f in ("image.nii.gz", "mask.nii.gz", "lesions.tsv")]
        result = simulate_subject_files(*inputs, *paths, cfg={"load_ml": 5}, seed=1, subject=name)
        images.append(paths[0]), masks.append(paths[1]), tables.append(paths[2])
    summary = summarise_lesions(tables, masks, images, tmp_path / "summary.tsv", tmp_path / "fig.png")
    assert list(summary["subject"]) == ["sub-01", "sub-02"]
    assert summary.iloc[1].to_dict() == pytest.approx(result.summary("sub-02"))
    assert summary.iloc[1]["load_ml_working"] == pytest.approx(result.mask.sum() * 64 / 1000.0)
    assert pd.read_csv(tmp_path / "summary.tsv", sep="\t").shape == (2, 6)
    assert (tmp_path / "fig.png").stat().st_size > 10_000
