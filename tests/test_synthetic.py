"""The built-in cohort: seeded (same seed, same bytes), anatomically varied, with the planted exclusions; the
label-map heads: seeded, balanced over the anatomies, with the documented contrast."""

import hashlib
import json
from collections import Counter

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from spatial_msma.anatomies import anatomy_files, intensity_tables, tissue_index
from spatial_msma.cohort import find_scans
from spatial_msma.synthetic import (
    SyntheticSettings,
    _template_extras,
    make_subject,
    subject_anatomies,
    write_cohort,
)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_regardless_of_threads(tmp_path):
    settings = SyntheticSettings(n_subjects=6, voxel_mm=4.0, broken=("missing_t2w", "truncated_t1w"))
    write_cohort(tmp_path / "a", seed=5, settings=settings, threads=1)
    write_cohort(tmp_path / "b", seed=5, settings=settings, threads=2)
    write_cohort(tmp_path / "c", seed=6, settings=settings, threads=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_planted_exclusions_are_in_the_files(tmp_path):
    settings = SyntheticSettings(n_subjects=12, voxel_mm=4.0, fraction_above_cutoff=0.25)
    write_cohort(tmp_path, seed=1, settings=settings)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert len(truth["above_cutoff"]) == 3 and len(truth["broken"]) == 4
    cbcl = pd.read_csv(tmp_path / "phenotype" / "mh_p_cbcl.csv")
    baseline = cbcl[cbcl.eventname == "baseline_year_1_arm_1"].set_index("src_subject_id")
    scores = baseline.filter(like="cbcl_scr_syn_")
    above = sorted("sub-" + s.replace("_", "") for s in scores.index[(scores > 66).any(axis=1)])
    assert above == truth["above_cutoff"]
    assert scores.isna().to_numpy().sum() == 1
    missing_t2w = [s for s, kind in truth["broken"].items() if kind == "missing_t2w"][0]
    assert not list((tmp_path / missing_t2w).rglob("*_T2w.nii.gz"))
    assert len(list(tmp_path.rglob("*_T1w.nii.gz"))) == 12


def test_anatomy_really_varies():
    """Ventricle volume (bright T2 near the ventricles) and the pose differ between subjects by design."""
    settings = SyntheticSettings(voxel_mm=3.0)
    _, centre = _template_extras()
    volumes, t1s = [], []
    for index in range(4):
        subject = make_subject(index, seed=0, settings=settings)
        shape = subject["t2"].shape
        world = np.indices(shape).reshape(3, -1).T * 3.0 + subject["affine"][:3, 3]
        near = (np.linalg.norm((world - centre) / [1.0, 1.3, 0.8], axis=1) < 30).reshape(shape)
        volumes.append(((subject["t2"] > 0.75) & near).sum() * 27 / 1000)
        t1s.append(subject["t1"])
    assert np.std(volumes) / np.mean(volumes) > 0.15, volumes
    # Same template, different subjects: voxelwise the T1 images disagree substantially.
    corr = np.corrcoef(t1s[0].ravel(), t1s[1].ravel())[0, 1]
    assert 0.5 < corr < 0.95


# ------------------------------------------------------------------------------ the label-map anatomies

LABELMAPS = SyntheticSettings(anatomy="labelmaps", voxel_mm=4.0)


def test_labelmap_subjects_same_seed_same_bytes():
    for index in (0, 1):
        first, again = make_subject(index, 5, LABELMAPS), make_subject(index, 5, LABELMAPS)
        for key in ("t1", "t2", "labels", "affine"):
            assert first[key].tobytes() == again[key].tobytes(), (index, key)
        assert first["labels"].dtype == np.int16 and first["t1"].dtype == np.float32
    assert make_subject(0, 6, LABELMAPS)["t1"].tobytes() != make_subject(0, 5, LABELMAPS)["t1"].tobytes()


def test_labelmap_cohort_files_are_seeded_and_name_anatomies(tmp_path):
    """Same bytes whatever the worker count; participants.tsv names the anatomy; label maps are a derivative
    the scan finder does not see."""
    settings = SyntheticSettings(n_subjects=12, anatomy="labelmaps", voxel_mm=4.0, broken=("missing_t2w",))
    write_cohort(tmp_path / "a", seed=5, settings=settings, threads=1)
    write_cohort(tmp_path / "b", seed=5, settings=settings, threads=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    participants = pd.read_csv(tmp_path / "a" / "participants.tsv", sep="\t")
    assert participants.anatomy.nunique() == 12 and participants.anatomy.str.fullmatch(r"seg\d\d").all()
    assert len(list((tmp_path / "a" / "derivatives" / "synthetic-labels").rglob("*_dseg.nii.gz"))) == 12
    assert set(find_scans(tmp_path / "a")) == set(participants.participant_id)


def test_anatomies_are_used_in_turn():
    """Subject i is made from anatomy perm[i % 20]: each of the 20 makes n_subjects / 20 subjects."""
    names = subject_anatomies(42, SyntheticSettings(n_subjects=60, anatomy="labelmaps"))
    assert sorted(Counter(names).values()) == [3] * 20 and names[:20] == names[20:40]
    assert subject_anatomies(43, SyntheticSettings(n_subjects=60, anatomy="labelmaps")) != names
    assert subject_anatomies(42, SyntheticSettings(n_subjects=12)) == ["mni152"] * 12


def test_every_label_of_the_shipped_maps_has_an_intensity():
    covered = set(np.flatnonzero(tissue_index()).tolist())
    for path in anatomy_files():
        present = np.flatnonzero(np.bincount(np.asarray(nib.load(path).dataobj, np.int16).ravel()))
        assert set(present.tolist()) - {0} <= covered, path.name


def test_intensity_model_contrast_ordering():
    """The documented model: CSF dark on T1w and bright on T2w, white matter the reverse, cortex between,
    deep grey matter near white matter on T1w, skull dark on both, scalp fat bright on T1w."""
    names, means = intensity_tables()
    t1, t2 = ({name.split(" (")[0].split(",")[0]: m[c] for name, m in zip(names, means, strict=True)} for c in (0, 1))
    assert t1["CSF"] < t1["cerebral cortex"] < t1["putamen"] < t1["thalamus"] < t1["cerebral white matter"]
    assert t2["CSF"] > t2["cerebral cortex"] > t2["thalamus"] > t2["cerebral white matter"]
    assert t1["pallidum"] - t1["cerebral cortex"] > 2 * (t1["cerebral white matter"] - t1["pallidum"])
    assert max(t1["skull"], t2["skull"]) < 0.1
    assert t1["skin and subcutaneous fat"] > t1["cerebral cortex"] and t2["eyes"] > 0.9


def test_generated_contrast_and_lesion_labels_as_white_matter():
    """On a generated head (the anatomy with the most lesion voxels): median T1w WM > GM > CSF, T2w the
    reverse; voxels labelled 25/57 ('lesion') look like white matter, not like a lesion."""
    lesioned = [p for p in anatomy_files() if p.name == "training_seg_15.nii.gz"]
    subject = make_subject(0, 3, SyntheticSettings(anatomy="labelmaps", voxel_mm=2.0), anatomies=lesioned)
    assert subject["anatomy"] == "seg15"
    labels = subject["labels"]
    core = ndimage.binary_erosion(labels > 0, iterations=1)  # away from partial volume with the background
    region = {"wm": np.isin(labels, (2, 41)), "gm": np.isin(labels, (3, 42)), "csf": np.isin(labels, (4, 43)),
              "lesion": np.isin(labels, (25, 57))}
    region = {k: v & core & ndimage.binary_erosion(v) for k, v in region.items()}
    assert region["lesion"].sum() > 200
    t1, t2 = ({k: float(np.median(subject[c][v])) for k, v in region.items()} for c in ("t1", "t2"))
    assert t1["wm"] > t1["gm"] > t1["csf"] and t2["wm"] < t2["gm"] < t2["csf"]
    assert abs(t1["lesion"] - t1["wm"]) < 0.3 * (t1["wm"] - t1["gm"])
    assert abs(t2["lesion"] - t2["wm"]) < 0.3 * (t2["gm"] - t2["wm"])
