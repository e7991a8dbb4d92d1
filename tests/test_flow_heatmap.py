"""Heatmaps: layout (grid, affine, mask), agreement with the model, and the one-sided measurement.

The synthetic sets follow the prototype's finding on real score norms: a lesion raises the norms of all
(low) levels together, and healthy anatomy also has regions of lower-than-average norms. On such data a
two-sided density score flags the healthy dips as much as the lesions; the one-sided score (each level
scored at max(f, typical f)) does not. Measured here on a fixed seed: AUROC two-sided vs one-sided.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from spatial_msma.flow.data import load_subject
from spatial_msma.flow.heatmap import flow_space_mode_map, load_density_model, subject_heatmap, write_heatmaps
from spatial_msma.flow.synthetic_norms import write_synthetic_set
from spatial_msma.flow.train import train_flow
from spatial_msma.io import InputError

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 24, 16)
CFG = {"steps": 120, "batch_voxels": 1024, "images_per_step": 4, "val_every": 40, "checkpoint_every": 120,
       "val_voxels": 2048, "hidden": 32, "n_layers": 2, "position_dims": 12, "warmup_steps": 10,
       "global_features": {"channels": [4, 8], "dims": 8, "kernel": 5, "stride": 2, "heads": 2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowheat")
    kw = {"shape": SHAPE, "n_levels": 5, "lesion_shift": 0.8, "dip_shift": 0.8}
    train = write_synthetic_set(root / "train", 10, seed=0, **kw)
    val = write_synthetic_set(root / "val", 2, seed=1, prefix="val", **kw)
    test = write_synthetic_set(root / "test", 3, seed=2, prefix="tst", lesioned=True, **kw)
    models = {}
    for method in ("spatial_msma", "voxel_gaussian"):
        out = root / method
        train_flow(train.norm_paths, train.image_paths, val.norm_paths, val.image_paths, out / "model.pt",
                   out / "ckpt", out / "log.csv", out / "fig.png", CFG, seed=0, method=method)
        models[method] = out / "model.pt"
    return root, test, models


def mean_auroc(test, paths) -> float:
    aucs = [roc_auc_score(lesion[test.brain_mask], nib.load(p).get_fdata()[test.brain_mask])
            for lesion, p in zip(test.lesion_masks, paths, strict=True)]
    return float(np.mean(aucs))


@pytest.mark.parametrize("method", ["spatial_msma", "voxel_gaussian"])
def test_heatmap_layout_and_one_sided_gain(trained, method):
    root, test, models = trained
    aurocs = {}
    for one_sided in (False, True):
        outs = [root / "heat" / method / str(one_sided) / f"{p.stem}.nii.gz" for p in test.norm_paths]
        write_heatmaps(models[method], test.norm_paths, test.image_paths, outs, {**CFG, "one_sided": one_sided})
        for out, image_path in zip(outs, test.image_paths, strict=True):
            img = nib.load(out)
            data = img.get_fdata()
            assert data.shape == SHAPE and img.get_data_dtype() == np.float32
            np.testing.assert_allclose(img.affine, nib.load(image_path).affine)
            assert (data[~test.brain_mask] == 0).all()
            assert np.isfinite(data).all() and np.unique(data[test.brain_mask]).size > 100
        aurocs[one_sided] = mean_auroc(test, outs)
    print(f"{method} AUROC two-sided {aurocs[False]:.3f} one-sided {aurocs[True]:.3f}")
    # the lesions are found, and scoring one-sided gains over two-sided on this (prototype-like) data
    assert aurocs[True] > 0.75, aurocs
    assert aurocs[True] > aurocs[False] + 0.05, aurocs


def test_heatmap_equals_the_model_nll_at_each_voxel(trained):
    """The written value at a voxel is -log p of that voxel's standardised log norms under the model."""
    _, test, models = trained
    model, cfg = load_density_model(models["spatial_msma"])
    subject = load_subject(test.norm_paths[0], test.image_paths[0], np.asarray(model.meta.levels),
                           cfg.log_transform, cfg.log_eps)
    heat = subject_heatmap(model, subject, one_sided=False, chunk=1000)
    picks = subject.index[[0, 50, 500]]
    x = (subject.features[[0, 50, 500]] - np.asarray(model.meta.feature_mean, np.float32)) \
        / np.asarray(model.meta.feature_std, np.float32)
    with torch.no_grad():
        g = model.image_features(torch.from_numpy(subject.image[None]))
        index = torch.from_numpy(picks)
        expected = -model.log_prob(torch.from_numpy(x), index, model.context(index, g.expand(3, -1))).numpy()
    np.testing.assert_allclose(heat[tuple(picks.T)], expected, rtol=1e-5, atol=1e-5)
    # chunking does not change the map
    np.testing.assert_allclose(subject_heatmap(model, subject, one_sided=False, chunk=333), heat, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("method", ["spatial_msma", "voxel_gaussian"])
def test_heatmap_without_jacobian_drops_only_a_per_voxel_constant(trained, method, tmp_path):
    """``heatmap_jacobian: false`` (the default) = the full NLL minus a constant of the voxel alone:
    sum log s_p of the flow's ``input_norm: voxel``, 0.5 log|cov_p| of the voxel Gaussian."""
    _, test, models = trained
    model, _ = load_density_model(models[method])
    maps = {}
    for jacobian in (True, False):
        out = tmp_path / str(jacobian) / "heat.nii.gz"
        write_heatmaps(models[method], test.norm_paths[:1], test.image_paths[:1], [out],
                       {**CFG, "heatmap_jacobian": jacobian})
        maps[jacobian] = nib.load(out).get_fdata()
    constant = np.log(model.voxel_std.numpy()).sum(-1) if method == "spatial_msma" else 0.5 * model.logdet
    brain = test.brain_mask
    assert np.ptp(constant[brain]) > 0.05  # varies over the brain: the two maps rank voxels differently
    np.testing.assert_allclose((maps[True] - maps[False])[brain], constant[brain], rtol=1e-4, atol=1e-3)
    assert (maps[False][~brain] == 0).all()


def test_lattice_mode_is_exact_on_the_lattice_and_close_elsewhere(trained):
    """mode_stride 2: at voxels with even indices the interpolated flow-space mode is the exact one; in
    between it is the trilinear interpolation of a smooth function, close to the exact value."""
    _, test, models = trained
    model, cfg = load_density_model(models["spatial_msma"])
    subject = load_subject(test.norm_paths[0], test.image_paths[0], np.asarray(model.meta.levels),
                           cfg.log_transform, cfg.log_eps)
    g = model.image_features(torch.from_numpy(subject.image[None])).detach()
    exact = flow_space_mode_map(model, subject.index, g, 4096, 1, torch.device("cpu"))
    coarse = flow_space_mode_map(model, subject.index, g, 4096, 2, torch.device("cpu"))
    on_lattice = (subject.index % 2 == 0).all(1)
    assert on_lattice.sum() > 50
    np.testing.assert_allclose(coarse[on_lattice], exact[on_lattice], rtol=1e-5, atol=1e-5)
    assert np.abs(coarse - exact).mean() < 0.1 * exact.std()


def test_heatmaps_reject_mismatched_inputs(trained, tmp_path):
    _, test, models = trained
    with pytest.raises(InputError, match="one to one"):
        write_heatmaps(models["voxel_gaussian"], test.norm_paths, test.image_paths[:1], [tmp_path / "a.nii.gz"])
    other = write_synthetic_set(tmp_path / "other", 1, seed=9, shape=(16, 16, 16), n_levels=5)
    with pytest.raises(InputError, match="training grid"):
        write_heatmaps(models["voxel_gaussian"], other.norm_paths, other.image_paths, [tmp_path / "b.nii.gz"])
    fewer = write_synthetic_set(tmp_path / "fewer", 1, seed=9, shape=SHAPE, n_levels=3)
    with pytest.raises(InputError, match="levels"):
        write_heatmaps(models["spatial_msma"], fewer.norm_paths, fewer.image_paths, [tmp_path / "c.nii.gz"])


def test_heatmap_script_runs_under_a_snakemake_namespace(trained, tmp_path):
    _, test, models = trained
    outs = [str(tmp_path / "heat" / f"{p.stem}.nii.gz") for p in test.norm_paths]
    sm = SimpleNamespace(input=SimpleNamespace(model=str(models["voxel_gaussian"]), images=test.image_paths),
                         output=[str(tmp_path / "heat")],
                         params=SimpleNamespace(cfg=CFG, norms=test.norm_paths, heatmaps=outs),
                         log=[str(tmp_path / "heatmap.log")], threads=1)
    runpy.run_path(str(REPO / "workflow" / "scripts" / "heatmap_flow.py"), init_globals={"snakemake": sm})
    assert all(Path(p).exists() for p in outs)
    assert "wrote 3 maps (VoxelGaussian, one_sided=True, jacobian=False)" in (tmp_path / "heatmap.log").read_text()
