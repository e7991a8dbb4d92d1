"""The healthy estimators of the reconstruction baselines, by method key: one place that knows which class
each method's model file and config section make, so the heatmap and the residual-reference jobs (and the
benchmarks) build them alike."""

from __future__ import annotations

import os
from collections.abc import Mapping

from spatial_msma.baselines.ae import AeDetector
from spatial_msma.baselines.inpaint import InpaintDetector
from spatial_msma.baselines.residual import HealthyEstimator
from spatial_msma.baselines.restoration import RestorationDetector
from spatial_msma.io import InputError
from spatial_msma.methods import residual_keys


def load_estimator(method: str, model_path: str | os.PathLike, cfg: Mapping[str, object],
                   seed: int) -> HealthyEstimator:
    """The estimator of reconstruction baseline ``method`` from its model file (the AE's, or the score model
    for the samplers) and its config section; ``seed`` seeds the samplers' runs (the AE ignores it)."""
    if method == "ae":
        return AeDetector.load(model_path, cfg)
    if method == "inpaint":
        return InpaintDetector.load(model_path, cfg, seed)
    if method == "restoration":
        return RestorationDetector.load(model_path, cfg, seed)
    raise InputError(f"{method!r} is not a reconstruction baseline ({', '.join(residual_keys())})")
