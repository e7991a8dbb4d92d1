"""The Table-1 baselines: each writes brain-masked per-voxel heatmaps in the same form and place as
Spatial-MSMA (``results/heatmaps/{method}/{set}/{subject}.nii.gz``), so the evaluation treats them alike.

Baselines may import from ``score``, ``training``, ``io`` and ``progress``; nothing earlier imports them.
"""
