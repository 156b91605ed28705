"""The operator's modules import each other at the top, without cycles: each one loads first on its own, and
none defers a project import into a function (to dodge a cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kubellama_operator"


def test_every_module_loads_first_on_its_own():
    code = """
import importlib, pkgutil, sys, kubellama_operator
names = sorted(m.name for m in pkgutil.walk_packages(kubellama_operator.__path__, "kubellama_operator."))
for name in names:
    for loaded in [m for m in sys.modules if m.startswith("kubellama_operator.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout) > 30


def test_no_project_import_is_deferred_into_a_function():
    deferred = set()
    for path in PACKAGE.rglob("*.py"):
        module = str(path.relative_to(PACKAGE).with_suffix(""))
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level:
                    deferred.update((module, node.module or alias.name) for alias in node.names)
    assert not deferred, f"(module, import) deferred into a function: {sorted(deferred)}"
