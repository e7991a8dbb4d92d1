"""Preprocessing with real antspyx on a synthetic head, and the crop box arithmetic."""

import ants
import numpy as np
import pytest
from scipy import ndimage

from spatial_msma.crop import apply_crop, crop_box, cropped_affine
from spatial_msma.io import InputError
from spatial_msma.preprocess import (
    PreprocessSettings,
    _template_images,
    preprocess_subject,
    read_template_images,
    write_template_images,
)
from spatial_msma.synthetic import SyntheticSettings, _save_scan, make_subject
from spatial_msma.template import load_template


def test_crop_box_is_the_padded_union_of_masks():
    a = np.zeros((40, 40, 40), bool)
    b = np.zeros((40, 40, 40), bool)
    a[5:15, 10:20, 3:4] = True
    b[12:25, 12:14, 30:38] = True
    box = crop_box([a, b], multiple=8)
    assert box["shape"] == [24, 16, 40]
    start, stop = np.array(box["start"]), np.array(box["stop"])
    assert np.all(start <= [5, 10, 3]) and np.all(stop >= [25, 20, 38])
    cropped = apply_crop(a | b, box, fill=False)
    assert cropped.shape == (24, 16, 40) and cropped.sum() == (a | b).sum()


def test_crop_pads_outside_the_grid_and_moves_the_origin():
    volume = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4)
    box = {"start": [-2, 0, 1], "stop": [6, 4, 3], "shape": [8, 4, 2]}
    out = apply_crop(volume, box, fill=-1.0)
    assert out.shape == (2, 8, 4, 2)
    np.testing.assert_array_equal(out[:, 2:6], volume[:, :, :, 1:3])
    assert np.all(out[:, :2] == -1.0) and np.all(out[:, 6:] == -1.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    moved = cropped_affine(affine, box)
    np.testing.assert_allclose(moved[:3, 3], [-94, -126, -70])
    # A voxel keeps its world position: cropped index i maps where original index i + start did.
    np.testing.assert_allclose(moved @ [3, 1, 0, 1], affine @ [1, 1, 1, 1])


def test_empty_masks_are_an_error():
    with pytest.raises(InputError, match="no training brain masks"):
        crop_box([np.zeros((4, 4, 4), bool)])


def test_registration_and_skull_stripping_on_a_synthetic_head(tmp_path):
    """A posed, deformed head with scalp and skull lands on the template; its mask matches the template brain."""
    subject = make_subject(3, seed=11, settings=SyntheticSettings(voxel_mm=2.0, rotation_deg=8, translation_mm=8))
    for name in ("t1", "t2"):
        _save_scan(subject[name], subject["affine"], tmp_path / f"{name}.nii.gz")
    settings = PreprocessSettings(voxel_mm=4.0, registration_mm=4.0)
    image, mask, affine = preprocess_subject(tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz", settings)
    # Again, with the template read back from the files the workflow's template_images rule writes.
    write_template_images(4.0, tmp_path / "tpl_T1w.nii.gz", tmp_path / "tpl_brainmask.nii.gz")
    from_files = read_template_images(tmp_path / "tpl_T1w.nii.gz", tmp_path / "tpl_brainmask.nii.gz")
    again = preprocess_subject(tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz", settings,
                               registration_template=from_files, output_template=from_files)
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1])  # same subject, same bytes
    np.testing.assert_array_equal(affine, again[2])
    template_mask = _template_images(4.0)[1].numpy() > 0.5
    assert image.shape == (2, *template_mask.shape) and mask.shape == template_mask.shape
    dice = 2 * (mask & template_mask).sum() / (mask.sum() + template_mask.sum())
    assert dice > 0.85, dice
    assert np.allclose(np.diag(affine)[:3], 4.0)
    # Scaled to [-1, 1], background exactly -1, skull gone: nothing bright just outside the mask.
    assert image.min() == -1.0 and image.max() <= 1.0
    assert np.all(image[:, ~mask] == -1.0)
    # Contrast survives: in the template's white matter the subject's T1 is brighter and its T2 darker than
    # in the template's CSF (both maps resampled to the output grid exactly as the template T1 is).
    tissue = {name: ants.resample_image(ants.from_nibabel_nifti(load_template().image(name)), (4.0,) * 3,
                                        use_voxels=False, interp_type=0).numpy() for name in ("wm", "csf")}
    deep = ndimage.binary_erosion(mask, iterations=3)  # ventricles, not the CSF/skull rim at the brain's edge
    wm, csf = deep & (tissue["wm"] > 0.9), deep & (tissue["csf"] > 0.7)
    assert wm.sum() > 100 and csf.sum() > 20
    assert image[0][wm].mean() > image[0][csf].mean() + 0.25
    assert image[1][wm].mean() < image[1][csf].mean() - 0.25


def test_a_volume_that_is_no_head_fails_the_registration_check(tmp_path):
    """Uniform noise passes the brain-volume check (the SyN-warped template mask stays template-sized) but not
    the correlation with the template T1."""
    noise = np.random.default_rng(0).uniform(0, 1000, (48, 56, 48)).astype(np.float32)
    for name in ("t1", "t2"):
        _save_scan(noise / 1000.0, np.diag([4.0, 4.0, 4.0, 1.0]), tmp_path / f"{name}.nii.gz")
    with pytest.raises(InputError, match="failed its quality check .correlation with the template T1"):
        preprocess_subject(tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz", PreprocessSettings(voxel_mm=4.0,
                                                                                               registration_mm=4.0))
