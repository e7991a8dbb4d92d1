"""Image-level MSMA (Mahmood et al. 2021): a Gaussian mixture on whole-image score norms, and a look at
how the patch score norms of lesion voxels differ from healthy ones.

This is the non-spatial ancestor of Spatial-MSMA and the density model behind the GradCAM-MSMA baseline:
an image is scored by the negative log-likelihood of its log whole-image norms under a GMM fitted on the
training images. It was near chance for 20 mL of lesion in a whole brain before this workflow (see
benchmarks/README.md), which is the paper's motivation for going spatial; the AUROC table here says
whether that holds for this run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from spatial_msma import io
from spatial_msma.io import InputError, as_path_list, check_number, config_section
from spatial_msma.score.cache import read_manifest, same_levels

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: Healthy voxels kept per image for the distribution figure (a seeded subsample; lesion voxels all kept).
HEALTHY_SAMPLE_PER_IMAGE = 20000

#: Floor for image norms before the log: an untrained (zero-output) network gives norms of exactly 0.
NORM_FLOOR = 1e-12


@dataclass(frozen=True)
class MsmaImageConfig:
    """The ``msma_image`` config section. ``n_levels`` null uses every cached level; fewer picks an evenly
    spaced subset of the cached ones (the authors' image-level GMM used 10)."""

    n_levels: int | None = 10
    n_components: int = 1
    covariance_type: str = "full"
    reg_covar: float = 1e-6

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object] | None) -> MsmaImageConfig:
        out = cls(**config_section(cls, cfg, "msma_image"))  # type: ignore[arg-type]
        out.check("msma_image")
        return out

    def check(self, section: str) -> None:
        """Check the GMM's keys, named as in config ``section`` (GradCAM-MSMA's section holds them too)."""
        if self.covariance_type not in COVARIANCE_TYPES:
            raise InputError(f"config {section}.covariance_type: expected one of {COVARIANCE_TYPES}, "
                             f"got {self.covariance_type!r}")
        check_number(self.n_components, f"{section}.n_components", 1, integer=True)
        check_number(self.n_levels, f"{section}.n_levels", 1, integer=True, optional=True)
        check_number(self.reg_covar, f"{section}.reg_covar", 0, above=True)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def select_levels(n_cached: int, n_levels: int | None) -> np.ndarray:
    """Indices of ``n_levels`` evenly spaced cached levels (all when None), ends included."""
    if n_levels is None or n_levels == n_cached:
        return np.arange(n_cached)
    if n_levels > n_cached:
        raise InputError(f"config msma_image.n_levels: {n_levels} requested but the score-norm cache holds "
                         f"{n_cached} levels (raise score_norms.n_levels or lower msma_image.n_levels)")
    return np.unique(np.round(np.linspace(0, n_cached - 1, n_levels)).astype(int))


