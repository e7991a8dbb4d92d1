"""Inference cost of every Table-1 detector: seconds per volume on the same images, in one run.

    .venv/bin/python benchmarks/inference.py /tmp/wfdef                     # a finished workflow directory
    .venv/bin/python benchmarks/inference.py /tmp/wfdef --images 3 --threads 2
    .venv/bin/python benchmarks/inference.py /tmp/wfdef --config config/paper.yaml --methods inpaint restoration

Each method turns one 2-channel image (+ brain mask) into its heatmap, exactly as its workflow rule does
per image (file reading and writing excluded), with the config sections of ``--config`` (default: the
package defaults, i.e. the default config):

- Spatial-MSMA: the score norms at ``score_norms.n_levels`` levels (one batched forward) + the flow's
  per-voxel NLL (``flow`` scoring keys);
- AE: one reconstruction; Inpaint, Restoration: the sampler runs of ``inpaint`` / ``restoration``;
- GradCAM-MSMA: Guided Grad-CAM of the image-level GMM NLL (``gradcam_msma``);
- intensity z-score: voxelwise arithmetic.

Models come from the workflow directory (``results/models/...``) where they exist; a missing flow, AE or
GradCAM GMM is replaced by an untrained one of the configured size (inference cost does not depend on the
weights; the table says which). The score model must exist (every row but z-score and AE uses it). A
method whose module is not in the package yet is skipped with a note. The first image is an untimed
warm-up; the table gives the median over the timed ones and the ratio to Spatial-MSMA.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from spatial_msma import io
from spatial_msma.names import display_name
from spatial_msma.score.network import load_score_model

METHODS = ["spatial_msma", "ae", "inpaint", "restoration", "gradcam_msma", "zscore"]


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def spatial_msma_fn(workdir: Path, cfg: dict, score_model, shape, affine) -> tuple[Callable, str]:
    from spatial_msma.flow.config import FlowConfig
    from spatial_msma.flow.data import SubjectData, transform_norms
    from spatial_msma.flow.heatmap import load_density_model, subject_heatmap
    from spatial_msma.flow.model import ModelMeta, SpatialFlow
    from spatial_msma.score.norms import NormsConfig, score_norms

    norms_cfg = NormsConfig.from_dict(cfg.get("score_norms"))
    flow_cfg = FlowConfig.from_dict(cfg.get("flow"))
    sigmas = score_model.sde.levels(norms_cfg.n_levels, norms_cfg.t_min, norms_cfg.t_max)
    path = workdir / "results/models/spatial_msma/model.pt"
    source = "trained"
    if path.exists():
        flow, train_cfg = load_density_model(path)
        if tuple(flow.meta.shape) != tuple(shape) or len(flow.meta.sigmas) != len(sigmas):
            raise SystemExit(f"{path}: grid or levels differ from the score norms configured here")
    else:
        levels = list(range(len(sigmas)))
        meta = ModelMeta(levels=levels, sigmas=[float(s) for s in sigmas], shape=tuple(shape),
                         affine=np.asarray(affine).tolist(), in_channels=2, feature_mean=[0.0] * len(levels),
                         feature_std=[1.0] * len(levels))
        flow, train_cfg, source = SpatialFlow(flow_cfg, meta).eval(), flow_cfg, "untrained"
    levels = np.asarray(flow.meta.levels)
    device = torch.device("cpu")

    def run(image: np.ndarray, brain: np.ndarray, subject: str) -> np.ndarray:
        patch, _ = score_norms(score_model, image, sigmas, norms_cfg.channel_reduction, norms_cfg.batch_levels)
        features = transform_norms(patch[levels][:, brain].T, train_cfg.log_transform, train_cfg.log_eps)
        data = SubjectData(subject, np.ascontiguousarray(features), np.argwhere(brain).astype(np.int64), image,
                           brain, np.asarray(affine), np.asarray(sigmas))
        return subject_heatmap(flow, data, flow_cfg.one_sided, flow_cfg.chunk_voxels, device, flow_cfg.mode_stride,
                               flow_cfg.heatmap_jacobian)

    return run, f"{source} flow, {len(sigmas)} levels"


def ae_fn(workdir: Path, cfg: dict, shape) -> tuple[Callable, str]:
    from spatial_msma.baselines.ae import AeConfig, AeNet, ae_heatmap, load_ae_model

    ae_cfg = AeConfig.from_dict(cfg.get("ae"))
    path = workdir / "results/models/ae/model.pt"
    if path.exists():
        model, source = load_ae_model(path), "trained"
    else:
        torch.manual_seed(0)
        model, source = AeNet(2, tuple(shape), ae_cfg).eval(), "untrained"

    def run(image: np.ndarray, brain: np.ndarray, subject: str) -> np.ndarray:
        return ae_heatmap(model, image, brain, ae_cfg.error)

    return run, f"{source} AE"


def sampler_fn(method: str, cfg: dict, score_model, seed: int) -> tuple[Callable, str]:
    if method == "inpaint":
        from spatial_msma.baselines.inpaint import InpaintConfig, inpaint_heatmap

        c = InpaintConfig.from_dict(cfg.get("inpaint"))
        heat = inpaint_heatmap
    else:
        from spatial_msma.baselines.restoration import RestorationConfig, restoration_heatmap

        c = RestorationConfig.from_dict(cfg.get("restoration"))
        heat = restoration_heatmap

    def run(image: np.ndarray, brain: np.ndarray, subject: str) -> np.ndarray:
        return heat(score_model, image, brain, c, seed, subject)

    return run, (f"{c.runs} runs x {c.steps} steps (+{c.corrector_steps} corrector), batch {c.batch_size}: "
                 f"{c.evaluations_per_volume()} network evaluations")


def gradcam_fn(workdir: Path, cfg: dict, model_path: Path) -> tuple[Callable, str]:
    from spatial_msma.baselines.gradcam import (
        GradcamConfig,
        TorchGmm,
        build_detector,
        gradcam_heatmap,
        load_gradcam_detector,
    )
    from spatial_msma.score.msma import select_levels
    from spatial_msma.score.norms import NormsConfig

    g_cfg = GradcamConfig.from_dict(cfg.get("gradcam_msma"))
    gmm_path = workdir / "results/models/gradcam_msma/gmm.npz"
    if gmm_path.exists():
        detector, source = load_gradcam_detector(model_path, gmm_path, g_cfg), "fitted"
    else:
        norms_cfg = NormsConfig.from_dict(cfg.get("score_norms"))
        model = load_score_model(model_path)
        cached = model.sde.levels(norms_cfg.n_levels, norms_cfg.t_min, norms_cfg.t_max)
        sigmas = cached[select_levels(len(cached), g_cfg.n_levels)]
        d = len(sigmas)
        gmm = TorchGmm(np.ones(1), np.zeros((1, d)), np.eye(d)[None])
        detector, source = build_detector(model.net, gmm, sigmas, g_cfg.layer, g_cfg.guided_silu), "standard-normal"

    def run(image: np.ndarray, brain: np.ndarray, subject: str) -> np.ndarray:
        return gradcam_heatmap(detector, image, brain)[0]

    return run, f"{source} GMM, {len(detector.nll.sigmas)} levels, layer {detector.layer_name}"


def zscore_fn(workdir: Path, images: list[np.ndarray]) -> tuple[Callable, str]:
    from spatial_msma.zscore import zscore_heatmap

    path = workdir / "results/models/zscore/model.npz"
    if path.exists():
        model, source = dict(np.load(path)), "trained"
    else:
        stack = np.stack(images).astype(np.float64)
        model = {"mean": stack.mean(0).astype(np.float32),
                 "sd": np.maximum(stack.std(0), 0.05).astype(np.float32)}
        source = "fitted on the benchmark images"

    def run(image: np.ndarray, brain: np.ndarray, subject: str) -> np.ndarray:
        return zscore_heatmap(image, brain, model)

    return run, f"{source} mean/SD"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="a finished workflow directory (results/cropped, models)")
    parser.add_argument("--images", type=int, default=3, help="images to time (the first is an untimed warm-up)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--config", type=Path, default=None, help="a config YAML whose sections override defaults")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(args.config.read_text()) if args.config else {}
    work = args.workdir
    model_path = work / "results/models/score/model.pt"
    lesioned = sorted((work / "results/lesions").glob("*_image.nii.gz"))
    pool = lesioned or sorted(p for p in (work / "results/cropped").glob("sub-*.nii.gz") if "_" not in p.name)
    chosen = pool[:max(args.images, 2)]
    if len(chosen) < 2 or not model_path.exists():
        raise SystemExit(f"{work}: need results/models/score/model.pt and at least 2 images")
    volumes = []
    for path in chosen:
        subject = path.name.split("_image")[0].removesuffix(".nii.gz")
        image, affine = io.read_channels(path)
        brain, _ = io.read_mask(work / "results/cropped" / f"{subject}_brainmask.nii.gz")
        volumes.append((subject, image, brain))
    shape = volumes[0][1].shape[1:]
    score_model = load_score_model(model_path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {len(volumes)} images of {shape} "
          f"from {work} ({len(volumes) - 1} timed after 1 warm-up)", flush=True)

    builders = {
        "spatial_msma": ("spatial_msma.flow", lambda: spatial_msma_fn(work, cfg, score_model, shape, affine)),
        "ae": ("spatial_msma.baselines.ae", lambda: ae_fn(work, cfg, shape)),
        "inpaint": ("spatial_msma.baselines.inpaint", lambda: sampler_fn("inpaint", cfg, score_model, args.seed)),
        "restoration": ("spatial_msma.baselines.restoration",
                        lambda: sampler_fn("restoration", cfg, score_model, args.seed)),
        "gradcam_msma": ("spatial_msma.baselines.gradcam", lambda: gradcam_fn(work, cfg, model_path)),
        "zscore": ("spatial_msma.zscore", lambda: zscore_fn(work, [v[1] for v in volumes])),
    }
    rows = []
    for method in args.methods:
        module, build = builders[method]
        if not available(module):
            print(f"note: {display_name(method)} skipped: {module} is not in the package yet", flush=True)
            continue
        run, detail = build()
        times = []
        for k, (subject, image, brain) in enumerate(volumes):
            t0 = time.perf_counter()
            heat = run(image, brain, subject)
            if k:
                times.append(time.perf_counter() - t0)
            if heat.shape != brain.shape or not np.isfinite(heat).all():
                raise SystemExit(f"{method}: bad heatmap for {subject}")
        rows.append((method, float(np.median(times)), detail))
        print(f"  {display_name(method)}: {rows[-1][1]:.3g} s per volume ({detail})", flush=True)

    ref = dict((m, s) for m, s, _ in rows).get("spatial_msma")
    print("\n| method | s per volume | x Spatial-MSMA | setting |\n|---|---|---|---|")
    for method, seconds, detail in rows:
        ratio = f"{seconds / ref:.3g}" if ref else "-"
        print(f"| {display_name(method)} | {seconds:.3g} | {ratio} | {detail} |")


if __name__ == "__main__":
    main()
