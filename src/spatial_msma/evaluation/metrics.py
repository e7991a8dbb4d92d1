"""Per-subject metrics: surface distances, component detection, Dice, voxel AUROC/AUPRC, image score.

Reported distances come from MONAI (``compute_hausdorff_distance`` / ``compute_average_surface_distance``
with the REFERENCE as first argument, i.e. directed ground truth -> prediction, as in the paper).
The oracle threshold search evaluates 100 candidate segmentations per subject, so it uses
:class:`SurfaceDistances`, which reproduces MONAI's definition (surface = mask XOR its face-erosion,
exact Euclidean distances between surface voxels) but computes the distance map of the fixed ground-truth
surface once and reuses it; a test checks the two agree.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from sklearn.metrics import average_precision_score, roc_auc_score

from spatial_msma.evaluation.postprocess import label_components
from spatial_msma.lesions.size_bins import MS_MIST_BIN_EDGES_MM3

# MS-MIST's lesion-volume bins, as the simulator draws them. The first bin starts at 0 here: lesions shrink
# when resampled to the working grid, and every component must land in a bin.
_INNER_EDGES = MS_MIST_BIN_EDGES_MM3[1:]
SIZE_BIN_EDGES_MM3: tuple[float, ...] = (0.0, *_INNER_EDGES, np.inf)
SIZE_BIN_NAMES: tuple[str, ...] = (
    f"lt{_INNER_EDGES[0]:g}", *(f"{lo:g}_{hi:g}" for lo, hi in pairwise(_INNER_EDGES)), f"gt{_INNER_EDGES[-1]:g}")
SIZE_BIN_LABELS: tuple[str, ...] = (
    f"< {_INNER_EDGES[0]:g}", *(f"{lo:g}-{hi:g}" for lo, hi in pairwise(_INNER_EDGES)), f"> {_INNER_EDGES[-1]:g}")
HD_PERCENTILE = 99.0


def voxel_size(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm from an affine (column norms of its 3x3 part)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels as MONAI defines them: the mask XOR its erosion with face neighbours, zero border."""
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


class SurfaceDistances:
    """Surface distances against one fixed reference mask, cheap to query for many predictions.

    The distance map to the reference surface is computed once (``distance_transform_edt``); the
    reverse direction uses a KD-tree over the prediction's surface, exactly as MONAI does on CPU.
    """

    def __init__(self, reference: np.ndarray):
        ref_surface = surface(reference)
        self.ref_points = np.argwhere(ref_surface).astype(np.float64)
        self.to_ref = ndimage.distance_transform_edt(~ref_surface) if len(self.ref_points) else None

    def _ref_to_pred(self, pred_surface: np.ndarray) -> np.ndarray:
        """Distance from every reference surface voxel to the nearest prediction surface voxel."""
        tree = cKDTree(np.argwhere(pred_surface).astype(np.float64), leafsize=32)
        return tree.query(self.ref_points, k=1)[0]

    def symmetric_msd(self, prediction: np.ndarray) -> float:
        """MONAI's symmetric average surface distance (mean over both surfaces); inf if either is empty."""
        pred_surface = surface(prediction)
        if self.to_ref is None or not pred_surface.any():
            return float("inf")
        return float(np.concatenate([self._ref_to_pred(pred_surface), self.to_ref[pred_surface]]).mean())

    def directed(self, prediction: np.ndarray) -> tuple[float, float]:
        """(99th-percentile HD, mean surface distance) from reference to prediction; NaN if either is empty."""
        pred_surface = surface(prediction)
        if self.to_ref is None or not pred_surface.any():
            return float("nan"), float("nan")
        d = self._ref_to_pred(pred_surface)
        return float(np.percentile(d, HD_PERCENTILE)), float(d.mean())


