"""Spatial-MSMA's density model over patch score norms: the conditional flow, its context encoders, its
training, heatmaps, and the per-voxel Gaussian ablation (method section 6)."""

from spatial_msma.flow.config import METHODS, FlowConfig, GlobalFeaturesConfig, method_config
from spatial_msma.flow.gaussian import VoxelGaussian, fit_voxel_gaussian
from spatial_msma.flow.heatmap import load_density_model, subject_heatmap, write_heatmaps
from spatial_msma.flow.model import (
    ConditionalGaussianMixture,
    ContextFreeGaussianMixture,
    SpatialFlow,
    conditional_log_prob,
)
from spatial_msma.flow.train import train_flow

__all__ = [
    "METHODS",
    "ConditionalGaussianMixture",
    "ContextFreeGaussianMixture",
    "FlowConfig",
    "GlobalFeaturesConfig",
    "SpatialFlow",
    "VoxelGaussian",
    "conditional_log_prob",
    "fit_voxel_gaussian",
    "load_density_model",
    "method_config",
    "subject_heatmap",
    "train_flow",
    "write_heatmaps",
]
