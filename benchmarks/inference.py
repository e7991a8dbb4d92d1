"""Inference cost of every Table-1 detector: seconds per volume on the same images, in one run.

    .venv/bin/python benchmarks/inference.py RUN_DIR                     # RUN_DIR: a finished workflow directory
    .venv/bin/python benchmarks/inference.py RUN_DIR --images 3 --threads 2
    .venv/bin/python benchmarks/inference.py RUN_DIR --config config/paper.yaml --methods inpaint restoration

Each method is its workflow detector (:class:`spatial_msma.detector.Detector`) turning one 2-channel image
(+ brain mask) into its heatmap, file reading and writing excluded, with the config sections of
``--config`` (default: the package defaults, i.e. the default config). The methods are the registry's
Table-1 rows (:mod:`spatial_msma.methods`):

- Spatial-MSMA: the score norms at ``score_norms.n_levels`` levels (one batched forward) + the flow's
  per-voxel NLL (``flow`` scoring keys); the workflow reads those norms from its cache, here they are
  computed, so the row is the cost of a new image end to end;
- AE: one reconstruction; Inpaint, Restoration: the sampler runs of ``inpaint`` / ``restoration``; each
  then scored in its ``residual_heatmaps.form`` (the standardised form reads the run's residual reference,
  or a neutral one where the run has none: the same arithmetic);
- GradCAM-MSMA: Guided Grad-CAM of the image-level GMM NLL (``gradcam_msma``);
- intensity z-score: voxelwise arithmetic.

Models come from the workflow directory (``results/models/...``) where they exist; a missing flow, AE,
GradCAM GMM or z-score model is replaced by an untrained one of the configured size (inference cost does
not depend on the weights; the table says which). The score model must exist (every row but z-score and
AE uses it). The first image is an untimed warm-up; the table gives the median over the timed ones and
the ratio to Spatial-MSMA.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import yaml

from spatial_msma.baselines.ae import AeConfig, AeDetector, AeModel, AeNet, load_ae_model
from spatial_msma.baselines.gradcam import GradcamConfig, TorchGmm, build_detector, load_gradcam_detector
from spatial_msma.baselines.inpaint import InpaintDetector
from spatial_msma.baselines.residual import HealthyEstimator, ResidualDetector, read_reference
from spatial_msma.baselines.restoration import RestorationDetector
from spatial_msma.baselines.zscore import ZscoreDetector
from spatial_msma.detector import Case, Detector, read_case
from spatial_msma.flow.config import FlowConfig
from spatial_msma.flow.data import SubjectData, transform_norms
from spatial_msma.flow.heatmap import DensityModel, load_density_model, subject_heatmap
from spatial_msma.flow.model import ModelMeta, SpatialFlow
from spatial_msma.lesions.volumes import subject_of
from spatial_msma.methods import display_name, table1_keys
from spatial_msma.score.msma import select_levels
from spatial_msma.score.network import ScoreModel, load_score_model
from spatial_msma.score.norms import NormsConfig, score_norms

METHODS = table1_keys()


@dataclass(frozen=True)
class EndToEndSpatialMsma:
    """Spatial-MSMA on an image no cache holds yet: its score norms, then the flow's heatmap."""

    score_model: ScoreModel
    sigmas: np.ndarray
    norms_cfg: NormsConfig
    flow: DensityModel
    train_cfg: FlowConfig
    scoring: FlowConfig
    label: ClassVar[str] = "Spatial-MSMA"
    steps_per_image: ClassVar[int] = 1

    def settings(self) -> str:
        return f"{len(self.sigmas)} levels"

    def heatmap(self, case: Case) -> np.ndarray:
        patch, _ = score_norms(self.score_model, case.image, self.sigmas, self.norms_cfg.channel_reduction,
                               self.norms_cfg.batch_levels)
        levels = np.asarray(self.flow.meta.levels)
        features = transform_norms(patch[levels][:, case.brain].T, self.train_cfg.log_transform,
                                   self.train_cfg.log_eps)
        data = SubjectData(case.image_id, np.ascontiguousarray(features), np.argwhere(case.brain).astype(np.int64),
                           case.image, case.brain, case.affine, self.sigmas)
        s = self.scoring
        return subject_heatmap(self.flow, data, s.one_sided, s.chunk_voxels, torch.device("cpu"), s.mode_stride,
                               s.heatmap_jacobian)


def spatial_msma(workdir: Path, cfg: dict, score_model: ScoreModel, case: Case) -> tuple[Detector, str]:
    norms_cfg = NormsConfig.from_dict(cfg.get("score_norms"))
    flow_cfg = FlowConfig.from_dict(cfg.get("flow"))
    sigmas = score_model.sde.levels(norms_cfg.n_levels, norms_cfg.t_min, norms_cfg.t_max)
    path = workdir / "results/models/spatial_msma/model.pt"
    if path.exists():
        flow, train_cfg = load_density_model(path)
        if tuple(flow.meta.shape) != case.brain.shape or len(flow.meta.sigmas) != len(sigmas):
            raise SystemExit(f"{path}: grid or levels differ from the score norms configured here")
        source = "trained"
    else:
        levels = list(range(len(sigmas)))
        meta = ModelMeta(levels=levels, sigmas=[float(s) for s in sigmas], shape=case.brain.shape,
                         affine=np.asarray(case.affine).tolist(), in_channels=case.image.shape[0],
                         feature_mean=[0.0] * len(levels), feature_std=[1.0] * len(levels))
        flow, train_cfg, source = SpatialFlow(flow_cfg, meta).eval(), flow_cfg, "untrained"
    detector = EndToEndSpatialMsma(score_model, sigmas, norms_cfg, flow, train_cfg, flow_cfg)
    return detector, f"{source} flow, {len(sigmas)} levels"


