"""Which package modules a workflow script runs, read from its imports (for the rules' code inputs).

A rule declares the package modules its script runs as inputs, so that editing one reruns the rule and
everything after it, and nothing else. Hand-written lists of those modules drift (a helper module imported
two levels down is the one nobody lists), so they are derived: the script's ``spatial_msma`` imports,
followed transitively through the package, together with the ``__init__.py`` of every package on the way
(Python runs those too). Imports inside functions count: they run when the function does; imports under
``if TYPE_CHECKING:`` do not (they never run). Pure standard library, so the Snakefile can call it at
parse time without loading torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_NAME = "spatial_msma"


def module_file(name: str, package_dir: Path) -> Path | None:
    """The file of a dotted module name inside the package (a module or a package's ``__init__.py``)."""
    parts = name.split(".")
    if parts[0] != PACKAGE_NAME:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE_NAME, *parts))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but the bodies of ``if TYPE_CHECKING:`` blocks: imports there serve type
    annotations only and never run, so a module named only there is not a code input."""
    out: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return out


def imported_names(path: Path, package_dir: Path) -> set[str]:
    """Absolute dotted names of every module one file imports when it runs, the package's and others'
    (``from a import b`` names both ``a`` and ``a.b``: ``b`` may be a module or a name inside ``a``)."""
    own = _module_name(path, package_dir) if path.is_relative_to(package_dir) else None
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if own is None:
                    raise ValueError(f"{path}: relative import outside the {PACKAGE_NAME} package")
                anchor = own.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules_run_by(script: Path, package_dir: Path) -> list[Path]:
    """Every package file that running ``script`` can execute, sorted: its imports, theirs, and so on."""
    package_dir = package_dir.resolve()
    seen: set[Path] = set()
    pending = [Path(script).resolve()]
    while pending:
        path = pending.pop()
        for name in imported_names(path, package_dir):
            parts = name.split(".")
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            for depth in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:depth]), package_dir)
                if found is not None and found not in seen:
                    seen.add(found)
                    pending.append(found)
    return sorted(seen)
