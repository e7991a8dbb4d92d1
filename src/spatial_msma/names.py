"""Names shared by the workflow and the package: method keys and their Table-1 names, protocol keys.

The ONE place that maps a key such as ``gradcam_msma`` to "GradCAM-MSMA" (the dict order is the row order
of Table 1: the paper's rows, then the intensity z-score floor) and an FPR level to its protocol key. Pure
Python with no imports, so the Snakefile can read it at parse time without loading torch or MONAI.
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


def protocol_name(fpr: float) -> str:
    """Protocol key of a healthy-voxel FPR level: 0.05 -> ``fpr05``, 0.1 -> ``fpr10``, 0.025 -> ``fpr2.5``."""
    pct = round(100.0 * fpr, 6)
    return f"fpr{int(pct):02d}" if pct == int(pct) else f"fpr{pct:g}"
