"""The one per-image detector interface, and the one writer that runs a detector over an image set.

Every method (:mod:`spatial_msma.methods`) turns one image into a heatmap through :class:`Detector`; the
rules differ only in how they build their detector. :func:`write_set_heatmaps` is then the only place
that reads a set's images and brain masks, masks the heatmaps, names the files (``{subject}.nii.gz``, the
evaluation's data contract), writes them atomically and logs progress, so no method can drift from the
others in any of that. No torch here: the intensity z-score runs in the environment without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from spatial_msma import io
from spatial_msma.lesions.volumes import IMAGE_SUFFIX, subject_of
from spatial_msma.progress import Progress

MASK_SUFFIX = "_brainmask.nii.gz"


def _no_progress(step: int) -> None:
    """The default progress sink of a :class:`Case` scored outside :func:`write_set_heatmaps`."""


@dataclass(frozen=True)
class Case:
    """One image as a detector sees it.

    ``image`` (C, X, Y, Z) float32, read from ``image_path``, and its ``affine``; ``brain`` (X, Y, Z) bool;
    ``image_id`` (the subject, or ``{subject}_draw-{k}`` for a lesioned volume) names the image's other files
    (its heatmap, its score-norm cache) and seeds the sampling detectors per image; ``on_step(k)``: call
    after the k-th of a detector's :attr:`Detector.steps_per_image` steps, so
    a slow image still reports progress.
    """

    image_id: str
    image: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    image_path: Path
    on_step: Callable[[int], None] = field(default=_no_progress, repr=False)


class ImageScorer(Protocol):
    """What anything that works through an image set one image at a time tells its log and progress.

    ``label`` names it in log lines; ``steps_per_image`` is how many progress steps one image takes (sampler
    steps; 1 for a single pass); ``settings`` is one log line saying what it computes and on which device.
    """

    @property
    def label(self) -> str: ...

    @property
    def steps_per_image(self) -> int: ...

    def settings(self) -> str: ...


class Detector(ImageScorer, Protocol):
    """A method's trained model(s) and settings, ready to score images one at a time: ``heatmap(case)``
    returns an (X, Y, Z) float32 map, larger = more anomalous, of the case's grid; the writer sets it to 0
    outside the brain.
    """

    def heatmap(self, case: Case) -> np.ndarray: ...


def subject_of_mask(path: str | os.PathLike) -> str:
    """The subject of a brain-mask file ``{subject}_brainmask.nii.gz``."""
    name = Path(path).name
    if not name.endswith(MASK_SUFFIX):
        raise io.InputError(f"brain mask {path}: expected a file named {{subject}}{MASK_SUFFIX}")
    return name.removesuffix(MASK_SUFFIX)


def image_id_of(path: str | os.PathLike) -> str:
    """The id of an image file: ``results/cropped/{subject}.nii.gz`` or ``results/lesions/{volume}_image.nii.gz``."""
    name = Path(path).name
    if not name.endswith(".nii.gz"):
        raise io.InputError(f"image {path}: expected a .nii.gz file named by its subject or lesioned volume")
    return name.removesuffix(IMAGE_SUFFIX) if name.endswith(IMAGE_SUFFIX) else name.removesuffix(".nii.gz")


def read_case(image_path: str | os.PathLike, mask_path: str | os.PathLike,
              on_step: Callable[[int], None] = _no_progress) -> Case:
    """Read one image and its subject's brain mask (``{subject}_brainmask.nii.gz``) as a :class:`Case`."""
    image_id = image_id_of(image_path)
    if subject_of(image_id) != subject_of_mask(mask_path):
        raise io.InputError(f"image {image_path} is paired with the brain mask of another subject: {mask_path}")
    image, affine = io.read_channels(image_path)
    brain, _ = io.read_mask(mask_path)
    if brain.shape != image.shape[1:]:
        raise io.InputError(f"brain mask {mask_path}: shape {brain.shape} differs from image {image_path} "
                            f"{image.shape[1:]}")
    return Case(image_id, image, brain, affine, Path(image_path), on_step)


def masked(heat: np.ndarray, case: Case, label: str) -> np.ndarray:
    """A detector's map as written: checked against the case's grid, float32, 0 outside the brain."""
    if heat.shape != case.brain.shape:
        raise io.InputError(f"{label}: heatmap of {case.image_id} has shape {heat.shape}, the image "
                            f"{case.brain.shape}")
    return np.where(case.brain, heat, 0.0).astype(np.float32)


def write_set_heatmaps(detector: Detector, images: Sequence[str | os.PathLike],
                       masks: Sequence[str | os.PathLike], out_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
                       logger: logging.Logger | None = None) -> None:
    """Score every image of a set: ``out_dir/{image_id}.nii.gz`` per (image, brain mask) pair.

    ``out_dir`` may instead map the names of a detector's several heatmap forms (``detector.heatmaps(case)``,
    e.g. a residual baseline's Table-1 form and the paper's raw one, made from one estimate) to one folder
    each. Progress (steps/s, ETA) counts the detector's steps over the whole set, so a set of slow sampler
    runs reports within an image, and a set of one-pass detectors per image.
    """
    logger = logger or logging.getLogger("spatial_msma")
    images, masks = [str(p) for p in images], [str(p) for p in masks]
    if len(images) != len(masks):
        raise io.InputError(f"{detector.label}: {len(images)} images but {len(masks)} brain masks")
    logger.info("%s: %d images; %s", detector.label, len(images), detector.settings())
    outs = {name: Path(path) for name, path in out_dir.items()} if isinstance(out_dir, Mapping) else {"": Path(out_dir)}
    for out in outs.values():
        out.mkdir(parents=True, exist_ok=True)
    per_image = detector.steps_per_image
    progress = Progress(len(images) * per_image, detector.label, logger)
    for done, (image_path, mask_path) in enumerate(zip(images, masks, strict=True)):

        def on_step(k: int, base: int = done * per_image, done: int = done) -> None:
            if k < per_image:  # the image's last step is reported below, with the image counted
                progress.update(base + k, images=done)

        case = read_case(image_path, mask_path, on_step)
        heatmaps = detector.heatmaps(case) if isinstance(out_dir, Mapping) else {"": detector.heatmap(case)}
        for name, out in outs.items():
            io.write_nifti(masked(heatmaps[name], case, detector.label), case.affine, out / f"{case.image_id}.nii.gz")
        progress.update((done + 1) * per_image, images=done + 1)
    logger.info("%s: heatmaps of %d images in %s", detector.label, len(images), ", ".join(map(str, outs.values())))
