"""The Restoration baseline (after Wyatt et al. 2022, AnoDDPM, with Gaussian instead of simplex noise):
perturb the image part of the way up the diffusion, run the reverse sampler back down, and score each voxel
by how much the "restored", healthy-looking image differs from the input.

Each run draws ``x_t = x + sigma(t_start) z`` (``t_start`` 0.25 of the diffusion time: enough noise to wash
out a lesion's intensity but not the anatomy around it), then samples the reverse VE-SDE of the SAME score
model as Spatial-MSMA from sigma(t_start) down to sigma_min and a final noise-free step
(:mod:`spatial_msma.baselines.sampling`). The healthy estimate is the mean of the runs' restorations; the
heatmap is the residual of that mean (:mod:`spatial_msma.baselines.residual`: the authors' ``|mean - x|``,
or standardised per voxel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from spatial_msma.baselines.sampling import SamplerDetector, SamplerSettings, sample_runs
from spatial_msma.score.network import ScoreModel

if TYPE_CHECKING:
    from spatial_msma.detector import Case


@dataclass(frozen=True)
class RestorationConfig(SamplerSettings):
    """The ``restoration`` config section.

    Cost: ``runs * steps * (1 + corrector_steps)`` score-network evaluations per volume, in batches of
    ``batch_size`` runs. Paper (code): t_start 0.25 (sigma about 0.59 on the paper's schedule), 500 steps,
    10 runs. The corrector is not specified there; Song et al.'s VE defaults are 1 Langevin step per level
    with snr 0.16.

    Defaults (the 2-core CPU budget, shared with Inpaint): batch 2, because batch 1 is slower per volume and
    larger batches are no faster (``benchmarks/sampler_speed.py``). 2 runs (one batch) x ``steps`` predictor
    steps, no corrector (``config/config.yaml`` sets 4 for the DAG budget): geometric levels from
    sigma(t_start) down to sigma_min are fine enough for a denoiser-like sampler over this short range.
    Averaging the restorations before the residual cancels part of their sampling noise; 2 runs instead of 10
    leave more of it. Runs and start time were compared on the lesioned validation split
    (``benchmarks/baseline_search.py``; the table in benchmarks/README.md).
    """

    section: ClassVar[str] = "restoration"

    steps: int = 6
    t_start: float = 0.25


def restore(
    model: ScoreModel,
    image: np.ndarray,
    cfg: RestorationConfig,
    seed: int,
    subject: str = "",
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(runs, C, X, Y, Z) float32 restorations of one (C, X, Y, Z) image."""
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return torch.cat([x for _, x in sample_runs(model, data, cfg, seed, subject, on_step)]).numpy()


@dataclass(frozen=True)
class RestorationDetector(SamplerDetector):
    """The score model, the ``restoration`` settings and the run's seed (each subject's runs are seeded from it)."""

    cfg: RestorationConfig
    config_class: ClassVar[type[SamplerSettings]] = RestorationConfig
    label: ClassVar[str] = "Restoration heatmaps"

    def path_settings(self) -> str:
        return f" to sigma_min {self.model.sde.sigma_min:.4g}"

    def estimate(self, case: Case) -> np.ndarray:
        """The mean of the runs' restorations: the residual is taken after averaging (the authors' |mean - x|),
        so the runs' sampling noise cancels instead of adding up."""
        return restore(self.model, case.image, self.cfg, self.seed, case.image_id, case.on_step).mean(axis=0)
