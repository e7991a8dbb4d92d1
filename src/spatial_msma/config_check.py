"""The whole config, checked when Snakemake reads the workflow: before it plans a job or deletes an output.

Each job checks its own config section when it starts, but Snakemake deletes a job's old outputs before the
job runs, so a value that only a job rejects costs the finished work it was meant to replace (a split that
does not add up to 1 deleted ``results/cohort/`` and so every job after it; a bad score setting, the trained
model). Here every section is built by the same classes its jobs build, so the same checks run first and name
the key. The schema cannot do all of it: ``seed: 7.0`` is an integer to JSON Schema but not to numpy, and
the sum of the split fractions or a network's channels against its groups are relations between keys.

The input paths are checked too: Snakemake alone keeps old results whose inputs vanished ("Nothing to be
done" for a mistyped or unmounted ``cohort.bids_dir`` in a folder that holds a finished run).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spatial_msma.baselines.ae import AeConfig
from spatial_msma.baselines.gradcam import GradcamConfig
from spatial_msma.baselines.inpaint import InpaintConfig
from spatial_msma.baselines.restoration import RestorationConfig
from spatial_msma.cohort import SplitFractions, column_names
from spatial_msma.evaluation.config import EvaluationConfig
from spatial_msma.flow.config import FlowConfig
from spatial_msma.io import InputError, check_device_name
from spatial_msma.lesions.config import LesionsConfig
from spatial_msma.methods import flow_keys, flow_section
from spatial_msma.score.msma import MsmaImageConfig
from spatial_msma.score.norms import NormsConfig
from spatial_msma.score.train import ScoreConfig

#: The sections built by a package config class, as their jobs build them (the flow: once per flow method).
SECTION_CLASSES = {
    "score": ScoreConfig, "score_norms": NormsConfig, "msma_image": MsmaImageConfig, "ae": AeConfig,
    "gradcam_msma": GradcamConfig, "inpaint": InpaintConfig, "restoration": RestorationConfig,
    "lesions": LesionsConfig, "evaluation": EvaluationConfig,
}

#: Why a configured input path may be missing, for the error.
MISSING_PATH_HINT = ("mistyped, or on a disk that is not mounted? config/paper.yaml ships placeholder paths: "
                     "point them at your data")


def check_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` naming the key of the first value of ``config`` (schema-validated, defaults
    filled in) that a job would reject, or of a configured input that does not exist."""
    check_integers(config, schema)
    SplitFractions(**config["split"])
    column_names(config["cbcl"]["columns"])
    for section, cls in SECTION_CLASSES.items():
        cls.from_dict(config[section])
    for method in flow_keys():
        FlowConfig.from_dict(flow_section(config["flow"], method))
    for section, values in config.items():
        if isinstance(values, Mapping) and "device" in values:
            check_device_name(values["device"], f"{section}.device")
    check_input_paths(config)


def check_integers(value: Any, schema: Mapping[str, Any], where: str = "") -> None:
    """Every value the schema types as an integer is a Python int: JSON Schema counts 7.0 as an integer,
    and then a seed or a step count dies inside a job in numpy or torch, in a traceback that names no key."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "integer" in types and "number" not in types and isinstance(value, float):
        raise InputError(f"config {where}: must be an integer, got {value!r}")
    if isinstance(value, Mapping):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            node = schema.get("properties", {}).get(key, extra if isinstance(extra, Mapping) else {})
            check_integers(item, node, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            check_integers(item, schema["items"], f"{where}[{index}]")


def check_input_paths(config: Mapping[str, Any]) -> None:
    """The user's BIDS folder and CBCL table (``cohort.source: bids``) and lesion folder (``lesions.source:
    folder``) exist, whatever ``results/`` already holds, and the BIDS folder has the configured session (else
    every subject would be excluded, and the old cohort deleted, by the filter job)."""
    paths = []
    if config["cohort"]["source"] == "bids":
        paths += [("cohort.bids_dir", config["cohort"]["bids_dir"], "folder"),
                  ("cohort.cbcl_table", config["cohort"]["cbcl_table"], "file")]
    if config["lesions"]["source"] == "folder":
        paths.append(("lesions.folder", config["lesions"]["folder"], "folder"))
    for key, path, kind in paths:
        if not path:
            section = key.split(".")[0]
            raise InputError(f"config {key}: required when {section}.source is {config[section]['source']!r}")
        if not (Path(path).is_dir() if kind == "folder" else Path(path).is_file()):
            raise InputError(f"config {key}: there is no {kind} {path} ({MISSING_PATH_HINT})")
    session = config["cohort"]["session"]
    if config["cohort"]["source"] == "bids" and session is not None:
        bids_dir = config["cohort"]["bids_dir"]
        if not any(Path(bids_dir).glob(f"sub-*/ses-{session}")):
            raise InputError(f"config cohort.session: no subject in {bids_dir} has a session folder ses-{session} "
                             "(the label without 'ses-'; null takes each subject's first session)")
