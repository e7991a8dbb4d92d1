"""The conda environments in envs/ agree with pyproject.toml and with what each rule's script imports.

Conda channels are not reachable here, so the envs are never built: this parses them. Checked:
- every env file parses, names conda-forge, and pins python;
- the torch envs list exactly pyproject's dependencies (snakemake excepted: it runs the rules, it is not
  needed inside them), with the same version bounds; the imaging env the same minus the torch stack;
- every rule's `conda:` is ENV_IMAGING or ENV_TORCH, and every third-party module its script imports
  (following the package's own imports) is provided by that env;
- every env file is used by a rule (no dead env files).
"""

import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from spatial_msma.script_modules import imported_names, modules_run_by

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
TORCH_STACK = {"torch", "monai", "normflows", "captum"}
NOT_IN_ENVS = {"snakemake"}  # the workflow engine: it runs the rules, the rules do not import it
# conda-forge names (and extras) that stand for a pyproject dependency
CONDA_ALIASES = {"pytorch": "torch", "pytorch-cpu": "torch", "pytorch-gpu": "torch", "einops": "monai"}
# env-only helpers that are not Python dependencies of the package
ENV_TOOLING = {"python", "pip", "cuda-version"}
# import name -> distribution name, where they differ
IMPORT_NAMES = {"ants": "antspyx", "sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml"}
ENV_VARIABLES = {"ENV_IMAGING": "imaging.yaml", "ENV_TORCH": ("torch-cpu.yaml", "torch-cuda.yaml")}


def _name(spec):
    return re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower()


def _bound(spec):
    """The version bound of a spec ('>=1.26'), or '' when it has none."""
    return spec.strip()[len(_name(spec)):].split("[")[-1].split("]")[-1].strip()


def pyproject_dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        req = Requirement(dep)
        out[req.name.lower()] = str(req.specifier)
    return out


def env_packages(path):
    """{pyproject name: version bound} of an env file, conda and pip sections together."""
    env = yaml.safe_load(path.read_text())
    specs = []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            specs += [s for s in entry.get("pip", []) if not s.startswith("-")]
        else:
            specs.append(entry)
    out = {}
    for spec in specs:
        name = _name(spec)
        if name in ENV_TOOLING:
            continue
        name = CONDA_ALIASES.get(name, name)
        bound = _bound(spec)
        if name == "monai" and not bound:  # einops: the monai[einops] extra, no bound of its own
            continue
        out[name] = bound
    return out


def env_files():
    return sorted(ENVS.glob("*.yaml"))


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_parses_with_conda_forge_and_python(path):
    env = yaml.safe_load(path.read_text())
    assert set(env) <= {"name", "channels", "dependencies"}, set(env)
    assert env["channels"][0] == "conda-forge"
    assert any(isinstance(d, str) and re.fullmatch(r"python=3\.1[1-9]", d) for d in env["dependencies"])
    assert path.read_text().startswith("#"), "each env file says what it is for"


@pytest.mark.parametrize("name", ["torch-cpu.yaml", "torch-cuda.yaml", "imaging.yaml"])
def test_env_names_the_same_packages_as_pyproject(name):
    expected = {k: v for k, v in pyproject_dependencies().items() if k not in NOT_IN_ENVS}
    if name == "imaging.yaml":
        expected = {k: v for k, v in expected.items() if k not in TORCH_STACK}
    assert env_packages(ENVS / name) == expected


def test_cuda_env_pins_the_gpu_build_and_cpu_env_the_cpu_build():
    cuda = (ENVS / "torch-cuda.yaml").read_text()
    cpu = (ENVS / "torch-cpu.yaml").read_text()
    assert re.search(r"^\s*- pytorch-gpu", cuda, re.M) and "CONDA_OVERRIDE_CUDA" in cuda
    assert re.search(r"^\s*- pytorch-cpu", cpu, re.M) and "pytorch-gpu" not in cpu


def _rules():
    """(rule name, conda value, script path) of every rule with a script, parsed from rules/*.smk."""
    out = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        rule, conda, lines = None, None, smk.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"(?:rule|checkpoint) (\w+):", line)
            if m:
                rule, conda = m.group(1), None
            elif line.strip() == "conda:":
                conda = lines[i + 1].strip()
            elif line.strip() == "script:" and rule:
                script = (smk.parent / lines[i + 1].strip().strip("\"'")).resolve()
                out.append((rule, conda, script))
    return out


def third_party_imports(script):
    """Top-level third-party modules a script imports, itself or through the package modules it runs."""
    files = [script, *modules_run_by(script, REPO / "src" / "spatial_msma")]
    tops = {name.split(".")[0] for path in files for name in imported_names(path, REPO / "src" / "spatial_msma")}
    return {IMPORT_NAMES.get(top, top) for top in tops
            if top not in sys.stdlib_module_names and top not in ("spatial_msma", "snakemake")}


RULES = _rules()


def test_rules_were_found():
    names = {rule for rule, _, _ in RULES}
    assert {"preprocess", "train_score_model", "score_norms", "train_flow", "table1"} <= names, names


@pytest.mark.parametrize("rule, conda, script", RULES, ids=[r[0] for r in RULES])
def test_rule_env_provides_what_its_script_imports(rule, conda, script):
    assert conda in ENV_VARIABLES, f"rule {rule}: conda: {conda!r}, expected ENV_IMAGING or ENV_TORCH"
    files = ENV_VARIABLES[conda]
    for name in [files] if isinstance(files, str) else files:
        missing = third_party_imports(script) - set(env_packages(ENVS / name))
        assert not missing, f"rule {rule} ({script.name}) imports {sorted(missing)}, not in envs/{name}"


def test_common_smk_defines_the_env_variables_and_every_env_file_is_used():
    common = (REPO / "rules" / "common.smk").read_text()
    assert 'ENV_IMAGING = "../envs/imaging.yaml"' in common
    assert "ENV_TORCH = f\"../envs/torch-{config['conda_torch']}.yaml\"" in common
    used = {"imaging.yaml", "torch-cpu.yaml", "torch-cuda.yaml"}
    literal = {m for smk in (REPO / "rules").glob("*.smk")
               for m in re.findall(r'"\.\./envs/([\w.-]+\.yaml)"', smk.read_text())}
    assert {p.name for p in env_files()} == used | literal
