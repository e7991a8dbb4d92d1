"""What longer score training buys, judged on the lesioned validation split (never the test split).

    # here: the run's config with the schema's defaults filled in (needs snakemake)
    .venv/bin/python benchmarks/score_training_length.py config config/benchmark.yaml > config.json
    # anywhere with torch (a GPU machine): train on a finished run's images, extend 300 -> 1000 -> 3000 steps
    python benchmarks/score_training_length.py run RUN_DIR config.json OUT_DIR --steps 300 1000 3000 --device cuda

``RUN_DIR`` is a run directory whose cohort, preprocessing and lesion stages are done (it needs
``results/cohort/{train,val}.txt``, ``results/cropped/`` of those subjects and ``results/lesions/`` of the
val subjects). One score model is trained and extended through the step counts (a checkpoint stays valid
when only ``score.steps`` changes, so 3000 steps = the 1000-step run continued). After each step count it
computes the score-norm caches of the train, val and lesioned val sets, the per-level voxel AUROC of the
per-voxel standardised norms (:mod:`spatial_msma.score.diagnostics`), then fits the per-voxel Gaussian and
trains the Spatial-MSMA flow on those caches (for each of ``--flow-steps``) and scores the lesioned val
images: the voxel AUROC of each heatmap, mean over subjects. One row per step count is printed and written
to ``OUT_DIR/summary.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from spatial_msma.detector import write_set_heatmaps
from spatial_msma.evaluation.metrics import voxel_auroc_auprc
from spatial_msma.flow.heatmap import FlowDetector
from spatial_msma.flow.train import train_flow
from spatial_msma.methods import flow_keys, flow_section
from spatial_msma.progress import script_logger
from spatial_msma.score.diagnostics import write_level_diagnostics
from spatial_msma.score.norms import compute_score_norm_cache
from spatial_msma.score.train import train_score_model


def resolve_config(path: str) -> dict:
    """The config file merged over the schema's defaults, as the Snakefile sees it."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(Path(path).read_text())
    validate(config, str(Path(__file__).resolve().parents[1] / "config" / "schema.yaml"))
    return config


def split(run: Path, name: str) -> list[str]:
    return (run / "results" / "cohort" / f"{name}.txt").read_text().split()


def mean_voxel_auroc(heatmaps: list[Path], lesion_masks: list[Path], brain_masks: list[Path]) -> float:
    values = []
    for heatmap, lesion, brain in zip(heatmaps, lesion_masks, brain_masks, strict=True):
        h = np.asarray(nib.load(heatmap).dataobj, dtype=np.float32)
        values.append(voxel_auroc_auprc(h, np.asarray(nib.load(lesion).dataobj) > 0,
                                        np.asarray(nib.load(brain).dataobj) > 0)[0])
    return float(np.nanmean(values))


def run(args: argparse.Namespace) -> None:
    run_dir, out = Path(args.run_dir), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = script_logger(str(out / "log.txt"))
    config = json.loads(Path(args.config).read_text())
    seed = int(config["seed"])
    cropped, lesions = run_dir / "results" / "cropped", run_dir / "results" / "lesions"
    train_ids, val_ids = split(run_dir, "train"), split(run_dir, "val")
    sets = {
        "train": ([cropped / f"{s}.nii.gz" for s in train_ids], train_ids),
        "val": ([cropped / f"{s}.nii.gz" for s in val_ids], val_ids),
        "val_lesioned": ([lesions / f"{s}_image.nii.gz" for s in val_ids], val_ids),
    }
    brain = {name: [cropped / f"{s}_brainmask.nii.gz" for s in ids] for name, (_, ids) in sets.items()}
    val_lesion_masks = [lesions / f"{s}_mask.nii.gz" for s in val_ids]
    score_cfg = {**config["score"], "device": args.device}
    flow_cfg = {**config["flow"], "device": args.device}
    norms_cfg = {**config["score_norms"], "device": args.device}
    rows, train_seconds = [], 0.0
    for steps in args.steps:
        step_dir = out / f"steps_{steps}"
        start = time.perf_counter()
        train_score_model(sets["train"][0], brain["train"], sets["val"][0],
                          step_dir / "model.pt", step_dir / "training_log.csv", step_dir / "training.png",
                          checkpoint_dir=out / "checkpoints", cfg={**score_cfg, "steps": steps}, seed=seed,
                          logger=logger)
        train_seconds += time.perf_counter() - start
        manifests = {}
        for name, (images, ids) in sets.items():
            manifests[name] = step_dir / "norms" / name / "manifest.tsv"
            compute_score_norm_cache(step_dir / "model.pt", images, brain[name], manifests[name], ids, norms_cfg,
                                     logger)
        levels = write_level_diagnostics(
            {"val": (manifests["val_lesioned"], manifests["val"], val_lesion_masks)}, manifests["train"],
            step_dir / "score_levels.csv", step_dir / "score_levels.png", seed=seed)
        row = {"steps": steps, "train_s_cumulative": round(train_seconds, 1),
               "val_loss": float(pd.read_csv(step_dir / "training_log.csv")["val_loss"].dropna().iloc[-1]),
               "level_auroc_std_mean": float(levels["voxel_auroc_standardised"].mean()),
               "level_auroc_std_max": float(levels["voxel_auroc_standardised"].max()),
               "image_auroc_max": float(levels["image_auroc"].max())}
        rows.append(row)
        runs = [(method, None) for method in args.methods if method == "voxel_gaussian"]
        runs += [(method, n) for n in args.flow_steps or [flow_cfg["steps"]] for method in args.methods
                 if method != "voxel_gaussian"]
        for method, flow_steps in runs:
            name = method if flow_steps is None else f"{method}_flow{flow_steps}"
            model = step_dir / name / "model.pt"
            cfg = flow_cfg if flow_steps is None else {**flow_cfg, "steps": flow_steps}
            train_flow(manifests["train"], sets["train"][0], manifests["val"], sets["val"][0], model,
                       step_dir / name / "checkpoints", step_dir / name / "log.csv", step_dir / name / "log.png",
                       cfg=flow_section(cfg, method), seed=seed, logger=logger)
            write_set_heatmaps(FlowDetector.load(model, cfg, manifests["val_lesioned"]), sets["val_lesioned"][0],
                               brain["val_lesioned"], step_dir / name, logger)
            heatmaps = [step_dir / name / f"{s}.nii.gz" for s in val_ids]
            row[f"{name}_val_voxel_auroc"] = mean_voxel_auroc(heatmaps, val_lesion_masks, brain["val_lesioned"])
            pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)  # after each model: a cut-off run keeps it
        logger.info("steps %d: %s", steps, row)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="print the config file merged over the schema's defaults as JSON")
    cfg.add_argument("configfile")
    go = sub.add_parser("run", help="train, extend and judge the score model")
    go.add_argument("run_dir")
    go.add_argument("config", help="JSON from the config command")
    go.add_argument("out_dir")
    go.add_argument("--steps", type=int, nargs="+", default=[300, 1000, 3000])
    go.add_argument("--methods", nargs="+", choices=flow_keys(), default=["voxel_gaussian", "spatial_msma"])
    go.add_argument("--flow-steps", type=int, nargs="+", help="flow training lengths to try (default: the config's)")
    go.add_argument("--device", default="auto")
    go.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    if args.command == "config":
        json.dump(resolve_config(args.configfile), sys.stdout, indent=1)
        return
    torch.set_num_threads(args.threads)
    if sorted(args.steps) != args.steps:
        parser.error("--steps must be increasing (each count extends the previous run)")
    run(args)


if __name__ == "__main__":
    main()
