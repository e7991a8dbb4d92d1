"""The two ways a heatmap becomes a segmentation: the paper's per-subject oracle and a deployable FPR threshold.

Oracle (paper, Table 1): per test subject, the candidate threshold whose post-processed segmentation has
the lowest SYMMETRIC mean surface distance to the ground truth. It looks at the ground truth, so it is an
upper bound, not something a clinician could run.

Deployable (the authors' code): ONE threshold per method, fixed on healthy heatmaps before any lesion is
seen, at a healthy-voxel false-positive rate (5 %, 10 %) inside the evaluated region (the eroded brain mask),
and applied in that same region.
"""

from __future__ import annotations

import numpy as np

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.metrics import SurfaceDistances
from spatial_msma.evaluation.postprocess import segment


def oracle_candidates(heatmap: np.ndarray, brain: np.ndarray, cfg: EvaluationConfig) -> np.ndarray:
    """``oracle_n_thresholds`` values evenly spaced between two percentiles of the in-brain heatmap (code)."""
    lo, hi = np.percentile(heatmap[brain], cfg.oracle_percentiles)
    return np.linspace(lo, hi, cfg.oracle_n_thresholds)


def oracle_threshold(
    heatmap: np.ndarray,
    brain: np.ndarray,
    reference: np.ndarray,
    cfg: EvaluationConfig,
    rim: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The candidate threshold with the lowest symmetric MSD after post-processing.

    Returns (threshold, candidates, symmetric MSD per candidate; inf where a mask is empty). Ties go to
    the lowest threshold; if every candidate is undefined (empty ground truth, or no candidate leaves a
    component), the highest threshold is used, i.e. the fewest false positives.
    """
    distances = SurfaceDistances(reference)
    candidates = oracle_candidates(heatmap, brain, cfg)
    curve = np.array([distances.symmetric_msd(segment(heatmap, brain, t, cfg, rim)) for t in candidates])
    best = int(np.argmin(curve)) if np.isfinite(curve).any() else len(candidates) - 1
    return float(candidates[best]), candidates, curve


def fpr_thresholds(values: np.ndarray, levels: tuple[float, ...]) -> dict[float, float]:
    """Threshold per level so that ``mean(values > threshold)`` is the level (a quantile of the healthy voxels)."""
    if values.size == 0:
        raise ValueError("no healthy voxels to fit a false-positive-rate threshold on")
    return {float(f): float(np.quantile(values, 1.0 - f)) for f in levels}
