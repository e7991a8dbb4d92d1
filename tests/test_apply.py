"""Applying a trained model to new scans: the bundle's checks, the scan list, the native-space resampling, the
per-lesion table and the agreement summary. The whole apply path runs on the tiny workflow in test_workflow.py."""

import json
import shutil

import ants
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from spatial_msma.apply.agreement import agreement_summary, agreement_table
from spatial_msma.apply.bundle import CONFIG, FILES, MANIFEST, SETTING_KEYS, SETTINGS, open_bundle, write_bundle
from spatial_msma.apply.native import _one_id_per_cell, carry_labels, lesion_table, to_native
from spatial_msma.apply.scans import read_scan_list
from spatial_msma.evaluation.metrics import component_counts
from spatial_msma.evaluation.postprocess import label_components
from spatial_msma.io import InputError, read_labels, write_nifti
from spatial_msma.preprocess import PreprocessSettings, preprocess_in
from spatial_msma.synthetic import SyntheticSettings, _save_scan, make_subject


@pytest.fixture
def bundle(tmp_path):
    """A bundle of small stand-in files (the checks here read bytes and the manifest, not the models)."""
    sources = {}
    for key in FILES:
        sources[key] = tmp_path / "sources" / key
        sources[key].parent.mkdir(exist_ok=True)
        sources[key].write_bytes(key.encode() * 10)
    settings = {key: {} for key in SETTING_KEYS} | {"method": "spatial_msma"}
    write_bundle(sources, settings, {"seed": 3, "preprocess": {"voxel_mm": 4}}, tmp_path / "made" / "bundle")
    return tmp_path / "made" / "bundle"


def test_a_bundle_copied_elsewhere_opens(bundle, tmp_path):
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(bundle, moved)
    shutil.rmtree(bundle)
    opened = open_bundle(moved)
    manifest = json.loads((moved / MANIFEST).read_text())
    assert opened.file("flow_model") == moved / FILES["flow_model"]
    assert set(manifest["files"]) == {*FILES.values(), SETTINGS, CONFIG}
    assert manifest["config"]["seed"] == 3 and manifest["versions"]["spatial_msma"]
    assert manifest["template"]["name"].startswith("MNI ICBM152")


def _edit_manifest(bundle, edit):
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: (b / FILES["flow_model"]).unlink(), "file flow_model.pt is missing"),
    (lambda b: (b / FILES["thresholds"]).write_text("{}"), "thresholds.json differs from the one the manifest"),
    (lambda b: _edit_manifest(b, lambda m: m["versions"].update(spatial_msma="7.2.0")),
     "made by spatial_msma 7.2.0, this is spatial_msma"),
    (lambda b: _edit_manifest(b, lambda m: m.update(bundle_format=99)), "bundle format 99"),
    (lambda b: _edit_manifest(b, lambda m: m["template"].update(name="MNI Colin27", sha256="0" * 64)),
     "made on the template 'MNI Colin27'"),
    (lambda b: (b / MANIFEST).unlink(), "no manifest.json; not a model bundle"),
])
def test_a_bundle_that_does_not_match_is_refused_with_the_reason(bundle, damage, message):
    damage(bundle)
    with pytest.raises(InputError, match=message):
        open_bundle(bundle)


def test_scan_list_from_bids_and_from_a_table(tmp_path):
    for subject, modalities in (("sub-01", ("T1w", "T2w")), ("sub-02", ("T1w",))):
        anat = tmp_path / "bids" / subject / "anat"
        anat.mkdir(parents=True)
        for modality in modalities:
            (anat / f"{subject}_{modality}.nii.gz").write_bytes(b"")
    scans = read_scan_list(tmp_path / "bids")
    assert list(scans) == ["sub-01", "sub-02"]
    assert scans["sub-01"]["t2w"].endswith("sub-01_T2w.nii.gz") and scans["sub-02"]["t2w"] == ""
    table = tmp_path / "scans.tsv"
    table.write_text("subject\tt1w\tt2w\n07\tscans/a_T1w.nii.gz\t/abs/a_T2w.nii.gz\nsub-03\tb.nii\t\n")
    listed = read_scan_list(table)
    assert list(listed) == ["sub-03", "sub-07"]  # "sub-" added, in subject order
    assert listed["sub-07"] == {"t1w": str(tmp_path / "scans/a_T1w.nii.gz"), "t2w": "/abs/a_T2w.nii.gz"}
    assert listed["sub-03"]["t2w"] == ""
    table.write_text("subject\tt1w\n01\ta.nii\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['t2w'\]"):
        read_scan_list(table)
    table.write_text("subject\tt1w\tt2w\n01\ta\tb\nsub-01\tc\td\n")
    with pytest.raises(InputError, match="sub-01 is listed twice"):
        read_scan_list(table)


