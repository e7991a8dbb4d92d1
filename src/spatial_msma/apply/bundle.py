"""The model bundle: everything applying a trained Spatial-MSMA model needs, in one folder with a manifest.

A bundle holds the score model, the flow, the deployable thresholds (fitted on the healthy, lesion-free
heatmaps), the crop box, the template grids (registration and working voxel size), the settings of the
preprocessing, score-norm, heatmap and post-processing steps, and the config of the run that made it.
``manifest.json`` names the bundle format, the versions that wrote it, the template's identity and the
SHA-256 of every file. :func:`open_bundle` refuses, with a message saying what is wrong, a bundle of another
format or package version, one with a file missing or changed, or one made on another template; a bundle
copied from another machine (other paths, other torch build) is fine. Only the standard library and yaml
here: the checks run before torch is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import spatial_msma
from spatial_msma.io import InputError
from spatial_msma.template import template_identity

#: Bumped whenever the bundle's files or settings change meaning; a bundle of another format is refused.
BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
CONFIG = "config.yaml"

#: The bundle's model files and what each is (the keys name them in :func:`write_bundle`).
FILES = {
    "score_model": "score_model.pt",
    "flow_model": "flow_model.pt",
    "thresholds": "thresholds.json",
    "crop_box": "crop_box.json",
    "registration_t1": "template_registration_T1w.nii.gz",
    "registration_mask": "template_registration_brainmask.nii.gz",
    "output_t1": "template_T1w.nii.gz",
    "output_mask": "template_brainmask.nii.gz",
}
#: The settings sections a bundle carries (keys of settings.json).
SETTING_KEYS = ("method", "preprocess", "score_norms", "flow", "evaluation")

#: Distributions whose versions the manifest records (torch, antspyx: only informative, see open_bundle).
VERSIONED = ("torch", "antspyx", "numpy", "nibabel", "scipy", "scikit-image")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """This install's versions: the package, Python and the libraries that read or write the bundle."""
    out = {"spatial_msma": spatial_msma.__version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _release(version: str) -> str:
    """Major.minor of a version string: what a bundle's package version must share with this install."""
    return ".".join(version.split(".")[:2])


def write_bundle(sources: Mapping[str, str | os.PathLike], settings: Mapping[str, Any], config: Mapping[str, Any],
                 out_dir: str | os.PathLike) -> dict[str, Any]:
    """Copy the files of :data:`FILES` (``sources`` maps each key to its file) into ``out_dir`` with
    settings.json, config.yaml and manifest.json; the folder appears whole or not at all (written beside it,
    then renamed). Returns the manifest."""
    missing = sorted(set(FILES) - set(sources))
    if missing:
        raise InputError(f"model bundle: no source for {missing}")
    absent = sorted(set(SETTING_KEYS) - set(settings))
    if absent:
        raise InputError(f"model bundle: settings lack {absent}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for key, name in FILES.items():
            shutil.copyfile(sources[key], tmp / name)
        (tmp / SETTINGS).write_text(json.dumps(dict(settings), indent=2, sort_keys=True) + "\n")
        (tmp / CONFIG).write_text(yaml.safe_dump(dict(config), sort_keys=True))
        names = [*FILES.values(), SETTINGS, CONFIG]
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "method": settings["method"],
            "versions": versions(),
            "template": template_identity(),
            "files": {name: {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in names},
            "config": dict(config),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its folder, manifest and settings; :meth:`file` gives a model file's path."""

    path: Path
    manifest: dict[str, Any]
    settings: dict[str, Any]

    def file(self, key: str) -> Path:
        return self.path / FILES[key]

    def version_notes(self) -> list[str]:
        """Library versions that differ from this install's (not an error: a note for the log)."""
        here = versions()
        made = self.manifest["versions"]
        return [f"{name} {made.get(name)} (bundle) vs {here[name]} (here)" for name in VERSIONED
                if made.get(name) != here[name]]


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Read and check a bundle folder; any mismatch is an :class:`InputError` naming the bundle and the problem.

    Refused: no folder or manifest; another bundle format; another spatial_msma release (major.minor: the
    model files and settings are read by this release's code); a file missing or not the one the manifest
    hashed; another template than this install's (the registration target and every model's grid).
    """
    root = Path(path)
    where = f"model bundle {root}"
    if not root.is_dir():
        raise InputError(f"{where}: not a folder (config apply.bundle; make one with `snakemake results/bundle`)")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{where}: no {MANIFEST}; not a model bundle") from err
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{where}: {MANIFEST} is unreadable ({err})") from err
    fmt = manifest.get("bundle_format")
    if fmt != BUNDLE_FORMAT:
        raise InputError(f"{where}: bundle format {fmt!r}, this spatial_msma reads format {BUNDLE_FORMAT}; "
                         "make the bundle again with this version")
    made = manifest.get("versions", {}).get("spatial_msma", "unknown")
    if _release(made) != _release(spatial_msma.__version__):
        raise InputError(f"{where}: made by spatial_msma {made}, this is spatial_msma {spatial_msma.__version__}; "
                         f"use a {_release(made)}.x install or make the bundle again with this one")
    listed = manifest.get("files", {})
    for name in [*FILES.values(), SETTINGS, CONFIG]:
        if name not in listed:
            raise InputError(f"{where}: {MANIFEST} does not list {name}")
        file = root / name
        if not file.is_file():
            raise InputError(f"{where}: file {name} is missing")
        if sha256(file) != listed[name]["sha256"]:
            raise InputError(f"{where}: file {name} differs from the one the manifest recorded (SHA-256 mismatch: "
                             "changed or damaged after the bundle was made)")
    here = template_identity()
    there = manifest.get("template", {})
    if there.get("sha256") != here["sha256"]:
        raise InputError(f"{where}: made on the template {there.get('name')!r} (SHA-256 "
                         f"{str(there.get('sha256'))[:12]}), this install's template is {here['name']!r} "
                         f"(SHA-256 {here['sha256'][:12]}); "
                         "its models and registration target do not fit this install")
    settings = json.loads((root / SETTINGS).read_text())
    absent = sorted(set(SETTING_KEYS) - set(settings))
    if absent:
        raise InputError(f"{where}: {SETTINGS} lacks {absent}")
    return Bundle(root, manifest, settings)