def image_features(image_norms: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(N, L) whole-image norms -> (N, len(levels)) log norms: the scales differ by orders of magnitude."""
    return np.log(np.maximum(np.asarray(image_norms, np.float64)[:, levels], NORM_FLOOR))


def fit_image_gmm(features: np.ndarray, cfg: MsmaImageConfig, seed: int) -> GaussianMixture:
    """Fit the GMM on training features; fewer images than components is an error that says so."""
    if len(features) < max(cfg.n_components, 2):
        raise InputError(f"msma_image: {len(features)} training images cannot fit {cfg.n_components} components")
    gmm = GaussianMixture(n_components=cfg.n_components, covariance_type=cfg.covariance_type,
                          reg_covar=cfg.reg_covar, random_state=seed)
    return gmm.fit(features)


@dataclass
class ImageNorms:
    """Whole-image norms (N, L) of one set, with its subject names and sigma levels."""

    name: str
    subjects: list[str]
    image_norms: np.ndarray
    sigmas: np.ndarray


def read_image_norms(name: str, manifest: str | os.PathLike) -> ImageNorms:
    """Whole-image norms of the set a score-norm manifest lists (only those kept: the patch norms of a
    paper-sized set would not fit in memory)."""
    subjects, norms, sigmas = [], [], None
    for cache in read_manifest(manifest).caches():
        subjects.append(cache.subject)
        norms.append(cache.image_norms)
        sigmas = cache.sigmas
    if sigmas is None:
        raise InputError(f"msma_image: the {name} set has no score-norm files")
    return ImageNorms(name, subjects, np.stack(norms), sigmas)


def lesion_vs_healthy_samples(
    lesioned: str | os.PathLike, lesion_masks: Sequence[str | os.PathLike], seed: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch norms (as float32, (n, L)) at all lesion voxels and at a seeded sample of healthy brain voxels.

    ``lesioned`` is the score-norm manifest of the lesioned set, ``lesion_masks`` in its order. Healthy =
    brain mask minus the lesion mask dilated by one voxel: a 3x3x3 patch norm next to a lesion already sees
    it. Read image by image, so paper-sized sets need not fit in memory. ``transform`` maps each image's
    (L, X, Y, Z) norms before sampling (the same voxels are drawn either way).
    """
    caches = read_manifest(lesioned)
    lesion_masks = as_path_list(lesion_masks)
    if len(caches) != len(lesion_masks):
        raise InputError(f"msma_image: {len(caches)} lesioned caches but {len(lesion_masks)} lesion masks")
    rng = np.random.default_rng(seed)
    lesion, healthy = [], []
    for cache, mask_path in zip(caches.caches(), lesion_masks, strict=True):
        gt, _ = io.read_mask(mask_path)
        brain = cache.mask
        if gt.shape != brain.shape:
            raise InputError(f"lesion mask {mask_path}: shape {gt.shape} differs from cache {cache.path} "
                             f"{brain.shape}")
        near = ndimage.binary_dilation(gt, structure=np.ones((3, 3, 3), bool))
        patch = cache.patch_norms if transform is None else transform(cache.patch_norms)
        lesion.append(patch[:, gt & brain].T.astype(np.float32))
        idx = np.flatnonzero(brain & ~near)
        pick = rng.choice(idx, size=min(len(idx), HEALTHY_SAMPLE_PER_IMAGE), replace=False)
        healthy.append(patch.reshape(len(patch), -1)[:, np.sort(pick)].T.astype(np.float32))
    return np.concatenate(lesion), np.concatenate(healthy)


def run_msma_image(
    train: str | os.PathLike,
    val: str | os.PathLike,
    test: str | os.PathLike,
    test_lesioned: str | os.PathLike,
    lesion_masks: Sequence[str | os.PathLike],
    auroc_out: str | os.PathLike,
    figure_out: str | os.PathLike,
    scores_out: str | os.PathLike | None,
    cfg: Mapping[str, object] | MsmaImageConfig,
    seed: int,
    logger: logging.Logger | None = None,
) -> pd.DataFrame:
    """Fit the image-level GMM on train, score every set, write the AUROC table, the per-image scores and
    the score-norm figure; returns the AUROC table.

    AUROC rows: the GMM negative log-likelihood, and each single level's log image norm (higher = more
    anomalous), for lesioned test images (positive) against their lesion-free originals (negative).
    """
    logger = logger or logging.getLogger("spatial_msma")
    cfg = cfg if isinstance(cfg, MsmaImageConfig) else MsmaImageConfig.from_dict(cfg)
    named = (("train", train), ("val", val), ("test", test), ("test_lesioned", test_lesioned))
    sets = [read_image_norms(name, manifest) for name, manifest in named]
    by_name = {s.name: s for s in sets}
    sigmas = by_name["train"].sigmas
    for s in sets:
        if not same_levels(s.sigmas, sigmas):
            raise InputError(f"msma_image: the {s.name} caches have other sigma levels than the train caches")
    levels = select_levels(len(sigmas), cfg.n_levels)
    gmm = fit_image_gmm(image_features(by_name["train"].image_norms, levels), cfg, seed)
    nll = {s.name: -gmm.score_samples(image_features(s.image_norms, levels)) for s in sets}

    pos, neg = by_name["test_lesioned"], by_name["test"]
    labels = np.r_[np.ones(len(pos.subjects)), np.zeros(len(neg.subjects))]
    rows = [{"feature": "gmm_nll", "sigma": np.nan, "auroc": safe_auroc(labels, np.r_[nll[pos.name], nll[neg.name]])}]
    for i, sigma in enumerate(sigmas):
        score = np.log(np.maximum(np.r_[pos.image_norms[:, i], neg.image_norms[:, i]], NORM_FLOOR))
        rows.append({"feature": f"image_norm_level_{i}", "sigma": float(sigma), "auroc": safe_auroc(labels, score)})
    table = pd.DataFrame(rows)
    table.insert(1, "n_lesioned", len(pos.subjects))
    table.insert(2, "n_lesion_free", len(neg.subjects))
    table["n_levels"] = len(levels)
    table["n_components"] = cfg.n_components
    io.write_table(table, auroc_out)
    logger.info("image-level MSMA: GMM NLL AUROC %.3f (%d lesioned vs %d lesion-free test images)",
                rows[0]["auroc"], len(pos.subjects), len(neg.subjects))
    if scores_out is not None:
        scores = pd.concat([pd.DataFrame({"set": s.name, "subject": s.subjects, "gmm_nll": nll[s.name]}) for s in sets])
        io.write_table(scores, scores_out)

    lesion, healthy = lesion_vs_healthy_samples(test_lesioned, lesion_masks, seed)
    plot_score_norms(lesion, healthy, sigmas, nll, float(rows[0]["auroc"]), figure_out)
    return table


def safe_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (instead of sklearn's exception)."""
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def plot_score_norms(
    lesion: np.ndarray, healthy: np.ndarray, sigmas: np.ndarray, nll: Mapping[str, np.ndarray],
    image_auroc: float, path: str | os.PathLike, max_panels: int = 10,
) -> None:
    """Per level: log10 patch score norms of lesion vs healthy brain voxels, with the voxel AUROC; last panel:
    the image-level GMM NLL of every set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = select_levels(len(sigmas), min(len(sigmas), max_panels))
    n_panels = len(shown) + 1
    n_cols = min(4, n_panels)
    n_rows = -(-n_panels // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 2.7 * n_rows), squeeze=False)
    flat = axes.ravel()
    for ax, i in zip(flat, shown, strict=False):
        h = np.log10(np.maximum(healthy[:, i], NORM_FLOOR))
        if len(lesion):
            les = np.log10(np.maximum(lesion[:, i], NORM_FLOOR))
            bins = np.linspace(*np.percentile(np.r_[h, les], [0.1, 99.9]), 60)
            ax.hist(h, bins=bins, density=True, alpha=0.55, color="tab:blue", label=f"healthy ({len(h)})")
            ax.hist(les, bins=bins, density=True, alpha=0.55, color="tab:red", label=f"lesion ({len(les)})")
            auc = safe_auroc(np.r_[np.ones(len(les)), np.zeros(len(h))], np.r_[les, h])
            ax.set_title(f"sigma {sigmas[i]:.3g}: voxel AUROC {auc:.2f}", fontsize=9)
        else:
            ax.hist(h, bins=60, density=True, alpha=0.55, color="tab:blue", label=f"healthy ({len(h)})")
            ax.set_title(f"sigma {sigmas[i]:.3g}: no lesion voxels", fontsize=9)
        ax.set_xlabel("log10 patch score norm", fontsize=8)
        ax.tick_params(labelsize=7)
    flat[0].legend(fontsize=7)
    ax = flat[len(shown)]
    for k, values in enumerate(nll.values()):
        jitter = np.random.default_rng(k).uniform(-0.15, 0.15, len(values))
        ax.plot(np.full(len(values), k) + jitter, values, "o", ms=4, alpha=0.7)
    ax.set_xticks(range(len(nll)), list(nll), fontsize=7, rotation=20)
    ax.set_yscale("symlog", linthresh=10.0)
    ax.set_ylabel("GMM NLL (symlog)", fontsize=8)
    ax.set_title(f"image-level MSMA: AUROC {image_auroc:.2f}", fontsize=9)
    ax.tick_params(labelsize=7)
    for ax in flat[n_panels:]:
        ax.axis("off")
    fig.suptitle("Patch score norms at the clean image: lesion vs healthy brain voxels (lesioned test images)",
                 fontsize=10)
    fig.tight_layout()
    io.save_figure(fig, path)