def test_lesion_table_volumes_centroids_and_scores():
    """One row per id (a lesion in two pieces is one row), largest first, the label image renumbered to match;
    an id without voxels gets no row."""
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    labels = np.zeros((20, 20, 20), np.int32)
    heat = np.zeros((20, 20, 20), np.float32)
    labels[2:4, 2:4, 2:4] = 3  # 8 voxels
    heat[2:4, 2:4, 2:4] = 1.0
    heat[2, 2, 2] = 5.0
    labels[10:13, 10:13, 10:13] = 7  # 27 voxels: the first row
    heat[10:13, 10:13, 10:13] = 2.0
    labels[15, 15, 15] = labels[17, 17, 17] = 9  # one lesion, its two voxels apart on this grid
    table, numbered = lesion_table(labels, heat, affine, threshold=0.5, protocol="fpr05")
    assert table["lesion"].tolist() == [1, 2, 3]
    assert table["volume_mm3"].tolist() == [27 * 8.0, 8 * 8.0, 2 * 8.0]
    assert table.loc[0, ["x_mm", "y_mm", "z_mm"]].tolist() == [90 - 2 * 11, -126 + 2 * 11, -72 + 2 * 11]
    assert table.loc[2, ["x_mm", "y_mm", "z_mm"]].tolist() == [90 - 2 * 16, -126 + 2 * 16, -72 + 2 * 16]
    assert table.loc[1, "peak_score"] == 5.0 and table.loc[1, "mean_score"] == pytest.approx((5 + 7) / 8)
    assert (table["threshold"] == 0.5).all() and (table["protocol"] == "fpr05").all()
    assert (numbered[labels == 7] == 1).all() and (numbered[labels == 3] == 2).all()
    assert (numbered[labels == 9] == 3).all() and ((numbered > 0) == (labels > 0)).all()
    empty, none = lesion_table(np.zeros_like(labels), heat, affine, 0.5, "fpr05")
    assert empty.empty and not none.any()


COARSE = np.diag([4.0, 4.0, 4.0, 1.0])
COARSE[:3, 3] = -40.0


def _finer_rotated_grid(tmp_path):
    """A 1 mm grid rotated by 20 degrees against the 4 mm grid ``COARSE`` (20^3 voxels) and covering it, and
    an identity transform: (grid affine, fixed image, transforms, invert) for :func:`to_native`."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    fine = np.eye(4)
    fine[:3, :3] = rotation
    fine[:3, 3] = -rotation @ np.full(3, 40.0) + np.array([-2.0, 3.0, 0.5])
    write_nifti(np.zeros((80, 80, 80), np.float32), fine, tmp_path / "fine.nii.gz")
    identity = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(identity, str(tmp_path / "identity.mat"))
    return fine, ants.image_read(str(tmp_path / "fine.nii.gz")), [str(tmp_path / "identity.mat")], [False]


def test_a_lesion_touching_diagonally_on_the_coarse_grid_stays_one_lesion_on_a_finer_rotated_grid(tmp_path):
    """Two 4 mm voxels that touch only at an edge are one lesion (26-connectivity). Carried as a mask onto a
    1 mm grid rotated against the 4 mm one, they come apart (relabelling there finds two); carried as a label
    image, their voxels keep the one id, so the table has one row and the counting one lesion, found by a
    prediction that hits either piece."""
    coarse = COARSE
    mask = np.zeros((20, 20, 20), bool)
    mask[9, 9, 9] = mask[10, 10, 9] = True  # edge neighbours
    labels, n = label_components(mask, 3)
    assert n == 1
    fine, fixed, transforms, invert = _finer_rotated_grid(tmp_path)
    carried_mask = to_native(mask, coarse, fixed, transforms, invert, "genericLabel") > 0.5
    assert label_components(carried_mask, 3)[1] == 2  # the mask comes apart on the finer grid
    carried = carry_labels(labels, coarse, fixed, transforms, invert)
    assert carried.dtype == np.int32 and set(np.unique(carried)) == {0, 1}
    assert ((carried > 0) == carried_mask).all()  # the same voxels as the carried mask
    table, numbered = lesion_table(carried, np.ones(carried.shape, np.float32), fine, 0.5, "fpr05")
    assert len(table) == 1 and table.loc[0, "voxels"] == carried_mask.sum()
    piece = label_components(carried_mask, 3)[0] == 1  # a prediction that hits one of the two pieces
    counts = component_counts(numbered, piece.astype(np.int32), 1.0, labelled=True)
    assert (counts.gt_detected, counts.gt_missed, counts.pred_tp, counts.pred_fp) == (1, 0, 1, 0)
    relabelled = component_counts(carried_mask, piece, 1.0, 3)
    assert (relabelled.gt_detected, relabelled.gt_missed) == (1, 1)  # what counting the mask would say
    write_nifti(numbered, fine, tmp_path / "labels.nii.gz")  # an integer NIfTI, read back as it was
    assert nib.load(tmp_path / "labels.nii.gz").get_data_dtype() == np.int32
    assert (read_labels(tmp_path / "labels.nii.gz")[0] == numbered).all()


@pytest.mark.parametrize("connectivity", [3, 1])
def test_carried_labels_are_what_generic_label_interpolation_gives(tmp_path, connectivity):
    """Many lesions at once: the fast path (26-connected components, one id per interpolation cell) and the
    fallback (face-connected ids that share cells) both give ANTs' genericLabel result voxel for voxel."""
    labels, n = label_components(np.random.default_rng(connectivity).random((20, 20, 20)) < 0.08, connectivity)
    assert _one_id_per_cell(labels) == (connectivity == 3)  # which path runs
    _, fixed, transforms, invert = _finer_rotated_grid(tmp_path)
    expected = np.rint(to_native(labels, COARSE, fixed, transforms, invert, "genericLabel")).astype(np.int32)
    carried = carry_labels(labels, COARSE, fixed, transforms, invert)
    assert n > 50 and (carried == expected).all() and len(np.unique(carried)) > 50


