"""Method keys (file and rule names) and the names Table 1 and the figures show for them.

The ONE place that maps a key such as ``gradcam_msma`` to "GradCAM-MSMA"; the dict order is the row
order of Table 1 (the paper's rows, then the intensity z-score floor).
"""

from __future__ import annotations

METHOD_NAMES: dict[str, str] = {
    "ae": "AE",
    "inpaint": "Inpaint",
    "restoration": "Restoration",
    "gradcam_msma": "GradCAM-MSMA",
    "spatial_msma": "Spatial-MSMA",
    "zscore": "Intensity z-score",
}


def display_name(method: str) -> str:
    """Table-1 name of a method key; keys outside the mapping (ablations) are shown as they are."""
    return METHOD_NAMES.get(method, method)


def method_order(methods) -> list[str]:
    """Sort method keys into Table-1 order; keys outside the mapping follow, alphabetically."""
    known = [m for m in METHOD_NAMES if m in set(methods)]
    return known + sorted(set(methods) - set(METHOD_NAMES))
