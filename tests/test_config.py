"""The config schema: defaults fill in, a mistyped key is named, and the schema agrees with the package; the
parse-time check (spatial_msma.config_check) names every key a job would reject, before anything runs."""

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from spatial_msma.baselines.ae import AeConfig
from spatial_msma.baselines.gradcam import GradcamConfig
from spatial_msma.baselines.inpaint import InpaintConfig
from spatial_msma.baselines.restoration import RestorationConfig
from spatial_msma.config_check import check_config
from spatial_msma.flow.config import FlowConfig
from spatial_msma.io import InputError
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


def _checked(extra):
    """check_config on the default config with ``extra`` layered on, as Snakemake would hand it over."""
    config = _load("config.yaml")
    for section, values in extra.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    validate(config, SCHEMA, set_default=True)
    check_config(config, yaml.safe_load(Path(SCHEMA).read_text()))


@pytest.mark.parametrize("extra, message", [
    ({"seed": 7.0}, "config seed: must be an integer, got 7.0"),
    ({"score": {"network": {"channels": [16, 32.0, 32]}}}, "config score.network.channels[1]: must be an integer"),
    ({"split": {"train": 0.8, "val": 0.1, "test": 0.2}}, "config split: train + val + test must be 1, got 0.8 + "
                                                         "0.1 + 0.2 = 1.1"),
    ({"score": {"steps": 0}}, "config score.steps: must be an integer >= 1, got 0"),
    ({"score": {"device": "gpu"}}, "config score.device: 'gpu' is not a device"),
    ({"flow": {"device": "cuda0"}}, "config flow.device: 'cuda0' is not a device"),
    ({"ae": {"channels": [4, 8], "strides": [2, 2, 2]}}, "config ae.strides: needs one stride per entry of channels"),
    ({"score": {"network": {"norm_num_groups": 16}}}, "config score.network: norm_num_groups 16 leaves fewer than 2"),
    ({"flow": {"global_features": {"heads": 3}}}, "flow.global_features"),
    ({"evaluation": {"fpr_levels": [0.1, 0.1]}}, "config evaluation.fpr_levels: two levels round to the same"),
    ({"cbcl": {"columns": {"subject": "id"}}}, "config cbcl.columns: unknown key(s) ['subject']"),
    ({"cohort": {"source": "bids"}}, "config cohort.bids_dir: required when cohort.source is 'bids'"),
    ({"cohort": {"source": "bids", "bids_dir": "/path/to/bids", "cbcl_table": "/path/to/cbcl.csv"}},
     "config cohort.bids_dir: there is no folder /path/to/bids (mistyped, or on a disk that is not mounted?"),
    ({"lesions": {"source": "folder", "folder": "/no/such/masks"}}, "config lesions.folder: there is no folder"),
])
def test_what_a_job_would_reject_is_named_at_parse_time(extra, message):
    """spatial_msma.config_check: the same classes the jobs build, before Snakemake deletes any output."""
    with pytest.raises(InputError, match=re.escape(message)):
        _checked(extra)


def test_paths_and_session_are_checked_against_the_disk(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "ses-1" / "anat").mkdir(parents=True)
    (tmp_path / "cbcl.csv").write_text("src_subject_id\n")
    cohort = {"source": "bids", "bids_dir": str(bids), "cbcl_table": str(tmp_path / "cbcl.csv")}
    _checked({"cohort": {**cohort, "session": "1"}})
    with pytest.raises(InputError, match=r"config cohort\.cbcl_table: there is no file"):
        _checked({"cohort": {**cohort, "cbcl_table": str(tmp_path / "cbcl.tsv")}})
    with pytest.raises(InputError, match=r"config cohort\.session: no subject in .* has a session folder ses-2"):
        _checked({"cohort": {**cohort, "session": "2"}})


@pytest.mark.parametrize("name", ["config.yaml", "benchmark.yaml", "paper.yaml"])
def test_shipped_configs_pass_the_parse_time_check(name):
    """paper.yaml with the built-in cohort standing in for its placeholder paths (README, Scale-out)."""
    config = _load(name)
    if name == "paper.yaml":
        config["cohort"]["source"] = "synthetic"
    _checked(config)
