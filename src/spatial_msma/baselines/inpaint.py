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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from spatial_msma.baselines.sampling import SamplerDetector, SamplerSettings, sample_runs
from spatial_msma.io import InputError, check_number
from spatial_msma.score.network import ScoreModel

if TYPE_CHECKING:
    from spatial_msma.detector import Case


@dataclass(frozen=True)
class InpaintConfig(SamplerSettings):
    """The ``inpaint`` config section.

    Cost: ``runs * steps * (1 + corrector_steps)`` score-network evaluations per volume, in batches of
    ``batch_size`` runs. Paper (code): 10 runs x 1000 sampler steps from t = 1, checkerboards of "3^3"
    blocks (``blocks_per_axis: 3``, reading it as Liu et al.'s ``num_blocks`` per side). The corrector is
    not specified there; Song et al.'s VE defaults are 1 Langevin step per level with snr 0.16.

    Defaults (the 2-core CPU budget, where both sampler baselines share a few minutes for the ~20 volumes
    of val, test and their lesioned copies): batch 2, because batch 1 is slower per volume and larger
    batches are no faster (``benchmarks/sampler_speed.py``). 2 runs (the checkerboard and its complement,
    together one batch of 2: each voxel is in-painted once) x 10 predictor steps, no corrector, is 10
    batched forwards per volume, which fits that budget (timings in benchmarks/README.md). The price: one
    in-painting per voxel instead of five, so the error map carries the sampler's noise, and 10 steps
    instead of 1000, so in-paintings are blurrier than a converged sampler's (smooth anatomy is in-painted
    well; fine detail, e.g. cortex, less so).
    ``t_start`` 0.6 instead of 1: on images scaled to [-1, 1], a hidden cube at sigma(0.6) (several times
    the intensity range with the default model's sigma_max) is as good as pure noise, so the few steps are
    spent where the image forms, not on the highest levels where nothing does. ``cube_size`` 4 voxels
    (16 mm at 4 mm) is the size of the default lesions; a cube much larger than a lesion hides it entirely
    in context, much smaller and the lesion is re-drawn from its own neighbouring lesion voxels.

    Why the row is weak at laptop sizes: the in-painting error is about as large on healthy as on lesion
    voxels, dominated by how far a sampled cube lands from the true anatomy, and hardly changes when a
    lesion is added (benchmarks/README.md). A better score model and more steps/runs are what this row
    needs.
    """

    section: ClassVar[str] = "inpaint"
    min_runs: ClassVar[int] = 2

    steps: int = 10
    t_start: float = 0.6
    cube_size: int = 4
    blocks_per_axis: int | None = None

    def validate(self) -> None:
        super().validate()
        check_number(self.cube_size, "inpaint.cube_size", 1, integer=True)
        check_number(self.blocks_per_axis, "inpaint.blocks_per_axis", 2, integer=True, optional=True)

    def cube_edges(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Cube edge per axis: ``cube_size``, or ceil(n / blocks_per_axis) when that is set."""
        if self.blocks_per_axis is None:
            return (self.cube_size,) * len(shape)
        return tuple(-(-int(n) // self.blocks_per_axis) for n in shape)


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
    patterns = torch.from_numpy(checkerboard_masks(image.shape[1:], cfg.cube_edges(image.shape[1:])))
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    error_sum = torch.zeros(image.shape[1:], dtype=torch.float64)
    hidden_count = torch.zeros(image.shape[1:], dtype=torch.float64)

    def hide(runs: list[int]) -> torch.Tensor:  # (B, 1, X, Y, Z): True = to in-paint
        return patterns[[r % 2 for r in runs]].unsqueeze(1)

    for runs, filled in sample_runs(model, data, cfg, seed, subject, on_step, hide):
        error = (filled - data.unsqueeze(0)).abs().sum(dim=1).double()  # (B, X, Y, Z)
        hidden_b = hide(runs).squeeze(1)
        error_sum += torch.where(hidden_b, error, 0.0).sum(0)
        hidden_count += hidden_b.double().sum(0)
    heatmap = (error_sum / hidden_count.clamp_min(1.0)).numpy()
    return np.where(brain, heatmap, 0.0).astype(np.float32)


@dataclass(frozen=True)
class InpaintDetector(SamplerDetector):
    """The score model, the ``inpaint`` settings and the run's seed (each subject's runs are seeded from it)."""

    cfg: InpaintConfig
    config_class: ClassVar[type[SamplerSettings]] = InpaintConfig
    label: ClassVar[str] = "Inpaint heatmaps"

    def path_settings(self) -> str:
        return f", cubes of {'x'.join(map(str, self.cfg.cube_edges(self.model.net.image_shape)))} voxels"

    def heatmap(self, case: Case) -> np.ndarray:
        return inpaint_heatmap(self.model, case.image, case.brain, self.cfg, self.seed, case.image_id, case.on_step)
