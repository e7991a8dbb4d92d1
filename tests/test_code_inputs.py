"""Each rule's code inputs are exactly the package modules its script runs (spatial_msma.script_modules).

The Snakemake side (an edit reruns the right jobs, a moved checkout reruns none) is tested on the real run in
test_workflow.py; here: the static import reading against what Python really imports, and that every rule
declares its own script's modules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spatial_msma.script_modules import modules_run_by

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "spatial_msma"
SCRIPTS = sorted((REPO / "workflow" / "scripts").glob("*.py"))

# Runs each script's top-level imports in one interpreter, from a clean slate of package modules each time
# (torch and the like stay loaded), and prints the package files each script made Python execute.
_IMPORT_PROBE = r"""
import ast, json, sys
from pathlib import Path
package = Path(sys.argv[1]).resolve()
out = {}
for script in sys.argv[2:]:
    for name in [m for m in sys.modules if m == "spatial_msma" or m.startswith("spatial_msma.")]:
        del sys.modules[name]
    tree = ast.parse(Path(script).read_text())
    imports = ast.Module([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], [])
    exec(compile(imports, script, "exec"), {"__name__": "probe"})
    out[Path(script).name] = sorted(
        str(Path(m.__file__).resolve()) for name, m in sys.modules.items()
        if (name == "spatial_msma" or name.startswith("spatial_msma.")) and getattr(m, "__file__", None))
print(json.dumps(out))
"""


def test_every_module_python_imports_is_found_statically():
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(PACKAGE), *map(str, SCRIPTS)],
                            capture_output=True, text=True, check=True, cwd=REPO)
    imported = json.loads(result.stdout)
    assert set(imported) == {s.name for s in SCRIPTS}
    for script in SCRIPTS:
        found = {str(p) for p in modules_run_by(script, PACKAGE)}
        assert imported[script.name], script.name  # every script runs package code
        missing = set(imported[script.name]) - found
        assert not missing, f"{script.name}: imported but not a code input: {sorted(missing)}"


def _rule_blocks():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=(?:rule|checkpoint) )", smk.read_text())[1:]:
            yield smk.name, block.split(":", 1)[0].split()[1], block


def test_every_rule_with_a_script_declares_that_scripts_modules():
    seen_scripts = set()
    for smk, rule, block in _rule_blocks():
        script = re.search(r'script:\s*\n\s*"\.\./workflow/scripts/(\w+\.py)"', block)
        if script is None:  # a target rule (like `cropped`) only gathers files
            assert "output:" not in block, f"{smk}: rule {rule} writes files without a script"
            continue
        declared = re.findall(r'code=script_code\("(\w+\.py)"\)', block)
        assert declared == [script.group(1)], f"{smk}: rule {rule} runs {script.group(1)}, declares {declared}"
        seen_scripts.add(script.group(1))
    assert seen_scripts == {s.name for s in SCRIPTS}, "a script no rule runs, or a rule without its script"


def _modules_found(root, files, script_text):
    """Write a toy ``spatial_msma`` package and a script under ``root``; the package files the script runs."""
    package = root / "spatial_msma"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    script = root / "script.py"
    script.write_text(script_text)
    return {p.relative_to(package).as_posix() for p in modules_run_by(script, package)}


def test_indirect_relative_and_function_level_imports_are_followed(tmp_path):
    files = {
        "__init__.py": "",
        "sub/__init__.py": "",
        "sub/a.py": "from . import b\n",
        "sub/b.py": "def f():\n    from spatial_msma import c\n",
        "c.py": "import numpy\nfrom spatial_msma.sub.d import thing\n",
        "sub/d.py": "thing = 1\n",
        "unused.py": "",
    }
    found = _modules_found(tmp_path, files, "import os\nfrom spatial_msma.sub.a import x\n")
    assert found == set(files) - {"unused.py"}


def test_a_relative_import_outside_the_package_is_an_error(tmp_path):
    (tmp_path / "spatial_msma").mkdir()
    script = tmp_path / "script.py"
    script.write_text("from . import x\n")
    with pytest.raises(ValueError, match="relative import"):
        modules_run_by(script, tmp_path / "spatial_msma")


def test_imports_for_type_checking_only_are_not_code_inputs(tmp_path):
    """A detector module names the detector interface only in annotations: editing the interface must not
    retrain the model whose module it is."""
    files = {
        "__init__.py": "",
        "model.py": "from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n"
                    "    from spatial_msma import interface\nelse:\n    from spatial_msma import runs\n"
                    "if typing.TYPE_CHECKING:\n    from spatial_msma import other\n",
        "interface.py": "",
        "other.py": "",
        "runs.py": "",
    }
    found = _modules_found(tmp_path, files, "from spatial_msma.model import x\n")
    assert found == {"__init__.py", "model.py", "runs.py"}
