"""Every ``from lightning_optim... import name`` in the benchmarks, examples and tests names something that
exists at its new path, without a deprecation: a lazy import inside a function is checked too, so a moved
name cannot break a benchmark an hour into its run."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    [*REPO_ROOT.glob("benchmarks/*.py"), *REPO_ROOT.glob("examples/*.py"), *REPO_ROOT.glob("tests/**/*.py")]
)
#: files that use the old paths on purpose (the tests of the shims)
OLD_PATHS_ON_PURPOSE = {"tests/test_deprecations.py"}


def _imports(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_optim"):
            out += [(node.lineno, node.module, alias.name) for alias in node.names]
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_imported_names_exist_at_their_new_paths(path):
    if str(path.relative_to(REPO_ROOT)) in OLD_PATHS_ON_PURPOSE:
        pytest.skip("uses the old paths on purpose")
    for line, module, name in _imports(path):
        where = f"{path.relative_to(REPO_ROOT)}:{line}: from {module} import {name}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            mod = importlib.import_module(module)
            if name == "*" or hasattr(mod, name):
                continue
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ModuleNotFoundError:
                pytest.fail(f"{where}: no such name")