def residual(workdir: Path, cfg: dict, method: str, estimator: HealthyEstimator, case: Case,
             detail: str) -> tuple[Detector, str]:
    """A reconstruction baseline's estimator scored in its configured heatmap form."""
    form = {**dict.fromkeys(("ae", "inpaint", "restoration"), "standardised"),
            **(cfg.get("residual_heatmaps") or {}).get("form", {})}[method]
    error = AeConfig.from_dict(cfg.get("ae")).error if method == "ae" else "abs"
    if form == "raw":
        return ResidualDetector(estimator, form, None, error), f"{detail}, raw residual"
    path = workdir / f"results/models/{method}/residual_reference.npz"
    if path.exists():
        return ResidualDetector(estimator, form, read_reference(path), error), f"{detail}, standardised"
    neutral = {"mean": np.zeros_like(case.image), "sd": np.ones_like(case.image)}
    return ResidualDetector(estimator, form, neutral, error), f"{detail}, standardised (neutral reference)"


def ae(workdir: Path, cfg: dict, case: Case) -> tuple[Detector, str]:
    path = workdir / "results/models/ae/model.pt"
    if path.exists():
        return residual(workdir, cfg, "ae", AeDetector(load_ae_model(path)), case, "trained AE")
    torch.manual_seed(0)
    net = AeNet(case.image.shape[0], case.brain.shape, AeConfig.from_dict(cfg.get("ae"))).eval()
    return residual(workdir, cfg, "ae", AeDetector(AeModel(net, {})), case, "untrained AE")


def sampler(workdir: Path, cfg: dict, method: str, detector: InpaintDetector | RestorationDetector,
            case: Case) -> tuple[Detector, str]:
    c = detector.cfg
    return residual(workdir, cfg, method, detector, case,
                    f"{c.runs} runs x {c.steps} steps (+{c.corrector_steps} corrector), batch {c.batch_size}: "
                    f"{c.evaluations_per_volume()} network evaluations")


def gradcam(workdir: Path, cfg: dict, model_path: Path) -> tuple[Detector, str]:
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
    return detector, f"{source} GMM, {len(detector.nll.sigmas)} levels, layer {detector.layer_name}"


def zscore(workdir: Path, cases: list[Case]) -> tuple[Detector, str]:
    path = workdir / "results/models/zscore/model.npz"
    if path.exists():
        return ZscoreDetector.load(path), "trained mean/SD"
    stack = np.stack([c.image for c in cases]).astype(np.float64)
    detector = ZscoreDetector(stack.mean(0).astype(np.float32), np.maximum(stack.std(0), 0.05).astype(np.float32))
    return detector, "mean/SD fitted on the benchmark images"


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
    cases = []
    for path in chosen:
        subject = subject_of(path.name.split("_image")[0].removesuffix(".nii.gz"))  # a lesion draw's subject
        cases.append(read_case(path, work / "results/cropped" / f"{subject}_brainmask.nii.gz"))
    score_model = load_score_model(model_path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {len(cases)} images of "
          f"{cases[0].brain.shape} from {work} ({len(cases) - 1} timed after 1 warm-up)", flush=True)

    builders = {
        "spatial_msma": lambda: spatial_msma(work, cfg, score_model, cases[0]),
        "ae": lambda: ae(work, cfg, cases[0]),
        "inpaint": lambda: sampler(work, cfg, "inpaint", InpaintDetector.load(model_path, cfg.get("inpaint"),
                                                                              args.seed), cases[0]),
        "restoration": lambda: sampler(work, cfg, "restoration",
                                       RestorationDetector.load(model_path, cfg.get("restoration"), args.seed),
                                       cases[0]),
        "gradcam_msma": lambda: gradcam(work, cfg, model_path),
        "zscore": lambda: zscore(work, cases),
    }
    rows = []
    for method in args.methods:
        detector, detail = builders[method]()
        times = []
        for k, case in enumerate(cases):
            t0 = time.perf_counter()
            heat = detector.heatmap(case)
            if k:
                times.append(time.perf_counter() - t0)
            if heat.shape != case.brain.shape or not np.isfinite(heat).all():
                raise SystemExit(f"{method}: bad heatmap for {case.image_id}")
        rows.append((method, float(np.median(times)), detail))
        print(f"  {display_name(method)}: {rows[-1][1]:.3g} s per volume ({detail})", flush=True)

    ref = dict((m, s) for m, s, _ in rows).get("spatial_msma")
    print("\n| method | s per volume | x Spatial-MSMA | setting |\n|---|---|---|---|")
    for method, seconds, detail in rows:
        ratio = f"{seconds / ref:.3g}" if ref else "-"
        print(f"| {display_name(method)} | {seconds:.3g} | {ratio} | {detail} |")


if __name__ == "__main__":
    main()
