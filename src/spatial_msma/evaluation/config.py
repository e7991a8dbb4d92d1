"""The ``evaluation:`` config section as a typed, validated object.

Every evaluation step reads its knobs from here, so the oracle search, the deployable thresholds, the
post-processing and the figures can never disagree about, say, the connectivity in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spatial_msma.io import InputError, check_number, check_numbers, config_section, plain_dict
from spatial_msma.protocols import protocol_name


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation settings; defaults are the paper's protocol (``(code)`` marks the authors' code)."""

    # Post-processing of every thresholded heatmap (paper: components < 3 voxels removed with
    # connectivity 1 = face neighbours; code: 18-connectivity), then dilation with a radius-1 ball.
    min_component_voxels: int = 3
    component_connectivity_postprocess: int = 1  # scipy rank connectivity: 1 -> 6, 2 -> 18, 3 -> 26
    dilation_radius: int = 1
    # (code) drop components touching the brain rim (mask minus its erosion by ``rim_radius``) from
    # predictions AND ground truth; the paper does not say so, hence off by default.
    drop_rim_components: bool = False
    rim_radius: int = 2
    # Component metrics: the paper's "8-connectivity including diagonals" is 26 neighbours in 3D.
    component_connectivity_metrics: int = 3
    # (code) The size rule of the post-processing applies to the ground truth too: lesion components under
    # ``min_lesion_voxels`` voxels (``lesion_connectivity``; the code's 18) are not lesions to find. They stay
    # in the size-bin table; 0 or 1 scores every simulated component.
    min_lesion_voxels: int = 3
    lesion_connectivity: int = 2
    # Oracle protocol: candidate thresholds evenly spaced between two percentiles of in-brain values.
    oracle_n_thresholds: int = 100
    oracle_percentiles: tuple[float, float] = (90.0, 99.99)
    # Deployable protocol: one threshold per method at these healthy-voxel false-positive rates.
    fpr_levels: tuple[float, ...] = (0.05, 0.10)
    # The evaluated region of every protocol (code): the brain mask eroded by ``erosion_radius`` voxels.
    # Heatmaps and ground truth are restricted to it, and the deployable thresholds are fitted in it, so a
    # threshold is applied on the region whose false-positive rate it was fitted for (0: the whole brain).
    erosion_radius: int = 2
    # Image-level anomaly score: this percentile of the in-brain heatmap.
    image_score_percentile: float = 99.9
    # Figures: subjects in the montage, thresholds on each FROC curve.
    figure_subjects: int = 4
    froc_n_thresholds: int = 30

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> InputError:
            return InputError(f"config evaluation.{key}: {why} (got {getattr(self, key)!r})")

        for key in ("component_connectivity_postprocess", "component_connectivity_metrics", "lesion_connectivity"):
            if getattr(self, key) not in (1, 2, 3):
                raise bad(key, "must be 1, 2 or 3 (6-, 18- or 26-neighbour connectivity)")
        check_numbers(self, "evaluation", ("min_component_voxels", "min_lesion_voxels", "dilation_radius", "rim_radius",
                                              "erosion_radius"),
                      0, integer=True)
        check_numbers(self, "evaluation", ("oracle_n_thresholds", "figure_subjects", "froc_n_thresholds"), 1,
                      integer=True)
        lo, hi = self.oracle_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise bad("oracle_percentiles", "must be two percentiles 0 <= low < high <= 100")
        if not self.fpr_levels or any(not 0.0 < f < 1.0 for f in self.fpr_levels):
            raise bad("fpr_levels", "must be a non-empty list of rates strictly between 0 and 1")
        if len({protocol_name(f) for f in self.fpr_levels}) != len(self.fpr_levels):
            raise bad("fpr_levels", "two levels round to the same protocol name")
        check_number(self.image_score_percentile, "evaluation.image_score_percentile", 0, above=True, high=100)

    @classmethod
    def from_dict(cls, section: Mapping | None) -> EvaluationConfig:
        """Build from the ``evaluation:`` config dict; missing keys take defaults, unknown keys are errors."""
        section = config_section(cls, section, "evaluation")
        for key in ("oracle_percentiles", "fpr_levels"):
            if key in section:
                section[key] = tuple(float(v) for v in section[key])
        return cls(**section)

    def to_dict(self) -> dict:
        return plain_dict(self)

    @property
    def protocols(self) -> list[str]:
        """``oracle`` followed by one deployable protocol per FPR level (``fpr05``, ``fpr10`` ...)."""
        return ["oracle"] + [protocol_name(f) for f in self.fpr_levels]
