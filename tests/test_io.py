"""Bad input gets a clear error naming the file; writes are atomic and get the umask's mode."""

import gzip
import os
import re

import nibabel as nib
import numpy as np
import pytest

from spatial_msma.io import (
    InputError,
    atomic_path,
    check_device_name,
    load_nifti,
    read_channels,
    write_channels,
    write_nifti,
    write_text,
)


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """The atomic writer's temporary file is private (0600); the result is what a plain write would be."""
    old = os.umask(umask)
    try:
        write_text("x\n", tmp_path / "table.csv")
        write_nifti(np.ones((2, 2, 2)), np.eye(4), tmp_path / "image.nii.gz")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"table.csv": mode, "image.nii.gz": mode}


def test_device_names_are_checked_with_their_key():
    assert check_device_name("cuda:1", "flow.device") == "cuda:1"
    for bad in ("gpu", "cuda0", "", None):
        with pytest.raises(InputError, match=re.escape(f"config flow.device: {bad!r} is not a device")):
            check_device_name(bad, "flow.device")
