"""Evaluation shared by every method: thresholds, post-processing, metrics, tables and figures.

One module so that every detector's heatmaps go through exactly the same steps (evaluation spec).
"""

from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.evaluation.figures import make_figures
from spatial_msma.evaluation.metrics import (
    SIZE_BIN_EDGES_MM3,
    SIZE_BIN_NAMES,
    SurfaceDistances,
    best_dice,
    component_counts,
    dice,
    image_score,
    lesion_contrast,
    monai_distances,
    voxel_auroc_auprc,
)
from spatial_msma.evaluation.pipeline import evaluate_method, evaluate_subject, fit_method_thresholds, load_case
from spatial_msma.evaluation.postprocess import post_process, prepare_reference, segment
from spatial_msma.evaluation.tables import PAPER_TABLE1, write_tables
from spatial_msma.evaluation.thresholds import fpr_thresholds, oracle_threshold
from spatial_msma.names import METHOD_NAMES, display_name, method_order, protocol_name

__all__ = [
    "METHOD_NAMES",
    "PAPER_TABLE1",
    "SIZE_BIN_EDGES_MM3",
    "SIZE_BIN_NAMES",
    "EvaluationConfig",
    "SurfaceDistances",
    "best_dice",
    "component_counts",
    "dice",
    "display_name",
    "evaluate_method",
    "evaluate_subject",
    "fit_method_thresholds",
    "fpr_thresholds",
    "image_score",
    "lesion_contrast",
    "load_case",
    "make_figures",
    "method_order",
    "monai_distances",
    "oracle_threshold",
    "post_process",
    "prepare_reference",
    "protocol_name",
    "segment",
    "voxel_auroc_auprc",
    "write_tables",
]
