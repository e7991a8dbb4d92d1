"""Patch and image score norms: known answers, level batching, and the cache contract (files, manifest, checks)."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.cache import CACHE_KEYS, cache_path, read_manifest, read_norm_cache, write_manifest
from spatial_msma.score.network import NetworkConfig, ScoreModel, ScoreNet, load_score_model
from spatial_msma.score.norms import NormsConfig, compute_score_norm_cache, image_norms, patch_norms, score_norms
from spatial_msma.score.sde import VESDE
from spatial_msma.score.train import train_score_model

torch.set_num_threads(1)

SHAPE = (16, 16, 16)


def test_patch_norms_known_answer():
    field = torch.zeros(1, 2, 7, 7, 7)
    field[0, 0, 3, 3, 3] = 3.0
    field[0, 1, 3, 3, 3] = -1.0
    field[0, 0, 3, 3, 5] = 4.0
    summed = patch_norms(field, "sum")[0]
    assert summed.shape == (7, 7, 7)
    assert float(summed[3, 3, 2]) == pytest.approx(2.0)  # sees only the first voxel: |3 - 1|
    assert float(summed[3, 3, 4]) == pytest.approx(np.hypot(2.0, 4.0))  # sees both
    assert float(summed[3, 3, 6]) == pytest.approx(4.0)  # border: zero padding
    assert float(summed[0, 0, 0]) == 0.0
    assert np.count_nonzero(summed.numpy()) == 27 + 18  # two overlapping 3x3x3 neighbourhoods
    normed = patch_norms(field, "norm")[0]
    assert float(normed[3, 3, 2]) == pytest.approx(np.sqrt(10.0))  # channels do not cancel
    assert float(image_norms(field)[0]) == pytest.approx(np.sqrt(9 + 1 + 16))
    with pytest.raises(InputError):
        patch_norms(field, "max")


def _model(seed=0) -> ScoreModel:
    torch.manual_seed(seed)
    net = ScoreNet(2, SHAPE, NetworkConfig.from_dict({"channels": [8, 8], "norm_num_groups": 4}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights where the init is zero, as training would leave them
        for param in net.parameters():
            if param.abs().sum() == 0:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return ScoreModel(net.eval(), VESDE(0.05, 20.0), {})


def test_score_norms_equal_a_per_level_reference_and_do_not_depend_on_batching():
    model = _model()
    image = np.random.default_rng(0).normal(0, 0.5, (2, *SHAPE)).astype(np.float32)
    sigmas = model.sde.levels(5, 0.0, 0.6)
    patch, whole = score_norms(model, image, sigmas, "sum", batch_levels=0)
    chunked = score_norms(model, image, sigmas, "sum", batch_levels=2)
    assert np.allclose(patch, chunked[0], rtol=1e-4, atol=1e-5) and np.allclose(whole, chunked[1], rtol=1e-5)
    assert patch.shape == (5, *SHAPE) and whole.shape == (5,)
    with torch.no_grad():
        for i, sigma in enumerate(sigmas):
            scaled = (sigma * model.net(torch.from_numpy(image)[None], torch.tensor([sigma]))[0]).double().numpy()
            reference = np.sqrt(ndimage.correlate(scaled.sum(0) ** 2, np.ones((3, 3, 3)), mode="constant"))
            assert np.allclose(patch[i], reference, rtol=1e-3, atol=1e-4)
            assert whole[i] == pytest.approx(np.sqrt((scaled**2).sum()), rel=1e-4)
    assert not np.allclose(whole, whole[0])  # the levels differ
    with pytest.raises(InputError, match="does not match"):
        score_norms(model, image[:1], sigmas, "sum")


@pytest.mark.parametrize("bad, key", [
    ({"levels": 3}, "unknown key"),
    ({"channel_reduction": "mean"}, "channel_reduction"),
    ({"dtype": "int8"}, "dtype"),
    ({"batch_levels": -1}, "batch_levels"),
])
def test_config_errors_name_the_key(bad, key):
    with pytest.raises(InputError, match=key):
        NormsConfig.from_dict(bad)


def test_cache_files_follow_the_data_contract(tmp_path):
    rng = np.random.default_rng(1)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    mask = (g**2).sum(0) < 0.7
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    paths, masks = [], []
    for i in range(3):
        data = np.stack([np.where(mask, 0.3 * g[0] + rng.normal(0, 0.05, SHAPE), -1.0) for _ in range(2)])
        paths.append(tmp_path / f"sub-{i}.nii.gz")
        masks.append(tmp_path / f"sub-{i}_brainmask.nii.gz")
        io.write_channels(data.astype(np.float32), affine, paths[-1])
        io.write_nifti(mask, affine, masks[-1])
    cfg = {"network": {"channels": [8, 8], "norm_num_groups": 4}, "steps": 3, "checkpoint_every": 3,
           "device": "cpu"}
    train_score_model(paths[:2], masks[:2], [], tmp_path / "model.pt", tmp_path / "log.csv", None,
                      tmp_path / "ck", cfg, seed=0)
    norms_cfg = {"n_levels": 4, "t_min": 0.0, "t_max": 0.5, "batch_levels": 3, "device": "cpu"}
    manifest = tmp_path / "norms" / "a" / "manifest.tsv"
    subjects = ["sub-0", "sub-1", "sub-2"]
    compute_score_norm_cache(tmp_path / "model.pt", paths, masks, manifest, subjects, norms_cfg)
    # the manifest lists the set in order, its files beside it
    table = pd.read_csv(manifest, sep="\t", dtype=str)
    assert table.columns.tolist() == ["subject", "path", "image"] and table["subject"].tolist() == subjects
    assert table["path"].tolist() == [str(manifest.parent / f"{s}.npz") for s in subjects]
    assert table["image"].tolist() == [str(p) for p in paths]
    listed = read_manifest(manifest)
    assert listed.subjects == tuple(subjects) and listed.paths == [manifest.parent / f"{s}.npz" for s in subjects]
    # the stored format
    with np.load(cache_path(manifest, "sub-2")) as npz:
        assert sorted(npz.files) == sorted(CACHE_KEYS)
        assert npz["patch_norms"].dtype == np.float16 and npz["patch_norms"].shape == (4, *SHAPE)
        assert npz["image_norms"].dtype == np.float32 and npz["sigmas"].dtype == np.float32
        assert npz["mask"].dtype == bool and npz["affine"].dtype == np.float64
        stored = npz["patch_norms"]
    cache = read_norm_cache(cache_path(manifest, "sub-2"))
    assert cache.subject == "sub-2" and cache.patch_norms.dtype == np.float32
    assert np.array_equal(cache.patch_norms, stored) and np.array_equal(cache.mask, mask)
    assert np.array_equal(cache.affine, affine)
    model = load_score_model(tmp_path / "model.pt")
    sigmas = model.sde.levels(4, 0.0, 0.5)
    assert np.array_equal(cache.sigmas, sigmas)
    assert cache.sigmas[0] == pytest.approx(model.sde.sigma_min)
    patch, whole = score_norms(model, io.read_channels(paths[2])[0], sigmas, "sum", batch_levels=3)
    assert np.array_equal(stored, np.where(mask, patch, 0.0).astype(np.float16))
    assert np.all(cache.patch_norms[:, mask] > 0)
    assert np.allclose(cache.image_norms, whole, rtol=1e-5)
    assert [c.subject for c in listed.caches()] == subjects
    # same model, same image -> same bytes
    again = tmp_path / "norms" / "b" / "manifest.tsv"
    compute_score_norm_cache(tmp_path / "model.pt", paths[2:], masks[2:], again, ["sub-2"], norms_cfg)
    assert cache_path(again, "sub-2").read_bytes() == cache_path(manifest, "sub-2").read_bytes()
    with pytest.raises(InputError, match="same number"):
        compute_score_norm_cache(tmp_path / "model.pt", paths, masks[:2], manifest, subjects, norms_cfg)


def _cache(tmp_path, name="sub-0", **change):
    """A valid cache file, with any array replaced or (value None) left out."""
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 1:5] = True
    arrays = {"patch_norms": np.ones((3, 4, 5, 6), np.float16), "image_norms": np.ones(3, np.float32),
              "sigmas": np.array([0.1, 0.5, 1.0], np.float32), "mask": mask, "affine": np.eye(4)}
    arrays.update(change)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


@pytest.mark.parametrize("change, problem", [
    ({"sigmas": None}, r"missing key\(s\) \['sigmas'\]"),
    ({"image_norms": np.ones(2, np.float32)}, "image_norms has shape"),
    ({"patch_norms": np.ones((3, 4, 5), np.float16)}, r"patch_norms must be \(L, X, Y, Z\)"),
    ({"mask": np.ones((4, 5, 7), bool)}, "mask shape"),
    ({"affine": np.eye(3)}, "affine must be 4x4"),
    ({"mask": np.zeros((4, 5, 6), bool)}, "brain mask is empty"),
    ({"patch_norms": np.full((3, 4, 5, 6), np.nan, np.float16)}, "patch_norms inside the brain mask must be finite"),
    ({"image_norms": np.array([1.0, np.inf, 1.0], np.float32)}, "image_norms must be finite"),
])
def test_a_broken_cache_is_an_error_naming_the_file_and_the_problem(tmp_path, change, problem):
    path = _cache(tmp_path, **change)
    with pytest.raises(InputError, match=problem) as err:
        read_norm_cache(path)
    assert str(path) in str(err.value)


def test_nan_outside_the_brain_is_not_read(tmp_path):
    patch = np.ones((3, 4, 5, 6), np.float16)
    patch[:, 0] = np.nan
    assert read_norm_cache(_cache(tmp_path, patch_norms=patch)).patch_norms.shape == (3, 4, 5, 6)


def test_unreadable_and_absent_files(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputError, match="junk.npz: unreadable"):
        read_norm_cache(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="none.npz: file does not exist"):
        read_norm_cache(tmp_path / "none.npz")


def test_a_set_is_read_through_its_manifest_and_shares_one_space(tmp_path):
    _cache(tmp_path, "a")
    _cache(tmp_path, "b", sigmas=np.array([0.1, 0.5, 2.0], np.float32))
    _cache(tmp_path, "c", affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    write_manifest(tmp_path / "ab.tsv", ["a", "b"], ["a.nii.gz", "b.nii.gz"])
    write_manifest(tmp_path / "ac.tsv", ["a", "c"], ["a.nii.gz", "c.nii.gz"])
    write_manifest(tmp_path / "aa.tsv", ["a", "a"], ["a.nii.gz", "a.nii.gz"])
    with pytest.raises(InputError, match="b.npz: its sigma levels differ"):
        list(read_manifest(tmp_path / "ab.tsv").caches())
    with pytest.raises(InputError, match="c.npz: grid/affine differ"):
        list(read_manifest(tmp_path / "ac.tsv").caches())
    with pytest.raises(InputError, match=r"listed twice \['a'\]"):
        read_manifest(tmp_path / "aa.tsv")
    (tmp_path / "bare.tsv").write_text("path\na.npz\n")
    with pytest.raises(InputError, match="no 'subject' column"):
        read_manifest(tmp_path / "bare.tsv")
    with pytest.raises(InputError, match="subjects for"):
        write_manifest(tmp_path / "x.tsv", ["a"], [])
