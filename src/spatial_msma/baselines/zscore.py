"""The intensity z-score: the simplest normative model there is, and the floor every learned detector must clear.

Per voxel and channel, the mean and standard deviation of the healthy TRAINING images; a test image's heatmap
is ``sum_c |x_c - mean_c| / sd_c`` inside its brain mask. The SD gets a floor (``sd_floor``, in the [-1, 1]
units of the preprocessed images) so voxels where every training subject happens to agree -- background
near the mask edge, say -- cannot produce unbounded scores. numpy only: it runs without torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from spatial_msma.io import InputError, atomic_path, read_channels

if TYPE_CHECKING:
    from spatial_msma.detector import Case


def fit_zscore(images: Sequence[str | os.PathLike], sd_floor: float) -> dict[str, np.ndarray]:
    """Voxelwise mean and floored SD over ``images`` (each (C, X, Y, Z) on the shared cropped grid).

    Read twice, one image at a time (the mean, then the squared deviations from it), so memory does not
    grow with the training set. The float64 sums run in image order, as numpy's ``mean`` and
    ``std(ddof=1)`` over the stacked images do (a reduction over the first axis adds row by row): the same
    floats as the stacked computation this replaced.
    """
    if len(images) < 2:
        raise InputError(f"z-score model: needs at least 2 training images, got {len(images)}")
    total = None
    for volume in _volumes(images):
        total = volume if total is None else total + volume
    mean = total / len(images)
    squares = None
    for volume in _volumes(images):
        deviation = volume - mean
        deviation *= deviation
        squares = deviation if squares is None else squares + deviation
    return {
        "mean": mean.astype(np.float32),
        "sd": np.maximum(np.sqrt(squares / (len(images) - 1)), sd_floor).astype(np.float32),
        "n_images": np.array(len(images)),
    }


def _volumes(images: Sequence[str | os.PathLike]) -> Iterator[np.ndarray]:
    """The images as float64, one at a time, each checked to share the first one's shape."""
    shape = None
    for path in images:
        volume = read_channels(path)[0].astype(np.float64)
        shape = shape or volume.shape
        if volume.shape != shape:
            raise InputError(f"z-score model: image {path} has shape {volume.shape}, {images[0]} has {shape}")
        yield volume


def write_zscore_model(model: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a model of :func:`fit_zscore` as an npz, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **model)


@dataclass(frozen=True)
class ZscoreDetector:
    """The fitted voxelwise mean and SD, (C, X, Y, Z) each."""

    mean: np.ndarray
    sd: np.ndarray
    label: ClassVar[str] = "z-score heatmaps"
    steps_per_image: ClassVar[int] = 1

    @classmethod
    def load(cls, path: str | os.PathLike) -> ZscoreDetector:
        with np.load(path) as data:
            return cls(data["mean"], data["sd"])

    def settings(self) -> str:
        return f"sum over {self.mean.shape[0]} channels of |x - mean| / sd"

    def heatmap(self, case: Case) -> np.ndarray:
        """Sum over channels of |x - mean| / sd."""
        if case.image.shape != self.mean.shape:
            raise InputError(f"z-score heatmap: image shape {case.image.shape} != model shape {self.mean.shape}")
        return (np.abs(case.image - self.mean) / self.sd).sum(axis=0)
