"""Settings of the reconstruction baselines (AE, Inpaint, Restoration) chosen on the LESIONED VALIDATION split.

    .venv/bin/python benchmarks/baseline_search.py RUN_DIR                       # the default grid, every method
    .venv/bin/python benchmarks/baseline_search.py RUN_DIR --methods inpaint --out /tmp/inpaint_search.csv

RUN_DIR is a finished workflow directory (its score model, AE, crops, splits and lesioned validation volumes).
For each method and each setting of its grid (``GRIDS``: sampler runs, start time, cube size, on top of
the config's sections, ``--config``), the healthy estimates of the first ``reference_images`` training
subjects give the residual reference, and the estimates of every lesioned validation volume give both
heatmap forms (raw and standardised, :mod:`spatial_msma.baselines.residual`). Each heatmap is scored in the
evaluated region (brain eroded by ``evaluation.erosion_radius``, ground-truth components under
``min_lesion_voxels`` dropped) by voxel AUROC, best Dice over thresholds and lesion contrast; a row is the
mean ± SE over the volumes, with the seconds per volume of the estimate. Test lesions are never read. The
chosen setting: the highest voxel AUROC per method and form (ties: the cheaper).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from spatial_msma import io
from spatial_msma.baselines.estimators import load_estimator
from spatial_msma.baselines.residual import fit_reference, raw_heatmap, standardised_heatmap
from spatial_msma.detector import read_case
from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import best_dice, lesion_contrast, voxel_auroc_auprc
from spatial_msma.evaluation.postprocess import erode, prepare_reference
from spatial_msma.lesions.volumes import volume_ids

#: The searched settings per method (each a dict of overrides of the method's config section), sized to run
#: beside the workflow on 2 cores: the cube size and start time at the default's 2 runs, and one setting with
#: twice the runs (twice the cost) to see what more averaging buys. ``--grid`` narrows it to some entries.
GRIDS: dict[str, list[dict[str, object]]] = {
    "ae": [{}],
    "inpaint": [{"runs": 2, "t_start": 0.6, "cube_size": 2}, {"runs": 2, "t_start": 0.6, "cube_size": 3},
                {"runs": 2, "t_start": 0.4, "cube_size": 2}, {"runs": 4, "t_start": 0.6, "cube_size": 2}],
    "restoration": [{"runs": 2, "t_start": 0.1}, {"runs": 2, "t_start": 0.25}, {"runs": 2, "t_start": 0.4},
                    {"runs": 4, "t_start": 0.25}],
}


def split(run: Path, name: str) -> list[str]:
    return (run / "results" / "cohort" / f"{name}.txt").read_text().split()


def estimates(estimator, paths: list[tuple[Path, Path]]) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Images and their healthy estimates, and the median seconds per estimate."""
    images, outs, seconds = [], [], []
    for image_path, mask_path in paths:
        case = read_case(image_path, mask_path)
        start = time.perf_counter()
        outs.append(estimator.estimate(case))
        seconds.append(time.perf_counter() - start)
        images.append(case.image)
    return images, outs, float(np.median(seconds))


def score(heatmap: np.ndarray, lesion: np.ndarray, region: np.ndarray, cfg: EvaluationConfig) -> dict[str, float]:
    reference = prepare_reference(lesion, region, cfg)
    auroc, _ = voxel_auroc_auprc(heatmap, reference, region)
    return {"auroc": auroc, "best_dice": best_dice(heatmap, reference, region),
            "contrast": lesion_contrast(heatmap, reference, region)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished workflow directory")
    parser.add_argument("--methods", nargs="+", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "config" / "config.yaml")
    parser.add_argument("--grid", type=int, nargs="+", default=None, help="indices into each method's grid")
    parser.add_argument("--reference-images", type=int, default=10)
    parser.add_argument("--sd-floor", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="CSV of every row (default: print only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(args.config.read_text()) or {}
    eval_cfg = EvaluationConfig.from_dict(cfg.get("evaluation"))
    results = args.run / "results"
    cropped = results / "cropped"
    train = [(cropped / f"{s}.nii.gz", cropped / f"{s}_brainmask.nii.gz")
             for s in split(args.run, "train")[: args.reference_images]]
    val_ids = volume_ids(split(args.run, "val"), (cfg.get("lesion_draws") or {}).get("val", 1))
    val = [(results / "lesions" / f"{v}_image.nii.gz", cropped / f"{v.split('_draw-')[0]}_brainmask.nii.gz")
           for v in val_ids]
    lesions = [io.read_mask(results / "lesions" / f"{v}_mask.nii.gz")[0] for v in val_ids]
    regions = [erode(io.read_mask(mask)[0], eval_cfg.erosion_radius) for _, mask in val]
    print(f"{len(train)} reference training images, {len(val)} lesioned validation volumes from {args.run}",
          flush=True)
    rows = []
    for method in args.methods:
        model = results / "models" / ("ae" if method == "ae" else "score") / "model.pt"
        grid = GRIDS[method] if args.grid is None else [GRIDS[method][i] for i in args.grid if i < len(GRIDS[method])]
        for overrides in grid:
            section = {**(cfg.get(method) or {}), **overrides, "device": "cpu"}
            estimator = load_estimator(method, model, section if method != "ae" else {"device": "cpu"}, args.seed)
            reference = fit_reference(estimator, [functools.partial(read_case, image, mask) for image, mask in train],
                                      args.sd_floor)
            val_images, val_estimates, seconds = estimates(estimator, val)
            for form in ("raw", "standardised"):
                scores = []
                for image, estimate, lesion, region in zip(val_images, val_estimates, lesions, regions, strict=True):
                    heat = raw_heatmap(image, estimate) if form == "raw" else standardised_heatmap(image, estimate,
                                                                                                   reference)
                    scores.append(score(heat, lesion, region, eval_cfg))
                frame = pd.DataFrame(scores)
                row = {"method": method, "setting": ", ".join(f"{k} {v}" for k, v in overrides.items()) or "-",
                       "form": form, "s_per_volume": seconds, "n": len(frame)}
                for metric in frame:
                    row[metric] = frame[metric].mean()
                    row[f"{metric}_se"] = frame[metric].std(ddof=1) / np.sqrt(len(frame))
                rows.append(row)
                print(f"{method:12s} {row['setting']:40s} {form:13s} AUROC {row['auroc']:.3f} ± {row['auroc_se']:.3f}"
                      f"  best Dice {row['best_dice']:.3f}  contrast {row['contrast']:.2f}  {seconds:.2f} s/volume",
                      flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print("\n| method | setting | form | voxel AUROC | best Dice | lesion contrast | s / volume |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['setting']} | {row['form']} | {row['auroc']:.3f} ± {row['auroc_se']:.3f} | "
              f"{row['best_dice']:.3f} ± {row['best_dice_se']:.3f} | {row['contrast']:.2f} ± {row['contrast_se']:.2f} "
              f"| {row['s_per_volume']:.2f} |")
    print("\nChosen (highest voxel AUROC; ties: the cheaper):")
    for (method, form), group in table.groupby(["method", "form"], sort=False):
        best = group.sort_values(["auroc", "s_per_volume"], ascending=[False, True]).iloc[0]
        print(f"  {method}, {form}: {best['setting']} (AUROC {best['auroc']:.3f} ± {best['auroc_se']:.3f})")


if __name__ == "__main__":
    main()
