"""The method registry is the one list of methods: the schema's enum, the rules and the flow ablations agree
with it."""

import re
from pathlib import Path

import pytest
import yaml

from spatial_msma.flow.config import FlowConfig
from spatial_msma.methods import (
    FAMILIES,
    METHODS,
    Method,
    display_name,
    flow_keys,
    flow_section,
    keys,
    method_order,
    raw_twin,
    residual_keys,
    table1_keys,
)

REPO = Path(__file__).resolve().parents[1]


def test_the_schema_enum_lists_the_registry_keys_in_its_order():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    assert schema["properties"]["methods"]["items"]["enum"] == list(METHODS)


def test_every_config_names_registered_methods_only():
    for path in [*(REPO / "config").glob("*.yaml"), REPO / "tests" / "config" / "tiny.yaml"]:
        methods = (yaml.safe_load(path.read_text()) or {}).get("methods", [])
        assert set(methods) <= set(METHODS), path


def test_every_method_has_exactly_one_heatmap_rule():
    """A method with its own rule writes {run}/heatmaps/<key>/{set}; the flow methods share the rule whose
    method wildcard is constrained to the registry's flow keys."""
    rules = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    written = re.findall(r'directory\("\{run\}/heatmaps/([^/{]+)/\{set\}"\)', rules)
    shared = set(flow_keys()) | set(residual_keys()) | set(keys("paper_form"))
    assert sorted(written) == sorted(k for k in METHODS if k not in shared)
    assert rules.count('directory("{run}/heatmaps/{method}/{set}")') == 1
    assert re.search(r'FLOW_METHODS = flow_keys\(\)', rules)
    # the reconstruction baselines share one rule that writes each one's Table-1 form and its raw twin
    assert rules.count('directory("{run}/heatmaps/{residual_method}/{set}")') == 1
    assert rules.count('directory("{run}/heatmaps/{residual_method}_raw/{set}")') == 1
    assert re.search(r'RESIDUAL_METHODS = residual_keys\(\)', rules)
    assert [raw_twin(k) for k in residual_keys()] == keys("paper_form") == ["ae_raw", "inpaint_raw", "restoration_raw"]


def test_families_names_and_order():
    assert {m.family for m in METHODS.values()} == set(FAMILIES)
    assert len({m.name for m in METHODS.values()}) == len(METHODS)
    assert all(key == m.key for key, m in METHODS.items())
    assert table1_keys() == ["ae", "inpaint", "restoration", "gradcam_msma", "spatial_msma", "zscore"]
    assert keys("floor") == ["zscore"] and keys("spatial_msma") == ["spatial_msma"]
    assert set(keys("ablation")) == set(flow_keys()) - {"spatial_msma"}
    assert method_order(["voxel_gaussian", "zscore", "new_key", "ae"]) == ["ae", "zscore", "voxel_gaussian", "new_key"]
    assert display_name("gradcam_msma") == "GradCAM-MSMA" and display_name("new_key") == "new_key"
    with pytest.raises(ValueError, match="family"):
        Method("x", "X", "learned")
    with pytest.raises(ValueError, match="families"):
        keys("learned")


def test_flow_overrides_make_valid_configs_that_differ_from_spatial_msma():
    base = FlowConfig.from_dict(flow_section({"steps": 7}, "spatial_msma"))
    assert base == FlowConfig.from_dict({"steps": 7})
    for key in keys("ablation"):
        cfg = FlowConfig.from_dict(flow_section({"steps": 7}, key))
        assert cfg.steps == 7 and cfg != base
        assert all(getattr(cfg, name) == value for name, value in METHODS[key].flow.items())
    with pytest.raises(ValueError, match="flow method"):
        flow_section(None, "ae")


def test_flow_code_never_imports_the_registry():
    """The registry reaches the flow jobs as a param (flow_section), so editing an entry that is not theirs
    reruns none of them."""
    from spatial_msma.script_modules import modules_run_by

    package = REPO / "src" / "spatial_msma"
    for script in ("train_flow.py", "heatmap_flow.py"):
        modules = modules_run_by(REPO / "workflow" / "scripts" / script, package)
        assert package / "methods.py" not in modules, script
