"""The house rules a newcomer can rely on (docs/architecture.md, "Layers"):

* the layer contract in pyproject.toml ([tool.importlinter]) holds: the compiler
  core never imports call-time code, the backends never import the runtime's call
  machinery, the runtime never imports the API above it, no import cycles;
* no module imports another module's ``_private`` names;
* no module in spcomp/, runtime/ or backends/ is over 700 lines, and
  spcomp/kernel.py (the public Kernel) stays under 400.

import-linter reads a package from one folder, while spcomp maps runtime/,
backends/ and grammar/ into it (pyproject's package-dir): the test lays the
installed tree out in a temporary folder first.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = CONFIG["tool"]["setuptools"]["package-dir"]
PACKAGES = CONFIG["tool"]["setuptools"]["packages"]
MAX_LINES = 700
MAX_KERNEL_LINES = 400


def _folder(package: str) -> Path:
    """Where a package's modules live in the source tree (pyproject's package-dir)."""
    if package in PACKAGE_DIRS:
        return ROOT / PACKAGE_DIRS[package]
    parent, _, last = package.rpartition(".")
    return _folder(parent) / last


def _sources():
    """(module name, path) of every Python module spcomp installs."""
    for package in PACKAGES:
        for path in sorted(_folder(package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, path


def test_the_layer_contract_holds(tmp_path):
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    tree = tmp_path / "tree"
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(ROOT / folder, tree.joinpath(*package.split(".")), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    run = subprocess.run([str(lint), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout and "5 kept" in run.stdout


def _private_imports(name: str, path: Path) -> list:
    """``from spcomp.x import _name`` (or relative) lines of one module."""
    found = []
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not source.startswith("spcomp") or source == name:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    bad = [line for name, path in _sources() for line in _private_imports(name, path)]
    assert not bad, "\n".join(bad)


def test_modules_stay_small():
    sizes = {path: len(path.read_text().splitlines()) for _name, path in _sources()}
    big = sorted(f"{p.relative_to(ROOT)}: {n} lines" for p, n in sizes.items() if n > MAX_LINES)
    assert not big, "modules over 700 lines:\n" + "\n".join(big)
    assert sizes[ROOT / "spcomp" / "kernel.py"] < MAX_KERNEL_LINES
