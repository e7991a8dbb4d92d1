"""The one set writer and the intensity z-score detector: file names, brain masking, affine, progress, and
the errors that name what does not fit."""

import logging
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import nibabel as nib
import numpy as np
import pytest

from spatial_msma import io
from spatial_msma.baselines.zscore import ZscoreDetector, fit_zscore, write_zscore_model
from spatial_msma.detector import Case, read_case, write_set_heatmaps

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 7, 5)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def brain() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[1:5, 1:6, 1:4] = True
    return mask


def write_set(directory: Path, n: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        images.append(directory / f"sub-{i:02d}.nii.gz")
        masks.append(directory / f"sub-{i:02d}_brainmask.nii.gz")
        io.write_channels(rng.normal(size=(2, *SHAPE)).astype(np.float32), AFFINE, images[-1])
        io.write_nifti(brain(), AFFINE, masks[-1])
    return images, masks


@dataclass
class Stepping:
    """A detector that reports ``steps_per_image`` steps per image and returns the image's first channel."""

    steps_per_image: int = 3
    seen: list[str] = field(default_factory=list)
    label: ClassVar[str] = "stepping"

    def settings(self) -> str:
        return f"{self.steps_per_image} steps per image"

    def heatmap(self, case: Case) -> np.ndarray:
        for k in range(1, self.steps_per_image + 1):
            case.on_step(k)
        self.seen.append(case.image_id)
        return case.image[0] + 10.0


def test_writer_names_masks_and_logs_every_image(tmp_path, caplog):
    images, masks = write_set(tmp_path, 3)
    with caplog.at_level(logging.INFO, logger="spatial_msma"):
        write_set_heatmaps(detector := Stepping(), images, masks, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sub-00.nii.gz", "sub-01.nii.gz", "sub-02.nii.gz"]
    img = nib.load(tmp_path / "out" / "sub-01.nii.gz")
    heat = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.float32 and np.allclose(img.affine, AFFINE)
    np.testing.assert_array_equal(heat, np.where(brain(), io.read_channels(images[1])[0][0] + 10.0, 0.0))
    assert detector.seen == ["sub-00", "sub-01", "sub-02"]
    assert "stepping: 3 images; 3 steps per image" in caplog.text
    assert "step 9/9 (100%)" in caplog.text


def test_writer_errors_name_the_mismatch(tmp_path):
    images, masks = write_set(tmp_path, 2)
    with pytest.raises(io.InputError, match="2 images but 1 brain masks"):
        write_set_heatmaps(Stepping(), images, masks[:1], tmp_path / "out")
    with pytest.raises(io.InputError, match="_brainmask.nii.gz"):
        write_set_heatmaps(Stepping(), images[:1], images[1:], tmp_path / "out")
    io.write_nifti(np.ones((3, 3, 3), bool), AFFINE, tmp_path / "sub-09_brainmask.nii.gz")
    with pytest.raises(io.InputError, match="brain mask of another subject"):
        read_case(images[0], tmp_path / "sub-09_brainmask.nii.gz")
    (tmp_path / "small").mkdir()
    io.write_nifti(np.ones((3, 3, 3), bool), AFFINE, tmp_path / "small" / "sub-00_brainmask.nii.gz")
    with pytest.raises(io.InputError, match="differs from image"):
        read_case(images[0], tmp_path / "small" / "sub-00_brainmask.nii.gz")

    class Flat(Stepping):
        def heatmap(self, case: Case) -> np.ndarray:
            return np.zeros(3)

    with pytest.raises(io.InputError, match="heatmap of sub-00 has shape"):
        write_set_heatmaps(Flat(), images, masks, tmp_path / "out")


def test_zscore_detector_scores_the_sum_of_channel_z_scores(tmp_path):
    train, _ = write_set(tmp_path / "train", 4, seed=1)
    model = fit_zscore(train, sd_floor=0.5)
    write_zscore_model(model, tmp_path / "model.npz")
    detector = ZscoreDetector.load(tmp_path / "model.npz")
    (image,), (mask,) = write_set(tmp_path / "test", 1, seed=2)
    case = read_case(image, mask)
    stack = np.stack([io.read_channels(p)[0] for p in train]).astype(np.float64)
    sd = np.maximum(stack.std(0, ddof=1), 0.5)
    np.testing.assert_allclose(detector.heatmap(case), (np.abs(case.image - stack.mean(0)) / sd).sum(0), rtol=1e-5)
    with pytest.raises(io.InputError, match="at least 2"):
        fit_zscore(train[:1], sd_floor=0.5)
    short = Case(case.image_id, case.image[:1], case.brain, case.affine, case.image_path)
    with pytest.raises(io.InputError, match="model shape"):
        detector.heatmap(short)


def test_zscore_scripts_run_under_a_snakemake_namespace(tmp_path):
    train, _ = write_set(tmp_path / "train", 3, seed=1)
    images, masks = write_set(tmp_path / "test", 2, seed=2)
    scripts = REPO / "workflow" / "scripts"
    fit = SimpleNamespace(input=SimpleNamespace(images=train), output=[str(tmp_path / "model.npz")],
                          params=SimpleNamespace(sd_floor=0.05), log=[str(tmp_path / "fit.log")])
    runpy.run_path(str(scripts / "zscore_model.py"), init_globals={"snakemake": fit})
    heat = SimpleNamespace(input=SimpleNamespace(model=str(tmp_path / "model.npz"), images=images, masks=masks),
                           output=[str(tmp_path / "heat")], log=[str(tmp_path / "heat.log")])
    runpy.run_path(str(scripts / "heatmap_zscore.py"), init_globals={"snakemake": heat})
    assert sorted(p.name for p in (tmp_path / "heat").iterdir()) == ["sub-00.nii.gz", "sub-01.nii.gz"]
    assert "z-score heatmaps: heatmaps of 2 images" in (tmp_path / "heat.log").read_text()


def test_lesion_draws_are_their_own_images_and_share_their_subjects_brain_mask(tmp_path):
    """Two lesion draws of one subject score as two heatmaps named by their volume ids, with one brain mask."""
    images, masks = write_set(tmp_path, 1)
    draws = []
    for k in (1, 2):
        draw = tmp_path / f"sub-00_draw-{k}_image.nii.gz"
        draw.write_bytes(Path(images[0]).read_bytes())
        draws.append(draw)
    write_set_heatmaps(Stepping(), draws, [masks[0], masks[0]], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sub-00_draw-1.nii.gz", "sub-00_draw-2.nii.gz"]
