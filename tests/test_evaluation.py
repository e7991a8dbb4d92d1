"""Evaluation metrics, post-processing and thresholds on hand-made masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance
from scipy import ndimage

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import (
    SurfaceDistances,
    best_dice,
    component_counts,
    lesion_contrast,
    monai_distances,
    voxel_auroc_auprc,
)
from spatial_msma.evaluation.pipeline import Case, evaluate_subject
from spatial_msma.evaluation.postprocess import brain_rim, post_process, prepare_reference, segment
from spatial_msma.evaluation.thresholds import fpr_thresholds, oracle_threshold
from spatial_msma.io import InputError
from spatial_msma.methods import method_order
from spatial_msma.protocols import protocol_name

# MONAI warns about its own internal use of a deprecated argument when called directly below
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

AFFINE_4MM = np.diag([4.0, 4.0, 4.0, 1.0])


def box(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + k) for s, k in zip(start, size, strict=True))] = True
    return mask


def blobs(shape, seed: int, level: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.5) > level


# ---------------------------------------------------------------- surface distances


def test_two_cubes_a_known_distance_apart():
    """3^3 cubes 10 voxels apart: GT surface voxels sit 8, 9 or 10 voxels from the prediction's surface.

    26 surface voxels: 9 at distance 10, 8 at 9 (the centre voxel is not surface), 9 at 8 -> MSD 234/26 = 9,
    99th percentile 10.
    """
    gt = box((32, 12, 12), (5, 4, 4), (3, 3, 3))
    pred = box((32, 12, 12), (15, 4, 4), (3, 3, 3))
    assert monai_distances(gt, pred) == pytest.approx((10.0, 9.0), abs=1e-5)
    assert SurfaceDistances(gt).directed(pred) == pytest.approx((10.0, 9.0), abs=1e-9)
    assert monai_distances(gt, pred, spacing=np.array([4.0, 4.0, 4.0])) == pytest.approx((40.0, 36.0), abs=1e-4)


def test_distances_are_directed_from_the_reference():
    """A prediction = GT cube + a far false blob: GT -> prediction is 0; the reverse direction is not."""
    gt = box((40, 12, 12), (3, 4, 4), (3, 3, 3))
    pred = gt | box((40, 12, 12), (30, 4, 4), (3, 3, 3))
    assert monai_distances(gt, pred) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert monai_distances(pred, gt)[0] > 20.0
    assert SurfaceDistances(gt).symmetric_msd(pred) > 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_a_direct_scipy_computation(seed):
    shape = (24, 28, 20)
    ref, pred = blobs(shape, seed), blobs(shape, seed + 100)
    ref_surface = ref & ~ndimage.binary_erosion(ref)
    pred_surface = pred & ~ndimage.binary_erosion(pred)
    d_ref = ndimage.distance_transform_edt(~pred_surface)[ref_surface]
    d_pred = ndimage.distance_transform_edt(~ref_surface)[pred_surface]
    expected = (np.percentile(d_ref, 99), d_ref.mean())
    assert monai_distances(ref, pred) == pytest.approx(expected, rel=1e-5)
    assert SurfaceDistances(ref).directed(pred) == pytest.approx(expected, rel=1e-9)
    symmetric = np.concatenate([d_ref, d_pred]).mean()
    monai_symmetric = compute_average_surface_distance(
        torch.from_numpy(ref[None, None].astype(np.float32)), torch.from_numpy(pred[None, None].astype(np.float32)),
        include_background=True, symmetric=True,
    ).item()
    assert SurfaceDistances(ref).symmetric_msd(pred) == pytest.approx(symmetric, rel=1e-9)
    assert monai_symmetric == pytest.approx(symmetric, rel=1e-5)


def test_empty_masks_have_no_distance():
    gt = box((12, 12, 12), (4, 4, 4), (3, 3, 3))
    empty = np.zeros_like(gt)
    assert all(math.isnan(v) for v in monai_distances(gt, empty))
    assert all(math.isnan(v) for v in SurfaceDistances(gt).directed(empty))
    assert SurfaceDistances(gt).symmetric_msd(empty) == math.inf
    assert SurfaceDistances(empty).symmetric_msd(gt) == math.inf


# ---------------------------------------------------------------- components


def test_missed_lesion_halves_tpr_and_false_blob_halves_ppv():
    shape = (30, 30, 30)
    lesion_a = box(shape, (3, 3, 3), (3, 3, 3))  # 27 voxels x 64 mm^3 = 1728 mm^3
    lesion_b = box(shape, (20, 20, 20), (2, 2, 2))  # 8 voxels = 512 mm^3
    gt = lesion_a | lesion_b
    pred = box(shape, (4, 4, 4), (3, 3, 3)) | box(shape, (3, 20, 3), (3, 3, 3))  # hits A; a false blob
    counts = component_counts(gt, pred, voxel_volume_mm3=64.0)
    assert (counts.gt_detected, counts.gt_missed, counts.pred_tp, counts.pred_fp) == (1, 1, 1, 1)
    assert counts.tpr == 0.5
    assert counts.ppv == 0.5
    # bins: < 100, 100-500, 500-1000, 1000-5000, > 5000 mm^3
    assert counts.bin_detected == (0, 0, 0, 1, 0)
    assert counts.bin_missed == (0, 0, 1, 0, 0)


def test_lesion_split_into_two_predicted_pieces_counts_once():
    shape = (20, 20, 20)
    gt = box(shape, (5, 5, 5), (6, 3, 3))
    pred = box(shape, (5, 5, 5), (2, 3, 3)) | box(shape, (9, 5, 5), (2, 3, 3))
    counts = component_counts(gt, pred, voxel_volume_mm3=1.0)
    assert (counts.gt_detected, counts.pred_tp, counts.pred_fp) == (1, 2, 0)
    assert counts.tpr == 1.0 and counts.ppv == 1.0


def test_components_use_full_26_connectivity():
    gt = np.zeros((8, 8, 8), dtype=bool)
    gt[2, 2, 2] = gt[3, 3, 3] = True  # corner neighbours: one lesion
    pred = np.zeros_like(gt)
    pred[3, 3, 3] = True
    counts = component_counts(gt, pred, voxel_volume_mm3=1.0)
    assert (counts.gt_detected, counts.gt_missed) == (1, 0)


def test_empty_prediction_is_nan_and_counted_missed():
    shape = (20, 20, 20)
    brain = box(shape, (2, 2, 2), (16, 16, 16))
    lesion = box(shape, (8, 8, 8), (3, 3, 3))
    heat = np.where(brain, 0.5, 0.0).astype(np.float32)
    row = evaluate_subject(Case("sub-x", heat, brain, lesion, AFFINE_4MM), EvaluationConfig(), threshold=10.0)
    assert row["missed"] == 1
    assert math.isnan(row["hd99"]) and math.isnan(row["msd"]) and math.isnan(row["hd99_mm"])
    assert math.isnan(row["ppv"])
    assert row["tpr"] == 0.0 and row["dice"] == 0.0 and row["gt_missed"] == 1
    assert row["bin_100_500_fn"] == 0 and row["bin_1000_5000_fn"] == 1  # 27 x 64 = 1728 mm^3


# ---------------------------------------------------------------- post-processing


def test_postprocess_removes_two_voxel_component_and_dilates():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[3, 3, 3:5] = True  # 2 voxels: removed
    mask[10, 10, 9:12] = True  # 3-voxel line: kept, dilated by a radius-1 ball
    out = post_process(mask, EvaluationConfig())
    assert not out[3, 3, 3:5].any()
    assert out.sum() == 3 + 2 + 4 * 3  # the line, its two end caps, four face neighbours per voxel
    undilated = post_process(mask, EvaluationConfig(dilation_radius=0))
    assert np.array_equal(undilated, mask & ~box(mask.shape, (3, 3, 3), (1, 1, 2)))


def test_postprocess_connectivity_switch():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[2, 2, 2] = mask[3, 3, 2] = mask[4, 4, 2] = True  # edge-adjacent chain of 3
    cfg6 = EvaluationConfig(component_connectivity_postprocess=1, dilation_radius=0)
    cfg18 = EvaluationConfig(component_connectivity_postprocess=2, dilation_radius=0)
    assert not post_process(mask, cfg6).any()
    assert np.array_equal(post_process(mask, cfg18), mask)


def test_rim_components_dropped_from_prediction_and_truth_when_switched_on():
    shape = (24, 24, 24)
    brain = box(shape, (2, 2, 2), (20, 20, 20))
    at_rim = box(shape, (2, 10, 10), (3, 3, 3))
    inside = box(shape, (11, 11, 11), (3, 3, 3))
    cfg = EvaluationConfig(drop_rim_components=True, dilation_radius=0)
    rim = brain_rim(brain, cfg.rim_radius)
    assert rim[2, 11, 11] and not rim[12, 12, 12]
    assert np.array_equal(post_process(at_rim | inside, cfg, rim), inside)
    assert np.array_equal(prepare_reference(at_rim | inside, brain, cfg, rim), inside)
    assert np.array_equal(prepare_reference(at_rim | inside, brain, EvaluationConfig(), None), at_rim | inside)


def test_reference_is_restricted_to_the_region_and_drops_lesions_too_small_to_find():
    shape = (24, 24, 24)
    region = box(shape, (4, 4, 4), (16, 16, 16))
    inside = box(shape, (10, 10, 10), (3, 3, 3))
    straddling = box(shape, (2, 10, 10), (4, 2, 2))  # 16 voxels, 8 of them inside the region
    pair = box(shape, (15, 15, 15), (1, 1, 2))  # 2 voxels: under the authors' 3-voxel rule
    gt = inside | straddling | pair
    reference = prepare_reference(gt, region, EvaluationConfig(), None)
    assert np.array_equal(reference, inside | (straddling & region))
    keep_all = prepare_reference(gt, region, EvaluationConfig(min_lesion_voxels=0), None)
    assert np.array_equal(keep_all, gt & region)


# ---------------------------------------------------------------- thresholds


def test_oracle_picks_the_threshold_that_separates_the_lesion():
    rng = np.random.default_rng(3)
    shape = (24, 24, 24)
    brain = box(shape, (2, 2, 2), (20, 20, 20))
    lesion = box(shape, (6, 6, 6), (4, 4, 4)) | box(shape, (14, 12, 13), (3, 3, 3))
    heat = np.where(brain, rng.uniform(0.0, 1.0, shape), 0.0)
    heat[lesion] = 5.0
    cfg = EvaluationConfig()
    threshold, candidates, curve = oracle_threshold(heat, brain, lesion, cfg)
    assert len(candidates) == 100
    assert candidates[0] == pytest.approx(np.percentile(heat[brain], 90))
    assert candidates[-1] == pytest.approx(np.percentile(heat[brain], 99.99))
    # the chosen candidate leaves only the lesion (isolated background voxels fall to post-processing);
    # lower candidates keep background components, and ties go to the lowest threshold
    assert threshold < 5.0
    assert np.all(curve[candidates < threshold] > curve.min())
    assert np.all(np.isinf(curve[candidates >= 5.0]))
    pred = segment(heat, brain, threshold, cfg)
    assert np.array_equal(pred, ndimage.binary_dilation(lesion, ndimage.generate_binary_structure(3, 1)))
    assert curve.min() == SurfaceDistances(lesion).symmetric_msd(pred)
    # an independent check of the criterion at a few other candidates, with MONAI
    best = compute_average_surface_distance(
        torch.from_numpy(lesion[None, None].astype(np.float32)), torch.from_numpy(pred[None, None].astype(np.float32)),
        include_background=True, symmetric=True).item()
    def monai_symmetric(t: float) -> float:
        other = segment(heat, brain, t, cfg)
        return compute_average_surface_distance(
            torch.from_numpy(lesion[None, None].astype(np.float32)),
            torch.from_numpy(other[None, None].astype(np.float32)), include_background=True, symmetric=True).item()

    assert monai_symmetric(candidates[0]) > best  # background components still in
    assert monai_symmetric(candidates[50]) == pytest.approx(best)  # same segmentation: a tie


def test_fpr_thresholds_give_the_target_rate_on_their_fitting_data():
    values = np.random.default_rng(0).gamma(2.0, 1.0, 200_000).astype(np.float32)
    fitted = fpr_thresholds(values, (0.05, 0.10))
    for level, threshold in fitted.items():
        assert (values > threshold).mean() == pytest.approx(level, abs=1e-4)
    assert fitted[0.05] > fitted[0.10]


# ---------------------------------------------------------------- voxel-level metrics


def test_best_dice_matches_a_brute_force_sweep():
    rng = np.random.default_rng(5)
    shape = (12, 12, 12)
    brain = box(shape, (1, 1, 1), (10, 10, 10))
    gt = box(shape, (3, 3, 3), (4, 4, 4))
    heat = rng.normal(size=shape) + 1.5 * gt
    brute = max(
        2 * ((heat >= t) & brain & gt).sum() / (((heat >= t) & brain).sum() + (gt & brain).sum())
        for t in np.unique(heat[brain])
    )
    assert best_dice(heat, gt, brain) == pytest.approx(brute)
    assert best_dice(gt.astype(float), gt, brain) == 1.0


def test_voxel_auroc_auprc_known_values():
    shape = (10, 10, 10)
    brain = np.ones(shape, dtype=bool)
    gt = box(shape, (2, 2, 2), (3, 3, 3))
    assert voxel_auroc_auprc(gt.astype(float), gt, brain) == (1.0, 1.0)
    assert voxel_auroc_auprc(-gt.astype(float), gt, brain)[0] == 0.0
    assert all(math.isnan(v) for v in voxel_auroc_auprc(gt.astype(float), np.zeros_like(gt), brain))


def test_lesion_contrast_known_values():
    shape = (10, 10, 10)
    brain = np.ones(shape, dtype=bool)
    gt = box(shape, (2, 2, 2), (3, 3, 3))
    rest_values = np.random.default_rng(0).normal(1.0, 2.0, shape)
    heat = rest_values.copy()
    heat[gt] = 7.0
    rest = heat[~gt]
    assert lesion_contrast(heat, gt, brain) == pytest.approx((7.0 - rest.mean()) / rest.std())
    assert lesion_contrast(-heat, gt, brain) < 0
    assert math.isnan(lesion_contrast(heat, np.zeros_like(gt), brain))
    assert math.isnan(lesion_contrast(np.ones(shape), gt, brain))  # no healthy variation


# ---------------------------------------------------------------- config and names


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(InputError, match="bogus"):
        EvaluationConfig.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="component_connectivity_postprocess"):
        EvaluationConfig.from_dict({"component_connectivity_postprocess": 6})
    with pytest.raises(InputError, match="fpr_levels"):
        EvaluationConfig.from_dict({"fpr_levels": [0.0]})
    cfg = EvaluationConfig.from_dict({"fpr_levels": [0.05, 0.1], "oracle_percentiles": [90, 99.99]})
    assert cfg.protocols == ["oracle", "fpr05", "fpr10"]
    assert EvaluationConfig.from_dict(cfg.to_dict()) == cfg
    assert protocol_name(0.025) == "fpr2.5"


def test_method_order_follows_table1():
    assert method_order(["zscore", "flow_ablation", "spatial_msma", "ae"]) == [
        "ae", "spatial_msma", "zscore", "flow_ablation"]