def monai_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: np.ndarray | None = None
) -> tuple[float, float]:
    """Directed ground truth -> prediction (99th-percentile HD, MSD) from MONAI, the reported numbers.

    ``spacing=None`` gives voxel units (the paper's); a spacing gives mm. An empty prediction or
    reference has no surface to measure from or to: NaN, never 0 or inf (MONAI would return NaN/inf
    with a warning).
    """
    if not prediction.any() or not reference.any():
        return float("nan"), float("nan")
    import torch  # deferred with MONAI: a slow import that the table and figure jobs need not pay
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    ref = torch.from_numpy(reference.astype(np.float32)[None, None])
    pred = torch.from_numpy(prediction.astype(np.float32)[None, None])
    spacing_arg = None if spacing is None else [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(
            ref, pred, include_background=True, directed=True, percentile=HD_PERCENTILE, spacing=spacing_arg
        )
        msd = compute_average_surface_distance(
            ref, pred, include_background=True, symmetric=False, spacing=spacing_arg
        )
    return float(hd.item()), float(msd.item())


@dataclass(frozen=True)
class ComponentCounts:
    """Component-wise detection counts for one subject.

    Following the paper: a predicted component overlapping any ground-truth voxel is a true positive
    (``pred_tp``), otherwise a false positive (``pred_fp``); a ground-truth component with no overlap is a
    false negative (``gt_missed``), one with overlap is ``gt_detected``.
    """

    gt_detected: int
    gt_missed: int
    pred_tp: int
    pred_fp: int
    bin_detected: tuple[int, ...]
    bin_missed: tuple[int, ...]

    @property
    def tpr(self) -> float:
        """Fraction of ground-truth lesions found (the paper: "identified 83% of all lesions").

        Counted on the ground-truth side so a lesion split into several predicted pieces counts once.
        """
        n = self.gt_detected + self.gt_missed
        return self.gt_detected / n if n else float("nan")

    @property
    def ppv(self) -> float:
        """Fraction of predicted components that hit a lesion; NaN for an empty prediction."""
        n = self.pred_tp + self.pred_fp
        return self.pred_tp / n if n else float("nan")


def component_counts(
    reference: np.ndarray, prediction: np.ndarray, voxel_volume_mm3: float, connectivity: int = 3,
    labelled: bool = False,
) -> ComponentCounts:
    """Count detected/missed lesions (also per MS-MIST size bin) and true/false predicted components.

    ``labelled=False``: ``reference`` and ``prediction`` are masks, whose components are labelled here with
    ``connectivity``. ``labelled=True``: both are label images already (0 = background, one positive id per
    component, ids need not be consecutive), counted by id and never relabelled, so a component defined on
    another grid stays one component: the apply check's lesions, labelled on the template grid and carried
    to a finer native grid where resampling can leave the pieces of one lesion apart. An id without a voxel
    is not counted; ``connectivity`` is not used.
    """
    if labelled:
        ref_labels, pred_labels = np.asarray(reference, dtype=np.int64), np.asarray(prediction, dtype=np.int64)
    else:
        ref_labels = label_components(reference, connectivity)[0]
        pred_labels = label_components(prediction, connectivity)[0]
    ref_sizes = np.bincount(ref_labels.ravel())
    ref_present, pred_present = ref_sizes > 0, np.bincount(pred_labels.ravel()) > 0
    ref_present[0] = pred_present[0] = False  # the background
    hit_ref = np.zeros(len(ref_sizes), dtype=bool)
    hit_ref[ref_labels[pred_labels > 0]] = True
    hit_pred = np.zeros(len(pred_present), dtype=bool)
    hit_pred[pred_labels[ref_labels > 0]] = True
    detected = hit_ref[ref_present]
    volumes = ref_sizes[ref_present] * voxel_volume_mm3
    bins = np.searchsorted(np.asarray(SIZE_BIN_EDGES_MM3[1:-1]), volumes, side="right")
    n_bins = len(SIZE_BIN_NAMES)
    pred_tp = int((hit_pred & pred_present).sum())
    return ComponentCounts(
        gt_detected=int(detected.sum()),
        gt_missed=int((~detected).sum()),
        pred_tp=pred_tp,
        pred_fp=int(pred_present.sum()) - pred_tp,
        bin_detected=tuple(int(v) for v in np.bincount(bins[detected], minlength=n_bins)),
        bin_missed=tuple(int(v) for v in np.bincount(bins[~detected], minlength=n_bins)),
    )


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice overlap; NaN when both masks are empty."""
    total = int(reference.sum()) + int(prediction.sum())
    return 2.0 * int((reference & prediction).sum()) / total if total else float("nan")


def voxel_auroc_auprc(heatmap: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Voxel-level AUROC and AUPRC (average precision) over in-brain voxels; NaN without both classes."""
    y = reference[brain]
    if y.all() or not y.any():
        return float("nan"), float("nan")
    s = heatmap[brain]
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def lesion_contrast(heatmap: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> float:
    """(mean heatmap inside lesions - mean over the rest of the brain) / SD over the rest of the brain.

    A threshold-free, scale-free signal-to-noise figure: 0 = lesions look like healthy brain, 1 = lesions sit
    one healthy SD higher on average. NaN without lesion voxels or without healthy variation.
    """
    inside = reference & brain
    rest = brain & ~reference
    if not inside.any() or not rest.any():
        return float("nan")
    sd = float(heatmap[rest].std())
    return float((heatmap[inside].mean() - heatmap[rest].mean()) / sd) if sd > 0 else float("nan")


def best_dice(heatmap: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> float:
    """Best Dice over every threshold of the raw in-brain heatmap (no post-processing), computed exactly.

    Sorting the voxels once gives the Dice of every possible threshold from cumulative sums, instead of
    a coarse sweep; ties are cut only between distinct heatmap values.
    """
    y = reference[brain]
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    s = heatmap[brain]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    cut = np.r_[s[1:] != s[:-1], True]
    k = np.arange(1, len(s) + 1)
    return float((2.0 * tp[cut] / (k[cut] + n_pos)).max())


def image_score(heatmap: np.ndarray, brain: np.ndarray, percentile: float) -> float:
    """Image-level anomaly score: a high percentile of the in-brain heatmap."""
    return float(np.percentile(heatmap[brain], percentile))
