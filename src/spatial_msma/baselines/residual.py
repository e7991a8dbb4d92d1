"""Residual heatmaps of the reconstruction baselines (AE, Inpaint, Restoration), in two forms.

Each of these baselines makes a healthy-looking estimate ``x̂`` of the image (the AE's reconstruction, the
mean of the in-paintings, the mean of the restorations) and scores the residual ``r = x - x̂``:

- ``raw``, the papers' form: ``sum_c |r_c|`` (or ``r_c^2`` for ``ae.error: squared``). The residual of any
  smoothing estimate is largest at tissue boundaries, where intensity changes fastest, while the simulated
  lesions sit in smooth white matter: healthy edges outrank lesions, and the row lands below chance
  (measured on the default run: voxel AUROC 0.41-0.49).
- ``standardised``: ``sum_c |r_c - mean_c| / sd_c`` with the per-voxel mean and SD of the residual over
  healthy TRAINING images (``residual_heatmaps.reference_images`` of them, fitted once, like the intensity
  z-score; the SD floored at ``sd_floor`` so voxels where every reference image agrees cannot give
  unbounded scores): a voxel scores by how unusual its residual is for that voxel, not by how large
  residuals are there -- the standardisation that makes the z-score and Spatial-MSMA's flow per-voxel
  quantities. 10 reference images estimate a per-voxel SD to about +-25 %; each costs the sampler
  baselines one more estimate.

Averaging the estimates before taking the residual (the authors' ``|mean of the runs - x|``) cancels the
sampler's noise; averaging each run's ``|error|`` instead would add it as a floor. The heatmap job writes
both forms, so the paper-form rows stay available beside Table 1's (``results/diagnostics/paper_form*``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from spatial_msma.detector import ImageScorer
from spatial_msma.io import InputError, atomic_path
from spatial_msma.progress import Progress

if TYPE_CHECKING:
    from spatial_msma.detector import Case

FORMS = ("raw", "standardised")
ERRORS = ("abs", "squared")


class HealthyEstimator(ImageScorer, Protocol):
    """A reconstruction baseline's model: ``estimate(case)`` returns the (C, X, Y, Z) float32 healthy-looking
    estimate of the case's image."""

    def estimate(self, case: Case) -> np.ndarray: ...


def _error(values: np.ndarray, error: str) -> np.ndarray:
    if error == "abs":
        return np.abs(values).sum(axis=0)
    if error == "squared":
        return np.square(values).sum(axis=0)
    raise InputError(f"residual heatmap: error must be one of {ERRORS}, got {error!r}")


def raw_heatmap(image: np.ndarray, estimate: np.ndarray, error: str = "abs") -> np.ndarray:
    """``sum_c |x_c - x̂_c|`` (or squared), (X, Y, Z) float32."""
    return _error(image.astype(np.float64) - estimate, error).astype(np.float32)


def standardised_heatmap(image: np.ndarray, estimate: np.ndarray, reference: Mapping[str, np.ndarray],
                         error: str = "abs") -> np.ndarray:
    """``sum_c |r_c - mean_c| / sd_c`` (or its square) of the residual ``r = x - x̂`` against a reference
    of :func:`fit_reference`, (X, Y, Z) float32."""
    if reference["mean"].shape != image.shape:
        raise InputError(f"residual reference of shape {reference['mean'].shape} does not match the image "
                         f"{image.shape}")
    z = (image.astype(np.float64) - estimate - reference["mean"]) / reference["sd"]
    return _error(z, error).astype(np.float32)


def fit_reference(estimator: HealthyEstimator, cases: Sequence[Callable[[Callable[[int], None]], Case]],
                  sd_floor: float, logger: logging.Logger | None = None) -> dict[str, np.ndarray]:
    """Per-voxel, per-channel mean and SD (floored at ``sd_floor``) of the signed residual ``x - x̂`` over
    healthy images. ``cases`` are loaders (each takes the progress callback and returns a :class:`Case`),
    so only one image is in memory at a time. Sums in float64, in the given order: same inputs, same bytes."""
    if len(cases) < 2:
        raise InputError(f"{estimator.label}: the residual reference needs at least 2 images, got {len(cases)}")
    logger = logger or logging.getLogger("spatial_msma")
    per_image = estimator.steps_per_image
    progress = Progress(len(cases) * per_image, f"{estimator.label} (residual reference)", logger)
    total = total_sq = None
    for done, load in enumerate(cases):
        case = load(lambda k, base=done * per_image: progress.update(base + k) if k < per_image else None)
        residual = case.image.astype(np.float64) - estimator.estimate(case)
        total = residual if total is None else total + residual
        total_sq = residual**2 if total_sq is None else total_sq + residual**2
        progress.update((done + 1) * per_image, images=done + 1)
    n = len(cases)
    mean = total / n
    var = np.maximum(total_sq - n * mean**2, 0.0) / (n - 1)
    return {"mean": mean.astype(np.float32), "sd": np.maximum(np.sqrt(var), sd_floor).astype(np.float32),
            "n_images": np.array(n)}


def write_reference(reference: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a reference of :func:`fit_reference` as an npz, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **reference)


def read_reference(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        missing = {"mean", "sd"} - set(data.files)
        if missing:
            raise InputError(f"residual reference {path}: missing {sorted(missing)}")
        return {"mean": data["mean"], "sd": data["sd"]}


@dataclass(frozen=True)
class ResidualDetector:
    """A reconstruction baseline as a detector with two heatmap forms: Table 1's (``form``) and the paper's
    raw residual. ``reference`` (from :func:`fit_reference`) is needed for the standardised form only."""

    estimator: HealthyEstimator
    form: str
    reference: Mapping[str, np.ndarray] | None = None
    error: str = "abs"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise InputError(f"{self.estimator.label}: heatmap form must be one of {FORMS}, got {self.form!r}")
        if self.form == "standardised" and self.reference is None:
            raise InputError(f"{self.estimator.label}: the standardised form needs the residual reference")

    @property
    def label(self) -> str:
        return self.estimator.label

    @property
    def steps_per_image(self) -> int:
        return self.estimator.steps_per_image

    def settings(self) -> str:
        return f"{self.estimator.settings()}; heatmap: {self.form} residual ({self.error}), and the raw one"

    def heatmaps(self, case: Case) -> dict[str, np.ndarray]:
        """``{"table": Table 1's form, "raw": the paper's form}`` of one case (one estimate for both)."""
        estimate = self.estimator.estimate(case)
        raw = raw_heatmap(case.image, estimate, self.error)
        if self.form == "raw":
            return {"table": raw, "raw": raw}
        return {"table": standardised_heatmap(case.image, estimate, self.reference, self.error), "raw": raw}

    def heatmap(self, case: Case) -> np.ndarray:
        return self.heatmaps(case)["table"]
