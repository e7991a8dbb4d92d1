"""The method registry: every detector's key, Table-1 name, row order, family and paper row, in one table.

Everything else that names a method is derived from :data:`METHODS`: the rules' method lists (the flow
methods, the ablation and validation tables), the ``flow`` overrides of an ablation, the evaluation
tables' names, row order, paper values and notes, and the inference benchmark. The config schema's
``methods`` enum is YAML and cannot import this; a unit test holds it equal to the keys, and another
that every key has its heatmap rule. Pure Python with no imports beyond the standard library, so the
Snakefile reads it at parse time without loading torch or MONAI.

Adding a method: an entry here, a module whose detector implements
:class:`spatial_msma.detector.Detector`, a rule that writes ``results/heatmaps/{key}/{set}`` and the key in
the schema's enum (README, "Adding a method").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: What a method is to the tables: ``floor`` (the no-model reference every learned method must clear),
#: ``baseline`` (the paper's comparison rows), ``spatial_msma`` (the method itself), ``paper_form`` (a
#: reconstruction baseline scored by the papers' raw residual, ``{key}_raw``, made by the baseline's own job
#: beside its Table-1 form: its own table) and ``ablation`` (Spatial-MSMA with one part changed: its own
#: table, never a Table-1 row by default).
FAMILIES = ("floor", "baseline", "spatial_msma", "paper_form", "ablation")
#: The suffix of a paper-form method's key: ``ae_raw`` is the AE scored by the raw residual.
RAW_SUFFIX = "_raw"


@dataclass(frozen=True)
class Method:
    """One detector. ``flow``: for the density models on cached score norms (Spatial-MSMA and its
    ablations), the overrides of the ``flow`` config section that make this method (empty for
    Spatial-MSMA itself); None for every other method. ``paper``: the method's row in the paper's Table 1
    (165 test subjects, 2 mm voxels, lesion load 20 mL, oracle protocol), metric -> (mean, SE), printed
    beside ours. ``note``: what the tables say about this method under their rows when it is among them."""

    key: str
    name: str
    family: str
    flow: Mapping[str, object] | None = None
    paper: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    note: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.key}: family {self.family!r} is not one of {FAMILIES}")
        if self.flow is not None:
            object.__setattr__(self, "flow", MappingProxyType(dict(self.flow)))
        object.__setattr__(self, "paper", MappingProxyType(dict(self.paper)))


def _registry(*methods: Method) -> Mapping[str, Method]:
    return MappingProxyType({m.key: m for m in methods})


#: Every method, in Table-1 order: the paper's rows, the intensity z-score floor, then the ablations.
METHODS: Mapping[str, Method] = _registry(
    Method("ae", "AE", "baseline",
           paper={"hd99": (12.27, 0.51), "msd": (3.63, 0.35), "tpr": (0.44, 0.02), "ppv": (0.19, 0.01)}),
    Method("inpaint", "Inpaint", "baseline",
           paper={"hd99": (13.26, 0.50), "msd": (3.71, 0.27), "tpr": (0.63, 0.02), "ppv": (0.50, 0.02)}),
    Method("restoration", "Restoration", "baseline",
           paper={"hd99": (8.67, 0.53), "msd": (2.68, 0.36), "tpr": (0.68, 0.02), "ppv": (0.17, 0.01)}),
    Method("gradcam_msma", "GradCAM-MSMA", "baseline",
           paper={"hd99": (12.68, 0.54), "msd": (3.75, 0.37), "tpr": (0.43, 0.02), "ppv": (0.16, 0.01)}),
    Method("spatial_msma", "Spatial-MSMA", "spatial_msma", flow={},
           paper={"hd99": (7.05, 0.61), "msd": (2.10, 0.43), "tpr": (0.83, 0.01), "ppv": (0.96, 0.01)}),
    Method("zscore", "Intensity z-score", "floor",
           note="per-voxel intensity z-score against the training subjects, no learned model — the floor every "
                "learned method must clear."),
    Method("ae_raw", "AE, raw residual", "paper_form"),
    Method("inpaint_raw", "Inpaint, raw residual", "paper_form"),
    Method("restoration_raw", "Restoration, raw residual", "paper_form"),
    Method("spatial_msma_nopos", "Spatial-MSMA, no position code", "ablation", flow={"use_position": False}),
    Method("spatial_msma_noglobal", "Spatial-MSMA, no global features", "ablation", flow={"use_global": False}),
    Method("spatial_msma_gmm", "Spatial-MSMA, context-free GMM base", "ablation", flow={"base": "gmm"}),
    Method("voxel_gaussian", "Per-voxel Gaussian", "ablation", flow={"model": "voxel_gaussian"}),
)


def keys(*families: str) -> list[str]:
    """Method keys of the given families (all when none is given), in Table-1 order."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"method families {unknown}: not among {FAMILIES}")
    return [m.key for m in METHODS.values() if not families or m.family in families]


def table1_keys() -> list[str]:
    """The rows Table 1 expects: every method but the ablations."""
    return keys("floor", "baseline", "spatial_msma")


def residual_keys() -> list[str]:
    """The reconstruction baselines (heatmap = residual of a healthy estimate, spatial_msma.baselines.residual):
    the methods that have a paper-form twin."""
    return [key.removesuffix(RAW_SUFFIX) for key in keys("paper_form")]


def raw_twin(method: str) -> str:
    """The key of a reconstruction baseline's paper-form (raw residual) twin."""
    if method not in residual_keys():
        raise ValueError(f"method {method!r} is not a reconstruction baseline ({residual_keys()})")
    return method + RAW_SUFFIX


def flow_keys() -> list[str]:
    """The density models on cached score norms: one flow (or voxel-Gaussian) model and heatmap set each."""
    return [m.key for m in METHODS.values() if m.flow is not None]


def flow_section(section: Mapping[str, object] | None, method: str) -> dict[str, object]:
    """The ``flow`` config section of one flow method: ``section`` with the method's overrides applied.

    The workflow hands each flow job this merged section as a param, so a job reruns when its own method's
    overrides change and the flow code never imports the registry (editing another entry reruns nothing).
    """
    if method not in flow_keys():
        raise ValueError(f"flow method {method!r} is not one of {flow_keys()}")
    return {**(section or {}), **METHODS[method].flow}


def display_name(method: str) -> str:
    """Table name of a method key; a key outside the registry is shown as it is."""
    return METHODS[method].name if method in METHODS else method


def method_order(methods: Iterable[str]) -> list[str]:
    """Sort method keys into Table-1 order; keys outside the registry follow, alphabetically."""
    present = set(methods)
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))
