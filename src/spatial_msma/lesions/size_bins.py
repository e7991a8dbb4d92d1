"""MS-MIST's lesion-volume bins, defined once for the simulator and for the evaluation's TPR-per-size table.

MS-MIST draws real lesions from a database binned by volume (50-100, 100-500, 500-1000, 1000-5000 and
>5000 mm^3). The simulator draws sizes across these bins and labels each lesion with its bin; the
evaluation reports the detection rate per bin, so both must mean the same bins. Pure Python: the
evaluation imports it without the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

#: Lower edges (mm^3) of MS-MIST's five lesion-volume bins; the last bin is open above.
MS_MIST_BIN_EDGES_MM3: tuple[float, ...] = (50.0, 100.0, 500.0, 1000.0, 5000.0)


def size_bin_label(volume_mm3: float, edges: Sequence[float]) -> str:
    """The size bin of a volume: ``"50-100"`` ... and ``">5000"`` for the open last bin.

    ``edges`` are the simulator's bin edges, whose last one only bounds the sizes it draws, so the last
    bin is labelled open like MS-MIST's.
    """
    if volume_mm3 < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in pairwise(edges[:-1]):
        if volume_mm3 < hi:
            return f"{lo:g}-{hi:g}"
    return f">{edges[-2]:g}"
