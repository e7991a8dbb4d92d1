"""Where the lesion signal sits across noise levels: per-level AUROCs of the cached score norms.

Spatial-MSMA can only find what the score norms carry. Before blaming (or tuning) the flow, this table
says, level by level, how well the raw patch norm separates lesion voxels from healthy brain voxels
(voxel AUROC) and how well the whole-image norm separates lesioned images from their lesion-free
originals (image AUROC). measurements.md found the signal at the lowest levels only (sigma up to about 1
on [-1, 1] images); a run's table says whether that holds for its score model and noise range. Computed
on the lesioned validation set (the one choices may look at) and on the test set (reported, never tuned on).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from spatial_msma import io
from spatial_msma.io import InputError
from spatial_msma.score.msma import NORM_FLOOR, lesion_vs_healthy_samples, read_image_norms, safe_auroc

PathLike = str | os.PathLike


def level_aurocs(
    lesioned: Sequence[PathLike], lesion_free: Sequence[PathLike], lesion_masks: Sequence[PathLike], seed: int,
) -> pd.DataFrame:
    """One row per cached level: sigma, voxel AUROC of the patch norm, image AUROC of the whole-image norm.

    ``lesioned`` / ``lesion_free``: score-norm caches (or manifests) of the same subjects with and without
    lesions; ``lesion_masks`` in the order of ``lesioned``. Higher norm = more anomalous for both AUROCs, so
    a value below 0.5 means the level sees lesions as unusually LOW norms.
    """
    pos = read_image_norms("lesioned", lesioned)
    neg = read_image_norms("lesion-free", lesion_free)
    if not np.allclose(pos.sigmas, neg.sigmas, rtol=1e-5):
        raise InputError("score-level diagnostics: lesioned and lesion-free caches have different sigma levels")
    lesion, healthy = lesion_vs_healthy_samples(lesioned, lesion_masks, seed)
    if not len(lesion):
        raise InputError("score-level diagnostics: the lesion masks hold no voxel inside the brain")
    voxel_labels = np.r_[np.ones(len(lesion)), np.zeros(len(healthy))]
    image_labels = np.r_[np.ones(len(pos.subjects)), np.zeros(len(neg.subjects))]
    rows = []
    for level, sigma in enumerate(pos.sigmas):
        image_scores = np.log(np.maximum(np.r_[pos.image_norms[:, level], neg.image_norms[:, level]], NORM_FLOOR))
        rows.append({
            "level": level,
            "sigma": float(sigma),
            "voxel_auroc": safe_auroc(voxel_labels, np.r_[lesion[:, level], healthy[:, level]]),
            "image_auroc": safe_auroc(image_labels, image_scores),
            "lesion_voxels": len(lesion),
            "healthy_voxels": len(healthy),
            "lesioned_images": len(pos.subjects),
            "lesion_free_images": len(neg.subjects),
        })
    return pd.DataFrame(rows)


def write_level_diagnostics(
    sets: Mapping[str, tuple[Sequence[PathLike], Sequence[PathLike], Sequence[PathLike]]],
    table_out: PathLike, figure_out: PathLike, seed: int,
) -> pd.DataFrame:
    """Per-level AUROCs of each named split (``{split: (lesioned, lesion_free, lesion_masks)}``): CSV + figure."""
    table = pd.concat([level_aurocs(*paths, seed).assign(split=split) for split, paths in sets.items()],
                      ignore_index=True)
    table = table[["split", *[c for c in table.columns if c != "split"]]]
    io.write_table(table, table_out)
    plot_level_aurocs(table, figure_out)
    return table


def plot_level_aurocs(table: pd.DataFrame, path: PathLike) -> None:
    """Voxel and image AUROC against sigma (log axis), one line per split; 0.5 = no signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, column, title in zip(axes, ("voxel_auroc", "image_auroc"),
                                 ("patch score norm: lesion vs healthy brain voxels",
                                  "whole-image score norm: lesioned vs lesion-free images"), strict=True):
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
