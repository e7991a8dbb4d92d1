"""Patch and image score norms: known answers, level batching, and the per-image cache contract."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.network import NetworkConfig, ScoreModel, ScoreNet, load_score_model
from spatial_msma.score.norms import (
    NormsConfig,
    compute_score_norm_cache,
    expand_cache_paths,
    image_norms,
    patch_norms,
    read_norm_cache,
    score_norms,
)
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


def test_config_errors_name_the_key():
    with pytest.raises(InputError, match="unknown key"):
        NormsConfig.from_dict({"levels": 3})
    with pytest.raises(InputError, match="channel_reduction"):
        NormsConfig.from_dict({"channel_reduction": "mean"})
    with pytest.raises(InputError, match="dtype"):
        NormsConfig.from_dict({"dtype": "int8"})


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
    outs = [tmp_path / "norms" / "a" / f"sub-{i}.npz" for i in range(3)]
    compute_score_norm_cache(tmp_path / "model.pt", paths, masks, outs, norms_cfg)
    cache = read_norm_cache(outs[2])
    assert cache["patch_norms"].dtype == np.float16 and cache["patch_norms"].shape == (4, *SHAPE)
    assert cache["image_norms"].dtype == np.float32 and cache["sigmas"].dtype == np.float32
    assert cache["mask"].dtype == bool and np.array_equal(cache["mask"], mask)
    assert cache["affine"].dtype == np.float64 and np.array_equal(cache["affine"], affine)
    model = load_score_model(tmp_path / "model.pt")
    sigmas = model.sde.levels(4, 0.0, 0.5)
    assert np.array_equal(cache["sigmas"], sigmas)
    assert cache["sigmas"][0] == pytest.approx(model.sde.sigma_min)
    patch, whole = score_norms(model, io.read_channels(paths[2])[0], sigmas, "sum", batch_levels=3)
    assert np.array_equal(cache["patch_norms"], np.where(mask, patch, 0.0).astype(np.float16))
    assert np.all(cache["patch_norms"][:, mask] > 0)
    assert np.allclose(cache["image_norms"], whole, rtol=1e-5)
    # same model, same image -> same bytes
    again = tmp_path / "again.npz"
    compute_score_norm_cache(tmp_path / "model.pt", paths[2:], masks[2:], [again], norms_cfg)
    assert again.read_bytes() == outs[2].read_bytes()
    # the per-set form: files named by subject beside a manifest that lists them
    manifest = tmp_path / "norms" / "b" / "manifest.tsv"
    compute_score_norm_cache(tmp_path / "model.pt", paths[1:], masks[1:], None, norms_cfg, manifest=manifest,
                             subjects=["s1", "s2"])
    listed = expand_cache_paths([manifest, outs[0]])
    assert listed == [manifest.parent / "s1.npz", manifest.parent / "s2.npz", outs[0]]
    assert listed[1].read_bytes() == outs[2].read_bytes()
    with pytest.raises(InputError, match="manifest"):
        compute_score_norm_cache(tmp_path / "model.pt", paths, masks, None, norms_cfg)
    with pytest.raises(InputError, match="same number"):
        compute_score_norm_cache(tmp_path / "model.pt", paths, masks[:2], outs, norms_cfg)
    np.savez(tmp_path / "broken.npz", patch_norms=cache["patch_norms"])
    with pytest.raises(InputError, match="missing key"):
        read_norm_cache(tmp_path / "broken.npz")
