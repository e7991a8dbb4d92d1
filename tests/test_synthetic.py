"""The built-in cohort: seeded (same seed, same bytes), anatomically varied, with the planted exclusions."""

import hashlib
import json

import numpy as np
import pandas as pd

from spatial_msma.synthetic import SyntheticSettings, _template_extras, make_subject, write_cohort


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
