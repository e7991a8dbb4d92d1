"""Spatial-MSMA's density model over patch score norms: the conditional flow, its context encoders, its
training, heatmaps, and the per-voxel Gaussian ablation (method section 6).

No re-exports: each script imports the concrete modules it runs, so the workflow can derive a rule's code
inputs from those imports and an edit reruns exactly the rules that run the edited module."""