def test_template_maps_land_on_the_scans_own_grid_and_orientation(tmp_path):
    """A head stored left-right flipped (an LAS voxel order) is registered; the template-space T1 channel pulled
    back through the inverted registration (inside the brain mask pulled back the same way) matches the scan
    voxel for voxel, and better than its mirror image does."""
    subject = make_subject(5, seed=3, settings=SyntheticSettings(voxel_mm=2.0, rotation_deg=6, translation_mm=6))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = subject["t1"].shape[0] - 1
    affine = subject["affine"] @ flip  # same head, the first voxel axis runs right-to-left
    for name in ("t1", "t2"):
        _save_scan(subject[name][::-1], affine, tmp_path / f"{name}.nii.gz")
    prep = preprocess_in(tmp_path, tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz",
                         PreprocessSettings(voxel_mm=4.0, registration_mm=4.0))
    t1_back = to_native(prep.image[0], prep.affine, prep.t1, prep.from_template, prep.from_template_invert, "linear")
    brain_back = to_native(prep.brain, prep.affine, prep.t1, prep.from_template, prep.from_template_invert,
                           "genericLabel") > 0.5
    native = np.asarray(nib.load(tmp_path / "t1.nii.gz").dataobj, dtype=np.float32)
    assert t1_back.shape == native.shape
    inside = brain_back & (native > 0)
    assert np.corrcoef(t1_back[inside], native[inside])[0, 1] > 0.8
    mirrored = np.corrcoef(t1_back[::-1][inside], native[inside])[0, 1]  # the wrong voxel order fits worse
    assert mirrored < np.corrcoef(t1_back[inside], native[inside])[0, 1] - 0.1


def test_agreement_counts_native_components_beside_the_template_figures(tmp_path):
    """Counted by the ids of the label images: a reference lesion in two pieces is one lesion, found when
    either piece is hit."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    reference = np.zeros((30, 30, 30), np.int32)
    reference[2:6, 2:6, 2:6] = 1
    reference[20:24, 20:24, 20:24] = 2
    reference[26:28, 2:4, 2:4] = 2  # the second lesion's other piece
    prediction = np.zeros_like(reference)
    prediction[3:5, 3:5, 3:5] = 1  # finds the first lesion
    prediction[10:12, 10:12, 10:12] = 2  # and a false positive
    write_nifti(reference, affine, tmp_path / "ref.nii.gz")
    write_nifti(prediction, affine, tmp_path / "pred.nii.gz")
    pd.DataFrame({"volume": ["sub-1_draw-1", "sub-2_draw-1"], "tpr": [0.5, 1.0], "ppv": [0.5, 1.0],
                  "n_gt_components": [2, 1], "n_pred_components": [2, 1]}).to_csv(tmp_path / "m.csv", index=False)
    table = agreement_table(["sub-1_draw-1", "sub-2_draw-1"], [str(tmp_path / "pred.nii.gz"), ""],
                            [tmp_path / "ref.nii.gz", tmp_path / "ref.nii.gz"], tmp_path / "m.csv")
    first = table.iloc[0]
    assert (first["native_tpr"], first["native_ppv"], first["native_gt"], first["native_pred"]) == (0.5, 0.5, 2, 2)
    prediction[26, 2, 2] = 3  # a voxel of the second lesion's other piece: found
    write_nifti(prediction, affine, tmp_path / "pred.nii.gz")
    again = agreement_table(["sub-1_draw-1"], [str(tmp_path / "pred.nii.gz")], [tmp_path / "ref.nii.gz"],
                            tmp_path / "m.csv").iloc[0]
    assert (again["native_tpr"], again["native_ppv"], again["native_gt"], again["native_pred"]) == (1.0, 2 / 3, 2, 3)
    assert np.isnan(table.iloc[1]["native_tpr"])  # refused: no prediction
    summary = agreement_summary(table).set_index("metric")
    assert summary.loc["tpr", "n_volumes"] == 1 and summary.loc["tpr", "n_refused"] == 1
    assert summary.loc["tpr", "difference"] == 0.0 and summary.loc["tpr", "within_tolerance"]
    table.loc[0, "native_ppv"] = 0.4
    assert not agreement_summary(table).set_index("metric").loc["ppv", "within_tolerance"]
