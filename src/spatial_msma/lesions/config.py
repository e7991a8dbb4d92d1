"""The ``lesions`` config section as a typed, validated object.

The workflow passes ``config["lesions"]`` as a plain dict; :meth:`LesionsConfig.from_dict` turns it into a
frozen :class:`LesionsConfig`. Unknown keys and bad values are an :class:`~spatial_msma.io.InputError`
naming the key (``lesions.<key>``), so a typo in a YAML file is reported at the start of a run, not as a
silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from spatial_msma.io import InputError, check_number, config_section
from spatial_msma.lesions.size_bins import MS_MIST_BIN_EDGES_MM3

#: The image channels lesions are painted into, in the order of the cropped images.
CHANNELS = ("t1", "t2")
SOURCES = ("simulated", "folder")
ENHANCEMENT_MODES = ("contrast", "code", "none")
#: Sizes are drawn log-uniformly within a bin, so MS-MIST's open last bin needs an upper edge: the largest
#: lesion the simulator makes.
LARGEST_LESION_MM3 = 15000.0


@dataclass(frozen=True)
class Contrast:
    """One channel's multiplicative lesion contrast: mean and sd over real lesions (MS-MIST's values)."""

    mean: float
    sd: float


#: MS-MIST's contrasts: lesions are hypointense on T1 and hyperintense on T2.
DEFAULT_CONTRASTS: dict[str, Contrast] = {"t1": Contrast(0.791, 0.139), "t2": Contrast(1.374, 0.353)}


@dataclass(frozen=True)
class Enhancement:
    """The paper's x``factor`` lesion enhancement and the variant that applies it (``mode``, one of
    :data:`ENHANCEMENT_MODES`, described in :mod:`~spatial_msma.lesions.simulate`)."""

    factor: float = 1.5
    mode: str = "contrast"

    def __post_init__(self) -> None:
        if self.mode not in ENHANCEMENT_MODES:
            raise InputError(
                f"lesions.enhancement.mode: {self.mode!r} is not one of {', '.join(ENHANCEMENT_MODES)}"
            )
        factor = check_number(self.factor, "lesions.enhancement.factor", 0, above=True)
        object.__setattr__(self, "factor", float(factor))

    @classmethod
    def from_dict(cls, raw: Mapping[str, object] | None) -> Enhancement:
        return cls(**config_section(cls, raw, "lesions.enhancement"))


# Scalar keys and their allowed range: (lowest, lowest excluded, highest or None for unbounded).
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "load_ml": (0.0, True, None),
    "grid_mm": (0.0, True, None),
    "periventricular_scale_mm": (0.0, True, None),
    "wm_threshold_sd": (0.0, True, None),
    "lesion_variability_sd": (0.0, False, None),
    "border_sigma_mm": (0.0, False, None),
    "wm_prior_min": (0.0, False, 1.0),
    "periventricular_bias": (0.0, False, 1.0),
    "mask_threshold": (0.0, True, 1.0),
}


@dataclass(frozen=True)
class LesionsConfig:
    """Every knob of the lesion simulation (:mod:`~spatial_msma.lesions.simulate` for the model).

    Shapes and sizes
      ``source``: ``simulated`` blobs or the lesions of the NIfTI masks in ``folder``; ``load_ml`` of
      lesion per subject, measured at the fine grid; sizes (or, for a folder, its lesions) drawn across the
      bins with edges ``size_bins_mm3`` (mm^3) in proportion to ``bin_weights``.
    Placement
      lesions are made on a grid of about ``grid_mm`` that subdivides the working voxels, where the
      template's WM prior is at least ``wm_prior_min``; a share ``periventricular_bias`` of the centres
      comes from a component that decays as exp(-distance / ``periventricular_scale_mm``) away from the
      ventricles.
    Intensity
      only voxels within ``wm_threshold_sd`` sd of the subject's white matter in every channel take
      lesion; per channel a contrast ``N(mean, lesion_variability_sd * sd)`` from ``contrast``; borders
      smoothed with ``border_sigma_mm``; ``enhancement`` as in :class:`Enhancement`. The ground truth is
      the working-grid soft label >= ``mask_threshold``.
    """

    source: str = "simulated"
    folder: str | None = None
    load_ml: float = 20.0
    grid_mm: float = 1.0
    size_bins_mm3: tuple[float, ...] = (*MS_MIST_BIN_EDGES_MM3, LARGEST_LESION_MM3)
    bin_weights: tuple[float, ...] = (0.3, 0.4, 0.15, 0.12, 0.03)
    wm_prior_min: float = 0.5
    periventricular_bias: float = 0.5
    periventricular_scale_mm: float = 8.0
    wm_threshold_sd: float = 1.5
    contrast: dict[str, Contrast] = field(default_factory=lambda: dict(DEFAULT_CONTRASTS))
    lesion_variability_sd: float = 0.5
    border_sigma_mm: float = 0.75
    enhancement: Enhancement = field(default_factory=Enhancement)
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError(f"lesions.source: {self.source!r} is not one of {', '.join(map(repr, SOURCES))}")
        if self.source == "folder" and not self.folder:
            raise InputError("lesions.folder: required when lesions.source is 'folder'")
        for key, (low, low_open, high) in _RANGES.items():
            value = check_number(getattr(self, key), f"lesions.{key}", low, above=low_open, high=high)
            object.__setattr__(self, key, float(value))
        edges = _numbers(self.size_bins_mm3, "lesions.size_bins_mm3")
        weights = _numbers(self.bin_weights, "lesions.bin_weights")
        if len(edges) < 2 or edges[0] <= 0 or any(b <= a for a, b in pairwise(edges)):
            raise InputError(f"lesions.size_bins_mm3: {list(edges)} must be >= 2 increasing positive bin edges")
        if len(weights) != len(edges) - 1 or min(weights) < 0 or sum(weights) <= 0:
            raise InputError(f"lesions.bin_weights: {list(weights)} must be {len(edges) - 1} non-negative "
                             "weights (one per size bin)")
        object.__setattr__(self, "size_bins_mm3", edges)
        object.__setattr__(self, "bin_weights", weights)
        object.__setattr__(self, "contrast", _contrasts(self.contrast))
        if not isinstance(self.enhancement, Enhancement):
            object.__setattr__(self, "enhancement", Enhancement.from_dict(self.enhancement))

    @classmethod
    def from_dict(cls, raw: Mapping[str, object] | None) -> LesionsConfig:
        """Build from the config section; an unknown key is an error that names it. ``contrast`` entries
        are merged over :data:`DEFAULT_CONTRASTS` per channel, so one key can change only T1's mean."""
        return cls(**config_section(cls, raw, "lesions"))


def _numbers(value: object, where: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise InputError(f"{where}: {value!r} must be a list of numbers")
    return tuple(float(v) for v in value)


def _contrasts(user: Mapping[str, object] | None) -> dict[str, Contrast]:
    """The user's contrasts merged over :data:`DEFAULT_CONTRASTS` per channel; a new channel needs both keys."""
    out = dict(DEFAULT_CONTRASTS)
    for name, spec in (user or {}).items():
        where = f"lesions.contrast.{name}"
        if isinstance(spec, Contrast):
            spec = dataclasses.asdict(spec)
        if not isinstance(spec, Mapping):
            raise InputError(f"{where}: expected a mapping with mean and sd")
        merged = {**(dataclasses.asdict(out[name]) if name in out else {}), **config_section(Contrast, spec, where)}
        if set(merged) != {"mean", "sd"}:
            raise InputError(f"{where}: needs both mean and sd")
        out[name] = Contrast(float(check_number(merged["mean"], f"{where}.mean", 0, above=True)),
                             float(check_number(merged["sd"], f"{where}.sd", 0)))
    return out
