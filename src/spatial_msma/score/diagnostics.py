"""Where the lesion signal sits across noise levels: per-level AUROCs of the cached score norms.

Spatial-MSMA can only find what the score norms carry. Before blaming (or tuning) the flow, this table
says, level by level, how well the patch norm separates lesion voxels from healthy brain voxels (voxel
AUROC) and how well the whole-image norm separates lesioned images from their lesion-free originals (image
AUROC). Two voxel AUROCs: of the raw norm, and of the norm standardised at each voxel against the healthy
training images (z of the log norm, mean/SD pooled over 3x3x3 neighbours like the voxel Gaussian). The raw
norm mostly maps anatomy (tissue edges have large norms, the smooth white matter where lesions sit has
small ones), so its AUROC can sit near 0.5 while the standardised one, which is what a position-aware
density model sees, is well above it (the per-level diagnostics of benchmarks/README.md). Before this
workflow the signal was found at the lowest levels only (sigma up to about 1 on [-1, 1] images); a run's
table says whether that holds for its score model and noise range. Computed on the lesioned validation set
(the one choices may look at) and on the test set (reported, never tuned on).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.cache import read_manifest, same_levels
from spatial_msma.score.msma import NORM_FLOOR, lesion_vs_healthy_samples, read_image_norms, safe_auroc

PathLike = str | os.PathLike

#: Neighbourhood (voxels per side) the per-voxel reference pools over, as the voxel Gaussian's default.
REFERENCE_POOL = 3

#: Floor of the reference SD of the log norm (a voxel whose training images all agree is not infinitely sure).
REFERENCE_SD_FLOOR = 0.05


def voxel_reference(train: PathLike, pool: int = REFERENCE_POOL) -> tuple[np.ndarray, np.ndarray]:
    """Per-level, per-voxel mean and SD (L, X, Y, Z) of the log patch norms of healthy training images.

    ``train`` is the training set's score-norm manifest. Pooled over ``pool``^3 neighbours of every image
    (in-brain voxels only), so each voxel's statistics rest on pool^3 times the number of images; voxels no
    training image covers get mean 0 and SD 1.
    """
    total = squares = count = None
    for cache in read_manifest(train).caches():
        brain = cache.mask
        log_norm = np.where(brain, np.log(np.maximum(cache.patch_norms.astype(np.float64), NORM_FLOOR)), 0.0)
        if total is None:
            total, squares, count = np.zeros_like(log_norm), np.zeros_like(log_norm), np.zeros(brain.shape)
        total += log_norm
        squares += log_norm**2
        count += brain
    if total is None:
        raise InputError(f"score-level diagnostics: no training caches in {train} for the per-voxel reference")
    size = (1, pool, pool, pool)
    n = ndimage.uniform_filter(count, size=pool, mode="constant")[None]
    mean = ndimage.uniform_filter(total, size=size, mode="constant")
    second = ndimage.uniform_filter(squares, size=size, mode="constant")
    covered = n > 0
    mean = np.where(covered, mean / np.where(covered, n, 1.0), 0.0)
    var = np.where(covered, second / np.where(covered, n, 1.0) - mean**2, 1.0)
    return mean.astype(np.float32), np.sqrt(np.maximum(var, REFERENCE_SD_FLOOR**2)).astype(np.float32)


def level_aurocs(
    lesioned: PathLike, lesion_free: PathLike, lesion_masks: Sequence[PathLike], seed: int,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per cached level: sigma, voxel AUROC of the patch norm, image AUROC of the whole-image norm.

    ``lesioned`` / ``lesion_free``: score-norm manifests of the same subjects with and without lesions;
    ``lesion_masks`` in the order of ``lesioned``. Higher norm = more anomalous for both AUROCs, so a value
    below 0.5 means the level sees lesions as unusually LOW norms. ``reference``: the per-voxel (mean, SD) of
    :func:`voxel_reference`, which adds ``voxel_auroc_standardised`` (AUROC of the per-voxel z).
    """
    pos = read_image_norms("lesioned", lesioned)
    neg = read_image_norms("lesion-free", lesion_free)
    if not same_levels(pos.sigmas, neg.sigmas):
        raise InputError("score-level diagnostics: lesioned and lesion-free caches have different sigma levels")
    lesion, healthy = lesion_vs_healthy_samples(lesioned, lesion_masks, seed)
    if not len(lesion):
        raise InputError("score-level diagnostics: the lesion masks hold no voxel inside the brain")
    voxel_labels = np.r_[np.ones(len(lesion)), np.zeros(len(healthy))]
    z_lesion = z_healthy = None
    if reference is not None:
        mean, sd = reference

        def standardise(patch: np.ndarray) -> np.ndarray:
            if patch.shape != mean.shape:
                raise InputError(f"score-level diagnostics: caches of shape {patch.shape} but a reference of "
                                 f"{mean.shape}")
            return (np.log(np.maximum(patch, NORM_FLOOR)) - mean) / sd

        z_lesion, z_healthy = lesion_vs_healthy_samples(lesioned, lesion_masks, seed, standardise)
    image_labels = np.r_[np.ones(len(pos.subjects)), np.zeros(len(neg.subjects))]
    rows = []
    for level, sigma in enumerate(pos.sigmas):
        image_scores = np.log(np.maximum(np.r_[pos.image_norms[:, level], neg.image_norms[:, level]], NORM_FLOOR))
        rows.append({
            "level": level,
            "sigma": float(sigma),
            "voxel_auroc": safe_auroc(voxel_labels, np.r_[lesion[:, level], healthy[:, level]]),
            "voxel_auroc_standardised": (safe_auroc(voxel_labels, np.r_[z_lesion[:, level], z_healthy[:, level]])
                                         if z_lesion is not None else np.nan),
            "image_auroc": safe_auroc(image_labels, image_scores),
            "lesion_voxels": len(lesion),
            "healthy_voxels": len(healthy),
            "lesioned_images": len(pos.subjects),
            "lesion_free_images": len(neg.subjects),
        })
    return pd.DataFrame(rows)


