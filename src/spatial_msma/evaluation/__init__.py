"""Evaluation shared by every method: thresholds, post-processing, metrics, tables and figures.

One package so that every detector's heatmaps go through exactly the same steps (evaluation spec). No
re-exports: scripts import the concrete modules, whose imports are the rules' code inputs."""
