"""Bad input gets a clear error naming the file; writes are atomic."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from spatial_msma.io import InputError, atomic_path, load_nifti, read_channels, write_channels, write_nifti


def _save(path, data):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4))
    nib.save(img, str(path))
    return path


def test_valid_volume_loads_as_float32(tmp_path):
    path = _save(tmp_path / "ok.nii.gz", np.ones((4, 5, 6)))
    img = load_nifti(path)
    assert img.shape == (4, 5, 6) and img.get_fdata().dtype == np.float64
    assert np.asarray(img.dataobj).dtype == np.float32


def test_truncated_gzip_names_the_file(tmp_path):
    path = _save(tmp_path / "cut.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: unreadable or truncated"):
        load_nifti(path)


def test_not_a_nifti(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image"))
    with pytest.raises(InputError, match="junk.nii.gz"):
        load_nifti(path)


def test_nans_are_reported_with_count(tmp_path):
    data = np.zeros((4, 4, 4))
    data[0, 0, :2] = np.nan
    path = _save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError, match=r"nan\.nii\.gz: 2 voxels are NaN"):
        load_nifti(path)


def test_4d_image_is_rejected_but_singleton_fourth_axis_is_accepted(tmp_path):
    with pytest.raises(InputError, match=r"expected a 3D image, got shape \(4, 4, 4, 2\)"):
        load_nifti(_save(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 2))))
    assert load_nifti(_save(tmp_path / "one.nii.gz", np.zeros((4, 4, 4, 1)))).shape == (4, 4, 4)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_nifti(tmp_path / "absent.nii.gz", what="T2w")


def test_channels_round_trip(tmp_path):
    data = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    write_channels(data, affine, tmp_path / "img.nii.gz")
    back, back_affine = read_channels(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(back_affine, affine)


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    write_nifti(np.ones((2, 2, 2), dtype=bool), np.eye(4), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    assert nib.load(str(target)).get_data_dtype() == np.uint8
