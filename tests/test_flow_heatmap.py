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
from synthetic_norms import SyntheticSet, write_synthetic_set

from spatial_msma.detector import write_set_heatmaps
from spatial_msma.flow.data import load_subject
from spatial_msma.flow.heatmap import FlowDetector, flow_space_mode_map, load_density_model, subject_heatmap
from spatial_msma.flow.train import train_flow
from spatial_msma.io import InputError, write_nifti
from spatial_msma.methods import flow_section

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
        train_flow(train.manifest, train.image_paths, val.manifest, val.image_paths, out / "model.pt",
                   out / "ckpt", out / "log.csv", out / "fig.png", flow_section(CFG, method), seed=0)
        models[method] = out / "model.pt"
    return root, test, models


def brain_masks(test: SyntheticSet) -> list[Path]:
    """The set's brain-mask files beside its images, named as the crop stage names them."""
    affine = nib.load(test.image_paths[0]).affine
    paths = [p.with_name(p.name.replace(".nii.gz", "_brainmask.nii.gz")) for p in test.image_paths]
    for path in paths:
        write_nifti(test.brain_mask, affine, path)
    return paths


def write_maps(model: Path, test: SyntheticSet, cfg: dict, out_dir: Path, n: int | None = None) -> list[Path]:
    """Heatmaps of the first ``n`` images of a set (all by default), as the heatmap_flow rule writes them."""
    write_set_heatmaps(FlowDetector.load(model, cfg, test.manifest), test.image_paths[:n], brain_masks(test)[:n],
                       out_dir)
    return [out_dir / p.name for p in test.image_paths[:n]]


def mean_auroc(test, paths) -> float:
    aucs = [roc_auc_score(lesion[test.brain_mask], nib.load(p).get_fdata()[test.brain_mask])
            for lesion, p in zip(test.lesion_masks, paths, strict=True)]
    return float(np.mean(aucs))


@pytest.mark.parametrize("method", ["spatial_msma", "voxel_gaussian"])
def test_heatmap_layout_and_one_sided_gain(trained, method):
    root, test, models = trained
    aurocs = {}
    for one_sided in (False, True):
        out_dir = root / "heat" / method / str(one_sided)
        outs = write_maps(models[method], test, {**CFG, "one_sided": one_sided}, out_dir)
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
        (out,) = write_maps(models[method], test, {**CFG, "heatmap_jacobian": jacobian}, tmp_path / str(jacobian), 1)
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
    detector = FlowDetector.load(models["voxel_gaussian"], CFG, test.manifest)
    with pytest.raises(InputError, match="brain masks"):
        write_set_heatmaps(detector, test.image_paths[:1], brain_masks(test), tmp_path / "a")
    other = write_synthetic_set(tmp_path / "other", 1, seed=9, shape=(16, 16, 16), n_levels=5)
    with pytest.raises(InputError, match="no subject"):  # a case the set's manifest does not list
        write_set_heatmaps(detector, other.image_paths, brain_masks(other), tmp_path / "b")
    with pytest.raises(InputError, match="training grid"):
        write_maps(models["voxel_gaussian"], other, CFG, tmp_path / "b")
    fewer = write_synthetic_set(tmp_path / "fewer", 1, seed=9, shape=SHAPE, n_levels=3)
    with pytest.raises(InputError, match="levels"):
        write_maps(models["spatial_msma"], fewer, CFG, tmp_path / "c")


def test_heatmap_script_runs_under_a_snakemake_namespace(trained, tmp_path):
    _, test, models = trained
    sm = SimpleNamespace(input=SimpleNamespace(model=str(models["voxel_gaussian"]), norms_manifest=str(test.manifest),
                                               images=test.image_paths, masks=brain_masks(test)),
                         output=[str(tmp_path / "heat")], params=SimpleNamespace(cfg=CFG),
                         log=[str(tmp_path / "heatmap.log")], threads=1)
    runpy.run_path(str(REPO / "workflow" / "scripts" / "heatmap_flow.py"), init_globals={"snakemake": sm})
    assert all((tmp_path / "heat" / p.name).exists() for p in test.image_paths)
    assert "VoxelGaussian heatmaps: 3 images; one_sided=True, jacobian=False" in (tmp_path / "heatmap.log").read_text()
