"""End-to-end evaluation on tiny NIfTI files: thresholds JSON, per-subject CSVs, tables, figures, scripts."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from snakemake.iocontainers import Namedlist

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.figures import make_figures
from spatial_msma.evaluation.pipeline import evaluate_method, fit_method_thresholds
from spatial_msma.evaluation.tables import write_tables
from spatial_msma.io import InputError, write_channels, write_nifti
from spatial_msma.lesions.volumes import subject_of

SHAPE = (24, 28, 20)
AFFINE = np.array([[4.0, 0, 0, -48], [0, 4.0, 0, -60], [0, 0, 4.0, -40], [0, 0, 0, 1]])
METHODS = {"spatial_msma": 4.0, "zscore": 1.5}  # lesion contrast in each method's synthetic heatmap
SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def _brain() -> np.ndarray:
    g = np.indices(SHAPE).astype(float)
    c = (np.array(SHAPE) / 2.0)[:, None, None, None]
    return (((g - c) / (c * 0.85)) ** 2).sum(0) < 1.0


def _write_subject(root: Path, subject: str, heat_set: str, lesioned: bool, rng) -> None:
    brain = _brain()
    lesion = np.zeros(SHAPE, dtype=bool)
    if lesioned:
        for start in ((7, 8, 8), (14, 16, 10)):
            lesion[tuple(slice(s, s + 3) for s in start)] = True
        lesion[10, 20, 12] = True  # a one-voxel lesion (64 mm^3): the smallest size bin
    t1 = np.where(brain, rng.uniform(-0.2, 0.2, SHAPE) - 0.5 * lesion, -1.0)
    t2 = np.where(brain, rng.uniform(-0.2, 0.2, SHAPE) + 0.6 * lesion, -1.0)
    write_channels(np.stack([t1, t2]), AFFINE, root / f"lesions/{subject}_image.nii.gz")
    write_nifti(lesion, AFFINE, root / f"lesions/{subject}_mask.nii.gz")
    write_nifti(brain, AFFINE, root / f"cropped/{subject_of(subject)}_brainmask.nii.gz")
    for method, contrast in METHODS.items():
        heat = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0) * 3 + contrast * lesion
        write_nifti(np.where(brain, heat, 0.0), AFFINE, root / f"heatmaps/{method}/{heat_set}/{subject}.nii.gz")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(7)
    # Two lesion draws of sub-L1 (the same brain mask), one of sub-L3.
    sets = {"test_lesioned": ["sub-L1_draw-1", "sub-L1_draw-2", "sub-L3_draw-1"], "val": ["sub-V1", "sub-V2"],
            "test": ["sub-T1", "sub-T2"]}
    for heat_set, subjects in sets.items():
        for s in subjects:
            _write_subject(root, s, heat_set, heat_set == "test_lesioned", rng)

    def heat(method, heat_set):
        return [root / f"heatmaps/{method}/{heat_set}/{s}.nii.gz" for s in sets[heat_set]]

    def brains(heat_set):
        return [root / f"cropped/{subject_of(s)}_brainmask.nii.gz" for s in sets[heat_set]]

    lesioned = sets["test_lesioned"]
    return SimpleNamespace(
        root=root, sets=sets, heat=heat, brains=brains,
        masks=[root / f"lesions/{s}_mask.nii.gz" for s in lesioned],
        images=[root / f"lesions/{s}_image.nii.gz" for s in lesioned],
        cfg=EvaluationConfig(oracle_n_thresholds=30, froc_n_thresholds=8, figure_subjects=2),
    )


@pytest.fixture(scope="module")
def fitted(tree) -> dict[str, Path]:
    out = {}
    for method in METHODS:
        out[method] = tree.root / f"thresholds/{method}.json"
        healthy = {s: (tree.heat(method, s), tree.brains(s)) for s in ("val", "test")}
        fit_method_thresholds(healthy, method, tree.cfg, out[method])
    return out


@pytest.fixture(scope="module")
def metrics(tree, fitted) -> list[Path]:
    paths = []
    for method in METHODS:
        for protocol in tree.cfg.protocols:
            path = tree.root / f"metrics/{method}_{protocol}.csv"
            evaluate_method(tree.heat(method, "test_lesioned"), tree.masks, tree.brains("test_lesioned"), method,
                            protocol, tree.cfg, path, fitted[method])
            paths.append(path)
    return paths


def test_thresholds_json_reaches_its_fpr_on_the_healthy_data(fitted):
    data = json.loads(fitted["zscore"].read_text())
    assert data["method"] == "zscore"
    assert set(data["protocols"]) == {"fpr05", "fpr10"}
    for entry in data["protocols"].values():
        assert entry["fpr_achieved"] == pytest.approx(entry["fpr_target"], abs=0.002)
        assert entry["fp_components_per_lesion_free_test_image"] >= 0
        # realised on the lesion-free test images, in the region the threshold was fitted in
        assert entry["fpr_lesion_free_test"] == pytest.approx(entry["fpr_target"], abs=0.03)
        assert 0.0 <= entry["fpr_lesion_free_test_segmented"] <= 1.0
    assert data["protocols"]["fpr05"]["threshold"] > data["protocols"]["fpr10"]["threshold"]
    assert set(data["image_scores"]) == {"val", "test"} and len(data["image_scores"]["test"]) == 2


def test_per_subject_csv_has_one_row_per_subject_and_the_fixed_threshold(tree, fitted, metrics):
    frame = pd.read_csv(tree.root / "metrics/spatial_msma_fpr05.csv")
    assert list(frame["volume"]) == tree.sets["test_lesioned"]
    assert list(frame["subject"]) == ["sub-L1", "sub-L1", "sub-L3"] and list(frame["draw"]) == [1, 2, 1]
    threshold = json.loads(fitted["spatial_msma"].read_text())["protocols"]["fpr05"]["threshold"]
    assert np.allclose(frame["threshold"], threshold)
    oracle = pd.read_csv(tree.root / "metrics/spatial_msma_oracle.csv")
    assert oracle["threshold"].nunique() > 1  # one threshold per subject
    # The 1-voxel lesion is too small to find (min_lesion_voxels 3, the authors' rule) but stays in its bin.
    assert (oracle["n_gt_components"] == 2).all() and (oracle["n_small_lesions_left_out"] == 1).all()
    assert (oracle["bin_lt100_tp"] + oracle["bin_lt100_fn"] == 1).all()  # the 1-voxel lesion, 64 mm^3
    assert (oracle["bin_1000_5000_tp"] + oracle["bin_1000_5000_fn"] == 2).all()  # 27 voxels = 1728 mm^3
    assert (oracle["gt_detected"] >= 2).all() and oracle["tpr"].between(0.66, 1.0).all()
    assert np.allclose(oracle["hd99_mm"], 4.0 * oracle["hd99"])


def test_evaluation_is_deterministic(tree, fitted, metrics):
    again = tree.root / "again.csv"
    evaluate_method(tree.heat("zscore", "test_lesioned"), tree.masks, tree.brains("test_lesioned"), "zscore",
                    "oracle", tree.cfg, again, fitted["zscore"])
    assert again.read_bytes() == (tree.root / "metrics/zscore_oracle.csv").read_bytes()


def test_unmatched_inputs_name_the_subject(tree, fitted):
    with pytest.raises(InputError, match="sub-L3_draw-1: no lesion mask"):
        evaluate_method(tree.heat("zscore", "test_lesioned"), tree.masks[:2], tree.brains("test_lesioned"), "zscore",
                        "oracle", tree.cfg, tree.root / "bad.csv")
    with pytest.raises(InputError, match="fitted for method 'zscore'"):
        evaluate_method(tree.heat("spatial_msma", "test_lesioned"), tree.masks, tree.brains("test_lesioned"),
                        "spatial_msma", "fpr05", tree.cfg, tree.root / "bad.csv", fitted["zscore"])
    with pytest.raises(InputError, match="needs the method's thresholds"):
        evaluate_method(tree.heat("zscore", "test_lesioned"), tree.masks, tree.brains("test_lesioned"), "zscore",
                        "fpr10", tree.cfg, tree.root / "bad.csv")


def test_tables_in_table1_order_with_paper_values_and_notes(tree, fitted, metrics):
    out = {f"{p}_{k}": tree.root / f"tables/{p}.{k}" for p in tree.cfg.protocols for k in ("csv", "md")}
    out["size_bins_csv"] = tree.root / "tables/size_bins.csv"
    summaries = write_tables(metrics, list(fitted.values()), out, tree.cfg)
    table = pd.read_csv(out["oracle_csv"])
    assert list(table["name"]) == ["Spatial-MSMA", "Intensity z-score"]
    assert (table["n"] == 3).all() and (table["missed"] == 0).all()
    per_subject = pd.read_csv(tree.root / "metrics/zscore_oracle.csv")
    row = table.set_index("method").loc["zscore"]
    assert row["hd99_mean"] == pytest.approx(per_subject["hd99"].mean())
    # SE over subjects: sub-L1's two draws are averaged first, then the SD of the 2 subject means / sqrt(2)
    subject_means = per_subject.groupby("subject")["hd99"].mean()
    assert row["hd99_se"] == pytest.approx(subject_means.std(ddof=1) / np.sqrt(2))
    assert 0.0 <= row["image_auroc"] <= 1.0
    md = out["oracle_md"].read_text()
    assert "7.05 ± 0.61" in md and "voxels" in md and "Protocol **oracle**" in md
    assert "floor every learned method must clear" in md
    assert "Not evaluated" in md and "AE" in md and "GradCAM-MSMA" in md
    assert "Protocol **fpr05** (deployable)" in out["fpr05_md"].read_text()
    assert "3 test volumes (2 subjects" in md and "eroded by 2 voxels" in md
    assert "3 of 9 simulated components" in md  # each of the 3 volumes: 2 cubes and the 1-voxel lesion
    assert "healthy FPR (raw)" in out["fpr05_md"].read_text()
    bins = pd.read_csv(out["size_bins_csv"])
    assert set(bins["protocol"]) == set(tree.cfg.protocols)
    assert set(summaries) == set(tree.cfg.protocols)


def test_empty_prediction_is_reported_as_missed_in_the_table(tree, fitted, metrics):
    frame = pd.read_csv(tree.root / "metrics/zscore_oracle.csv")
    frame.loc[0, ["hd99", "msd", "ppv"]] = np.nan
    frame.loc[0, "missed"] = 1
    edited = tree.root / "edited/zscore_oracle.csv"
    edited.parent.mkdir(exist_ok=True)
    frame.to_csv(edited, index=False)
    out = {f"{p}_{k}": tree.root / f"edited/{p}.{k}" for p in tree.cfg.protocols for k in ("csv", "md")}
    out["size_bins_csv"] = tree.root / "edited/bins.csv"
    table = write_tables([edited], [], out, tree.cfg)["oracle"].set_index("method")
    assert table.loc["zscore", "n"] == 3 and table.loc["zscore", "missed"] == 1
    assert table.loc["zscore", "hd99_mean"] == pytest.approx(frame["hd99"].iloc[1:].mean())


def test_figures_are_written_and_subject_choice_is_seeded(tree, fitted):
    heatmaps = [p for m in METHODS for p in tree.heat(m, "test_lesioned")]
    args = (heatmaps, tree.images, tree.masks, tree.brains("test_lesioned"), list(fitted.values()))
    chosen = make_figures(*args, tree.root / "fig/montage.png", tree.root / "fig/froc.png", tree.cfg, seed=3)
    again = make_figures(*args, tree.root / "fig/m2.png", tree.root / "fig/f2.png", tree.cfg, seed=3)
    assert chosen == again and len(chosen) == 2
    for name in ("montage.png", "froc.png"):
        assert (tree.root / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _snakemake(tmp: Path, name: str, inputs: dict, outputs: dict | list, params: dict) -> SimpleNamespace:
    output = Namedlist(fromdict=outputs) if isinstance(outputs, dict) else Namedlist(outputs)
    return SimpleNamespace(input=Namedlist(fromdict=inputs), output=output, params=Namedlist(fromdict=params),
                           log=[str(tmp / f"{name}.log")], threads=1)


def test_workflow_scripts_run_on_snakemake_style_arguments(tree, tmp_path):
    cfg = tree.cfg.to_dict()
    method = "zscore"
    thresholds = tmp_path / "thresholds.json"
    runs = [
        ("evaluation_thresholds", {"val_brainmasks": tree.brains("val"), "test_brainmasks": tree.brains("test")},
         [str(thresholds)], {"cfg": cfg, "method": method, "val_heatmaps": tree.heat(method, "val"),
                             "test_heatmaps": tree.heat(method, "test")}),
        ("evaluate", {"masks": tree.masks, "brainmasks": tree.brains("test_lesioned"), "thresholds": str(thresholds)},
         [str(tmp_path / f"{method}_fpr10.csv")],
         {"cfg": cfg, "method": method, "protocol": "fpr10", "heatmaps": tree.heat(method, "test_lesioned")}),
        ("table1", {"metrics": [str(tmp_path / f"{method}_fpr10.csv")], "thresholds": [str(thresholds)]},
         {**{f"{p}_{k}": str(tmp_path / f"t_{p}.{k}") for p in tree.cfg.protocols for k in ("csv", "md")},
          "size_bins_csv": str(tmp_path / "bins.csv")}, {"cfg": cfg}),
        ("evaluation_figures", {"images": tree.images, "masks": tree.masks,
                                "brainmasks": tree.brains("test_lesioned"), "thresholds": [str(thresholds)]},
         {"montage": str(tmp_path / "montage.png"), "froc": str(tmp_path / "froc.png")},
         {"cfg": cfg, "seed": 1, "heatmaps": tree.heat(method, "test_lesioned")}),
    ]
    for name, inputs, outputs, params in runs:
        smk = _snakemake(tmp_path, name, inputs, outputs, params)
        runpy.run_path(str(SCRIPTS / f"{name}.py"), init_globals={"snakemake": smk}, run_name="__main__")
        for path in (outputs.values() if isinstance(outputs, dict) else outputs):
            assert Path(path).stat().st_size > 0, f"{name} did not write {path}"
    table = pd.read_csv(tmp_path / "t_fpr10.csv")
    assert list(table["method"]) == [method] and table.loc[0, "n"] == 3
