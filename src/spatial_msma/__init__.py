"""Spatial-MSMA: unsupervised lesion localisation in 3D brain MRI by multiscale score matching."""

__version__ = "0.1.0"
