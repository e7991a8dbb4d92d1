"""The Inpaint baseline (after Liu et al. 2023, "Lift, Map, Detect"): hide part of the image, let the score
model in-paint it, and score each voxel by how far the in-paintings land from what was there.

A 3D checkerboard of cubes (``cube_size`` voxels per edge, or ``blocks_per_axis`` blocks along each axis)
splits the grid into two complementary patterns. Run ``r`` hides pattern ``r % 2`` of run pair ``r // 2``'s
checkerboard (so every voxel is hidden once per pair; with ``random_offset`` each pair's checkerboard is
shifted by its own random offset, so the cube borders fall elsewhere), in-paints it with the SAME score
model as Spatial-MSMA by the predictor-corrector sampler of :mod:`spatial_msma.baselines.sampling` with
RePaint-style replacement of the visible cubes. The healthy estimate is, per voxel, the mean of its
in-paintings over the runs that hid it; the heatmap is the residual of that mean
(:mod:`spatial_msma.baselines.residual`: the authors' ``|mean - x|``, or standardised per voxel).
Healthy anatomy is predictable from its surroundings; a lesion is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from spatial_msma.baselines.sampling import SamplerDetector, SamplerSettings, run_seed, sample_runs
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

    Defaults (the 2-core CPU budget, where both sampler baselines share a few minutes for the ~60 volumes
    of val, test, their lesioned copies and the residual reference): batch 2, because batch 1 is slower per
    volume and larger batches are no faster (``benchmarks/sampler_speed.py``). 2 runs (a checkerboard and its
    complement, one batch: each voxel is in-painted once) x ``steps`` predictor steps, no corrector
    (``config/config.yaml`` sets 5 steps for the DAG budget). ``t_start`` 0.6 instead of 1: on images scaled
    to [-1, 1], a hidden cube at sigma(0.6) (several times the intensity range with the default model's
    sigma_max) is as good as pure noise, so the few steps are spent where the image forms. ``cube_size`` 2
    voxels (8 mm at 4 mm), the nearest to the authors' 3 voxels at 2 mm (6 mm), each run pair at its own
    random offset (``random_offset``). Runs, start time and cube size were compared on the lesioned
    validation split (``benchmarks/baseline_search.py``; the table in benchmarks/README.md).

    Why the row stays weak at laptop sizes: with 5 steps the in-paintings are blurred guesses whose residual
    is large wherever the anatomy has detail; the standardised residual form
    (:mod:`spatial_msma.baselines.residual`) removes the edge bias, not the guesswork. A better score model
    and more steps/runs are what this row needs.
    """

    section: ClassVar[str] = "inpaint"
    min_runs: ClassVar[int] = 2

    steps: int = 10
    t_start: float = 0.6
    cube_size: int = 2
    blocks_per_axis: int | None = None
    random_offset: bool = True

    def validate(self) -> None:
        super().validate()
        check_number(self.cube_size, "inpaint.cube_size", 1, integer=True)
        check_number(self.blocks_per_axis, "inpaint.blocks_per_axis", 2, integer=True, optional=True)
        if not isinstance(self.random_offset, bool):
            raise InputError(f"config inpaint.random_offset: expected true or false, got {self.random_offset!r}")

    def cube_edges(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Cube edge per axis: ``cube_size``, or ceil(n / blocks_per_axis) when that is set."""
        if self.blocks_per_axis is None:
            return (self.cube_size,) * len(shape)
        return tuple(-(-int(n) // self.blocks_per_axis) for n in shape)


def checkerboard_masks(shape: Sequence[int], cube_size: int | Sequence[int],
                       offset: Sequence[int] | None = None) -> np.ndarray:
    """(2, X, Y, Z) bool: a 3D checkerboard of cubes (``cube_size`` voxels per edge, one number or one per
    axis), shifted by ``offset`` voxels per axis, and its complement (partial cubes at the edges where a
    size does not divide); together they cover every voxel exactly once."""
    edges = np.broadcast_to(np.asarray(cube_size, dtype=np.int64), (len(shape),))
    if (edges < 1).any():
        raise InputError(f"checkerboard: cube sizes must be >= 1, got {cube_size}")
    shift = np.zeros(len(shape), dtype=np.int64) if offset is None else np.asarray(offset, dtype=np.int64)
    index = (np.indices(tuple(shape)) + shift.reshape(-1, *([1] * len(shape)))) // edges.reshape(
        -1, *([1] * len(shape)))
    pattern = index.sum(axis=0) % 2 == 0  # the cube at the (shifted) origin is in the first pattern
    return np.stack([pattern, ~pattern])


def run_pattern(shape: Sequence[int], cfg: InpaintConfig, seed: int, subject: str, run: int) -> np.ndarray:
    """(X, Y, Z) bool, the voxels run ``run`` hides: pattern ``run % 2`` of the checkerboard of run pair
    ``run // 2``, whose offset (0 .. cube edge - 1 per axis) is drawn from the run pair's own seed when
    ``random_offset`` is on, so successive pairs cut the anatomy at different places."""
    edges = cfg.cube_edges(shape)
    offset = None
    if cfg.random_offset:
        rng = np.random.default_rng(run_seed(seed, subject, run // 2, f"{cfg.section}.offset"))
        offset = rng.integers(0, np.asarray(edges))
    return checkerboard_masks(shape, edges, offset)[run % 2]


def inpaint_estimate(
    model: ScoreModel,
    image: np.ndarray,
    cfg: InpaintConfig,
    seed: int,
    subject: str = "",
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The healthy estimate of one (C, X, Y, Z) image: per voxel, the mean of its in-paintings over the runs
    that hid it (float32, same shape). ``on_step(k)`` counts sampler steps over all runs (``runs * steps``)."""
    shape = image.shape[1:]
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    filled_sum = torch.zeros(image.shape, dtype=torch.float64)
    hidden_count = torch.zeros(shape, dtype=torch.float64)

    def hide(runs: list[int]) -> torch.Tensor:  # (B, 1, X, Y, Z): True = to in-paint
        return torch.from_numpy(np.stack([run_pattern(shape, cfg, seed, subject, r) for r in runs]))[:, None]

    for runs, filled in sample_runs(model, data, cfg, seed, subject, on_step, hide):
        hidden_b = hide(runs)
        filled_sum += torch.where(hidden_b, filled.double(), 0.0).sum(0)
        hidden_count += hidden_b[:, 0].double().sum(0)
    if bool((hidden_count == 0).any()):
        raise InputError(f"Inpaint: {int((hidden_count == 0).sum())} voxels of {subject} never hidden")
    return (filled_sum / hidden_count).numpy().astype(np.float32)


@dataclass(frozen=True)
class InpaintDetector(SamplerDetector):
    """The score model, the ``inpaint`` settings and the run's seed (each subject's runs are seeded from it):
    a :class:`~spatial_msma.baselines.residual.HealthyEstimator`."""

    cfg: InpaintConfig
    config_class: ClassVar[type[SamplerSettings]] = InpaintConfig
    label: ClassVar[str] = "Inpaint heatmaps"

    def path_settings(self) -> str:
        return f", cubes of {'x'.join(map(str, self.cfg.cube_edges(self.model.net.image_shape)))} voxels"

    def estimate(self, case: Case) -> np.ndarray:
        return inpaint_estimate(self.model, case.image, self.cfg, self.seed, case.image_id, case.on_step)
