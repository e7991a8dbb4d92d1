"""Which keys of a config section each kind of job reads, so that every rule is passed only those.

Snakemake reruns a job whose params changed. A rule handed a whole section therefore reruns on a key it
never reads: a heatmap-only switch would retrain a model from scratch, a figure setting would redo every
oracle search. Each section is split once here into scopes; the rules take their scope with
:func:`scope` and nothing else. Pure Python, read by the Snakefile at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Keys that only change how a trained model scores images (its heatmaps), never the model itself.
HEATMAP_ONLY: dict[str, tuple[str, ...]] = {
    "flow": ("one_sided", "mode_stride", "heatmap_jacobian"),
    "ae": ("error",),
    "gradcam_msma": ("layer", "guided_silu", "layer_input", "rectify_per_level", "signed_product"),
}

#: Keys both the training and the heatmap jobs of a section read (where to run, how much per pass).
SHARED: tuple[str, ...] = ("device", "chunk_voxels")

#: Keys that only change a figure, never a number in a table.
FIGURE_ONLY: dict[str, tuple[str, ...]] = {
    "evaluation": ("figure_subjects", "froc_n_thresholds"),
}

SCOPES = ("training", "heatmap", "metrics", "figures")


def scope(section_name: str, section: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The keys of ``section`` (the config section ``section_name``) that a job of ``kind`` reads.

    ``training``: everything but the heatmap-only keys; ``heatmap``: the heatmap-only keys and the shared
    ones; ``metrics``: everything but the figure-only keys; ``figures``: the whole section.
    """
    if kind not in SCOPES:
        raise ValueError(f"scope: {kind!r} is not one of {SCOPES}")
    heatmap_only = HEATMAP_ONLY.get(section_name, ())
    if kind == "training":
        return {k: v for k, v in section.items() if k not in heatmap_only}
    if kind == "heatmap":
        return {k: v for k, v in section.items() if k in heatmap_only or k in SHARED}
    if kind == "metrics":
        return {k: v for k, v in section.items() if k not in FIGURE_ONLY.get(section_name, ())}
    return dict(section)
