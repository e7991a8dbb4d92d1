"""The config schema: defaults fill in, a mistyped key is named, and the schema agrees with the package."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from spatial_msma.baselines.ae import AeConfig
from spatial_msma.baselines.gradcam import GradcamConfig
from spatial_msma.baselines.inpaint import InpaintConfig
from spatial_msma.baselines.restoration import RestorationConfig
from spatial_msma.flow.config import FlowConfig
from spatial_msma.score.msma import MsmaImageConfig
from spatial_msma.score.norms import NormsConfig
from spatial_msma.score.train import ScoreConfig

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "config" / "schema.yaml")


def _load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "benchmark.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    validate(_load(name), SCHEMA)


def _leaf_keys(section, prefix=()):
    for key, value in section.items():
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, (*prefix, key))
        else:
            yield ".".join((*prefix, key))


@pytest.mark.parametrize("name", ["benchmark.yaml", "paper.yaml"])
def test_layered_configs_restate_every_key_of_the_default(name):
    """config.yaml is always loaded under a --configfile: a key it sets and the other file does not would leak
    a laptop-only choice (a CPU batch size, ablations off) into the paper run without anyone seeing it."""
    inherited = set(_leaf_keys(_load("config.yaml"))) - set(_leaf_keys(_load(name)))
    assert not inherited, f"{name} silently inherits from config.yaml: {sorted(inherited)}"


def test_defaults_fill_nested_sections():
    config = {}
    validate(config, SCHEMA, set_default=True)
    assert config["preprocess"]["percentiles"] == [0.01, 99.9]
    assert config["lesions"]["load_ml"] == 20.0
    assert config["evaluation"]["fpr_levels"] == [0.05, 0.10]


@pytest.mark.parametrize("bad, key", [
    ({"preprocess": {"voxel_mmm": 4}}, "voxel_mmm"),
    ({"cohort": {"source": "abcd"}}, "abcd"),
    ({"score": {"steps": "many"}}, "many"),
    ({"flow": {"global_features": {"kernal": 9}}}, "kernal"),
])
def test_bad_keys_and_types_are_named(bad, key):
    with pytest.raises(WorkflowError, match=key):
        validate(copy.deepcopy(bad), SCHEMA)


def _dataclass_defaults(cls):
    out = {}
    for field in dataclasses.fields(cls):
        value = getattr(cls(), field.name)
        if dataclasses.is_dataclass(value):
            value = _dataclass_defaults(type(value))
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.mark.parametrize("section, cls", [
    ("score", ScoreConfig), ("score_norms", NormsConfig), ("msma_image", MsmaImageConfig), ("flow", FlowConfig),
    ("inpaint", InpaintConfig), ("restoration", RestorationConfig), ("ae", AeConfig), ("gradcam_msma", GradcamConfig),
])
def test_schema_defaults_match_the_package(section, cls):
    """The package's config classes validate their sections too; both must describe the same keys and defaults."""
    config = {}
    validate(config, SCHEMA, set_default=True)
    assert config[section] == _dataclass_defaults(cls)
