"""The Inpaint baseline (after Liu et al. 2023, "Lift, Map, Detect"): hide part of the image, let the score
model in-paint it, and score each voxel by how far the in-painting lands from what was there.

A 3D checkerboard of cubes (``cube_size`` voxels per edge, or ``blocks_per_axis`` blocks along each axis
as in Liu et al.'s code, whose ``checkerboard_alt`` masks have ``num_blocks`` blocks per side and invert
on every other run) splits the grid into two complementary patterns. Run ``r`` hides pattern ``r % 2``
(so runs alternate between the checkerboard and its complement and every voxel is hidden in half of
them), in-paints it with the SAME score model as Spatial-MSMA by the predictor-corrector sampler of
:mod:`spatial_msma.baselines.sampling` with RePaint-style replacement of the visible cubes, and records the
L1 error summed over channels, ``sum_c |x_c - x̂_c|``, on the hidden voxels. The heatmap is, per voxel, the
mean of that error over the runs that hid it, zero outside the brain mask. Healthy anatomy is predictable
from its surroundings; a lesion is not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
from spatial_msma.io import InputError, config_section
from spatial_msma.score.network import ScoreModel, load_score_model
from spatial_msma.training import resolve_device, set_deterministic

if TYPE_CHECKING:
    from spatial_msma.detector import Case


@dataclass(frozen=True)
class InpaintConfig:
    """The ``inpaint`` config section.

    Cost: ``runs * steps * (1 + corrector_steps)`` score-network evaluations per volume, in batches of
    ``batch_size`` runs. Paper (code): 10 runs x 1000 sampler steps from t = 1, checkerboards of "3^3"
    blocks (``blocks_per_axis: 3``, reading it as Liu et al.'s ``num_blocks`` per side). The corrector is
    not specified there; Song et al.'s VE defaults are 1 Langevin step per level with snr 0.16.

    Defaults (the 2-core CPU budget, where both sampler baselines share about 4-5 minutes for about 20
    volumes): measured with ``benchmarks/sampler_speed.py`` on the default 40x48x40 model, one forward
    costs about 0.4 s per volume at batch 2 (batch 1 is slower per volume, 0.55-1.1 s; batches of 3-8 are
    no faster per volume than 2). 2 runs (the checkerboard and its complement, together one batch of 2: each
    voxel is in-painted once) x 10 predictor steps, no corrector, is 10 batched forwards, about 8 s per volume,
    about 2.7 minutes for 20 volumes (measured in the workflow with 3 other jobs on the 2 cores: 15-20 CPU
    seconds per volume, 35-42 s wall). The price: one in-painting per voxel instead of five, so the error
    map carries the sampler's noise, and 10 steps instead of 1000, so in-paintings are blurrier than a
    converged sampler's (smooth anatomy is in-painted well; fine detail, e.g. cortex, less so).
    ``t_start`` 0.6 instead of 1: on images scaled to [-1, 1], a hidden cube at sigma(0.6) (about 7 with
    the default model) is as good as pure noise, so the few steps are spent where the image forms, not
    on levels 20-160 where nothing does. ``cube_size`` 4 voxels (16 mm at 4 mm) is the size of the
    default lesions; a cube much larger than a lesion hides it entirely in context, much smaller and the
    lesion is re-drawn from its own neighbouring lesion voxels.

    Measured with these defaults on the default 300-step score model (5 test subjects, 4 mm): voxel AUROC
    0.47 (intensity z-score 0.73); the in-painting error (about 1.8, summed over 2 channels, on healthy and
    lesion voxels alike) is dominated by how far a sampled cube lands from the true anatomy, and hardly
    changes when a lesion is added. A better score model and more steps/runs are what this row needs.
    """

    runs: int = 2
    steps: int = 10
    corrector_steps: int = 0
    snr: float = 0.16
    t_start: float = 0.6
    cube_size: int = 4
    blocks_per_axis: int | None = None
    batch_size: int = 2
    device: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> InpaintConfig:
        out = cls(**config_section(cls, cfg, "inpaint"))
        check_sampler_keys("inpaint", out, min_runs=2)
        if isinstance(out.cube_size, bool) or not isinstance(out.cube_size, int) or out.cube_size < 1:
            raise InputError(f"config inpaint.cube_size: expected an integer >= 1, got {out.cube_size!r}")
        blocks = out.blocks_per_axis
        if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 2):
            raise InputError(f"config inpaint.blocks_per_axis: expected null or an integer >= 2, got {blocks!r}")
        return out

    def cube_edges(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Cube edge per axis: ``cube_size``, or ceil(n / blocks_per_axis) when that is set."""
        if self.blocks_per_axis is None:
            return (self.cube_size,) * len(shape)
        return tuple(-(-int(n) // self.blocks_per_axis) for n in shape)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def evaluations_per_volume(self) -> int:
        return self.runs * self.steps * (1 + self.corrector_steps)


def checkerboard_masks(shape: Sequence[int], cube_size: int | Sequence[int]) -> np.ndarray:
    """(2, X, Y, Z) bool: a 3D checkerboard of cubes (``cube_size`` voxels per edge, one number or one per
    axis) and its complement (partial cubes at the far edges when a size does not divide); together they
    cover every voxel exactly once."""
    edges = np.broadcast_to(np.asarray(cube_size, dtype=np.int64), (len(shape),))
    if (edges < 1).any():
        raise InputError(f"checkerboard: cube sizes must be >= 1, got {cube_size}")
    index = np.indices(tuple(shape)) // edges.reshape(-1, *([1] * len(shape)))
    pattern = index.sum(axis=0) % 2 == 0  # the cube at the origin is in the first pattern
    return np.stack([pattern, ~pattern])


def inpaint_heatmap(
    model: ScoreModel,
    image: np.ndarray,
    brain: np.ndarray,
    cfg: InpaintConfig,
    seed: int,
    subject: str = "",
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The Inpaint heatmap of one (C, X, Y, Z) image: mean over runs of the L1 in-painting error (summed
    over channels) of the voxels each run hid; zero outside ``brain``. ``on_step(k)`` counts sampler steps
    over all runs (``runs * steps`` per image)."""
    device = next(model.net.parameters()).device
    patterns = torch.from_numpy(checkerboard_masks(image.shape[1:], cfg.cube_edges(image.shape[1:])))
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    sigmas = sigma_grid(model.sde, cfg.steps, cfg.t_start)
    score_fn = model_score_fn(model.net)
    error_sum = torch.zeros(image.shape[1:], dtype=torch.float64)
    hidden_count = torch.zeros(image.shape[1:], dtype=torch.float64)
    done = 0
    for start in range(0, cfg.runs, cfg.batch_size):
        runs = list(range(start, min(start + cfg.batch_size, cfg.runs)))
        hidden = patterns[[r % 2 for r in runs]].unsqueeze(1)  # (B, 1, X, Y, Z): True = to in-paint
        generators = generators_for([run_seed(seed, subject, r, "inpaint") for r in runs])
        z = draw_noise(generators, data.shape, device)
        known = data.to(device).unsqueeze(0)
        # start: the visible cubes at sigma_0 around the data, the hidden ones pure noise at sigma_0
        x = torch.where(hidden.to(device), 0.0, known) + float(sigmas[0]) * z

        def step_cb(k: int, base: int = done, width: int = len(runs)) -> None:
            if on_step is not None:
                on_step(base + k * width)

        filled = pc_sample(score_fn, x, sigmas, generators, cfg.corrector_steps, cfg.snr, known=known,
                           known_mask=~hidden.to(device), on_step=step_cb).cpu()
        error = (filled - data.unsqueeze(0)).abs().sum(dim=1).double()  # (B, X, Y, Z)
        hidden_b = hidden.squeeze(1)
        error_sum += torch.where(hidden_b, error, 0.0).sum(0)
        hidden_count += hidden_b.double().sum(0)
        done += len(runs) * cfg.steps
    heatmap = (error_sum / hidden_count.clamp_min(1.0)).numpy()
    return np.where(brain, heatmap, 0.0).astype(np.float32)


@dataclass(frozen=True)
class InpaintDetector:
    """The score model, the ``inpaint`` settings and the run's seed (each subject's runs are seeded from it)."""

    model: ScoreModel
    cfg: InpaintConfig
    seed: int
    label: ClassVar[str] = "Inpaint heatmaps"

    @classmethod
    def load(cls, model_path: str | Path, cfg: Mapping[str, object] | InpaintConfig, seed: int) -> InpaintDetector:
        cfg = cfg if isinstance(cfg, InpaintConfig) else InpaintConfig.from_dict(cfg)
        device = resolve_device(cfg.device)
        set_deterministic(device)
        return cls(load_score_model(model_path, device), cfg, seed)

    @property
    def steps_per_image(self) -> int:
        return self.cfg.runs * self.cfg.steps

    def settings(self) -> str:
        cfg, sde = self.cfg, self.model.sde
        return (f"{cfg.runs} runs x {cfg.steps} steps (+{cfg.corrector_steps} corrector steps each, snr {cfg.snr:g}) "
                f"from t {cfg.t_start:g} (sigma {float(sde.sigma(torch.tensor(cfg.t_start))):.4g}), cubes of "
                f"{'x'.join(map(str, cfg.cube_edges(self.model.net.image_shape)))} voxels, batches of "
                f"{cfg.batch_size} runs, device {next(self.model.net.parameters()).device}: "
                f"{cfg.evaluations_per_volume()} network evaluations per volume")

    def heatmap(self, case: Case) -> np.ndarray:
        return inpaint_heatmap(self.model, case.image, case.brain, self.cfg, self.seed, case.subject, case.on_step)