def write_level_diagnostics(
    sets: Mapping[str, tuple[PathLike, PathLike, Sequence[PathLike]]],
    train: PathLike, table_out: PathLike, figure_out: PathLike, seed: int,
) -> pd.DataFrame:
    """Per-level AUROCs of each named split (``{split: (lesioned manifest, lesion-free manifest, lesion
    masks)}``), the standardised voxel AUROC against the ``train`` manifest's caches: CSV + figure."""
    reference = voxel_reference(train)
    table = pd.concat([level_aurocs(*paths, seed, reference).assign(split=split) for split, paths in sets.items()],
                      ignore_index=True)
    table = table[["split", *[c for c in table.columns if c != "split"]]]
    io.write_table(table, table_out)
    plot_level_aurocs(table, figure_out)
    return table


def plot_level_aurocs(table: pd.DataFrame, path: PathLike) -> None:
    """Voxel (raw and standardised) and image AUROC against sigma (log axis), one line per split; 0.5 = no
    signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("voxel_auroc", "raw patch norm:\nlesion vs healthy brain voxels"),
              ("voxel_auroc_standardised", "patch norm standardised per voxel\n(z vs healthy training images)"),
              ("image_auroc", "whole-image norm:\nlesioned vs lesion-free images")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4), sharey=True)
    for ax, (column, title) in zip(axes, panels, strict=True):
        for split, frame in table.groupby("split", sort=False):
            n = frame["lesioned_images"].iloc[0]
            ax.plot(frame["sigma"], frame[column], "o-", label=f"{split} ({n} lesioned images)")
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("noise level sigma")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUROC (higher norm = anomalous)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Which noise levels carry the lesion signal", fontsize=11)
    fig.tight_layout()
    io.save_figure(fig, path)
