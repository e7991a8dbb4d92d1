"""The Restoration baseline (after Wyatt et al. 2022, AnoDDPM, with Gaussian instead of simplex noise):
perturb the image part of the way up the diffusion, run the reverse sampler back down, and score each voxel
by how much the "restored", healthy-looking image differs from the input.

Each run draws ``x_t = x + sigma(t_start) z`` (``t_start`` 0.25 of the diffusion time: enough noise to wash
out a lesion's intensity but not the anatomy around it), then samples the reverse VE-SDE of the SAME score
model as Spatial-MSMA from sigma(t_start) down to sigma_min and a final noise-free step
(:mod:`spatial_msma.baselines.sampling`). The heatmap is ``sum_c |x_c - x̂_c|`` averaged over runs, zero
outside the brain mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from spatial_msma.baselines.sampling import (
    check_sampler_keys,
    draw_noise,
    generators_for,
    model_score_fn,
    pc_sample,
    run_seed,
    sigma_grid,
)
from spatial_msma.io import config_section
from spatial_msma.score.network import ScoreModel, load_score_model
from spatial_msma.training import resolve_device, set_deterministic

if TYPE_CHECKING:
    from spatial_msma.detector import Case


@dataclass(frozen=True)
class RestorationConfig:
    """The ``restoration`` config section.

    Cost: ``runs * steps * (1 + corrector_steps)`` score-network evaluations per volume, in batches of
    ``batch_size`` runs. Paper (code): t_start 0.25 (sigma about 0.59 on the paper's schedule), 500 steps,
    10 runs. The corrector is not specified there; Song et al.'s VE defaults are 1 Langevin step per level
    with snr 0.16.

    Defaults (the 2-core CPU budget, shared with Inpaint: about 4-5 minutes for about 20 volumes): one
    forward costs about 0.4 s per volume at batch 2 (``benchmarks/sampler_speed.py``; batch 1 is slower
    per volume, larger batches no faster). 2 runs (one batch) x 6 predictor steps, no corrector: 6 batched
    forwards, about 5 s per volume, under 2 minutes for 20 volumes (measured in the workflow with 3 other
    jobs on the 2 cores: about 10 CPU seconds per volume, 16-24 s wall). 6 geometric levels from sigma(0.25)
    down to sigma_min are a ratio of about 1.45 per step (0.56 -> 0.085 on the default model), fine enough
    for a denoiser-like sampler over this short range; the main loss is 2 runs instead of 10, which leaves
    more of the sampler's noise in the heatmap (averaging runs is what suppresses it). ``t_start`` keeps
    the paper's 0.25.

    Measured with these defaults on the default 300-step score model (5 test subjects, 4 mm): voxel AUROC
    0.42 (intensity z-score 0.73). The restoration does react to lesions (error at lesion voxels 0.46 vs
    0.39 on the lesion-free twin; AUROC of the twin difference 0.66), but lesions sit in smooth white
    matter, where the error is lower than at tissue boundaries (0.55 on average in healthy voxels).
    """

    runs: int = 2
    steps: int = 6
    corrector_steps: int = 0
    snr: float = 0.16
    t_start: float = 0.25
    batch_size: int = 2
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> RestorationConfig:
        out = cls(**config_section(cls, cfg, "restoration"))
        check_sampler_keys("restoration", out)
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def evaluations_per_volume(self) -> int:
        return self.runs * self.steps * (1 + self.corrector_steps)


def restore(
    model: ScoreModel,
    image: np.ndarray,
    cfg: RestorationConfig,
    seed: int,
    subject: str = "",
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(runs, C, X, Y, Z) float32 restorations of one (C, X, Y, Z) image."""
    device = next(model.net.parameters()).device
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    sigmas = sigma_grid(model.sde, cfg.steps, cfg.t_start)
    score_fn = model_score_fn(model.net)
    out, done = [], 0
    for start in range(0, cfg.runs, cfg.batch_size):
        runs = list(range(start, min(start + cfg.batch_size, cfg.runs)))
        generators = generators_for([run_seed(seed, subject, r, "restoration") for r in runs])
        x = data.unsqueeze(0) + float(sigmas[0]) * draw_noise(generators, data.shape, device)

        def step_cb(k: int, base: int = done, width: int = len(runs)) -> None:
            if on_step is not None:
                on_step(base + k * width)

        out.append(pc_sample(score_fn, x, sigmas, generators, cfg.corrector_steps, cfg.snr,
                             on_step=step_cb).cpu())
        done += len(runs) * cfg.steps
    return torch.cat(out).numpy()


def restoration_heatmap(
    model: ScoreModel,
    image: np.ndarray,
    brain: np.ndarray,
    cfg: RestorationConfig,
    seed: int,
    subject: str = "",
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Mean over runs of ``sum_c |x_c - restored_c|``, zero outside ``brain``."""
    restored = restore(model, image, cfg, seed, subject, on_step)
    error = np.abs(restored.astype(np.float64) - image[None]).sum(axis=1).mean(axis=0)
    return np.where(brain, error, 0.0).astype(np.float32)


@dataclass(frozen=True)
class RestorationDetector:
    """The score model, the ``restoration`` settings and the run's seed (each subject's runs are seeded from it)."""

    model: ScoreModel
    cfg: RestorationConfig
    seed: int
    label: ClassVar[str] = "Restoration heatmaps"

    @classmethod
    def load(cls, model_path: str | Path, cfg: Mapping[str, object] | RestorationConfig,
             seed: int) -> RestorationDetector:
        cfg = cfg if isinstance(cfg, RestorationConfig) else RestorationConfig.from_dict(cfg)
        device = resolve_device(cfg.device)
        set_deterministic(device)
        return cls(load_score_model(model_path, device), cfg, seed)

    @property
    def steps_per_image(self) -> int:
        return self.cfg.runs * self.cfg.steps

    def settings(self) -> str:
        cfg, sde = self.cfg, self.model.sde
        return (f"{cfg.runs} runs x {cfg.steps} steps (+{cfg.corrector_steps} corrector steps each, snr {cfg.snr:g}) "
                f"from t {cfg.t_start:g} (sigma {float(sde.sigma(torch.tensor(cfg.t_start))):.4g}) to sigma_min "
                f"{sde.sigma_min:.4g}, batches of {cfg.batch_size} runs, device "
                f"{next(self.model.net.parameters()).device}: {cfg.evaluations_per_volume()} network evaluations "
                "per volume")

    def heatmap(self, case: Case) -> np.ndarray:
        return restoration_heatmap(self.model, case.image, case.brain, self.cfg, self.seed, case.subject,
                                   case.on_step)
