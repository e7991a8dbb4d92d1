"""Keys of the evaluation protocols, shared by the Snakefile (read at parse time: pure Python, no imports)
and the evaluation package. Apart from the method registry, so that editing a method's entry never
reruns the evaluation jobs that only need protocol keys."""

from __future__ import annotations


def protocol_name(fpr: float) -> str:
    """Protocol key of a healthy-voxel FPR level: 0.05 -> ``fpr05``, 0.1 -> ``fpr10``, 0.025 -> ``fpr2.5``."""
    pct = round(100.0 * fpr, 6)
    return f"fpr{int(pct):02d}" if pct == int(pct) else f"fpr{pct:g}"
