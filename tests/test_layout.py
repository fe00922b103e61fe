"""The package layout holds: no module imports from a layer above it, no import cycles, every Lightning
callback lives in ``callbacks/``, is exported and is in the callback settings table (docs/contributing.md)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

import lightning_optim

PACKAGE = Path(lightning_optim.__file__).resolve().parent

#: rank of each top-level part: a module may import parts of its own rank or lower, never higher
RANKS = {
    "_deprecation": 0,
    "checks": 0,
    "paths": 0,
    "yaml_limits": 0,  # the YAML loader of the command line (alias, size and depth limits)
    "layers": 1,
    "plugins": 1,  # Lightning plugins (AtomicCheckpointIO): use only the shared helpers (paths)
    "weights": 2,  # resizes layers to a checkpoint (attention layers that lost heads)
    "checkpoints": 2,  # consolidates sharded checkpoints (uses paths, plugins)
    "functional": 3,
    "models": 4,
    "data": 4,
    "modules": 5,
    "callbacks": 6,
    "compression": 7,  # the deprecated shims of 0.1's paths (removed in 0.3.0)
    "cli": 8,
    "demo": 8,
    "__init__": 8,
}
#: parts that are compression tools, which models/ must not use
COMPRESSION_TOOLS = (
    "functional.pruning",
    "functional.quantization",
    "functional.compression_report",
    "functional.distillation",
    "functional.artifact",
    "functional.weight_sharing",
    "callbacks",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["lightning_optim", *parts])] = path
    return out


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """The lightning_optim modules ``path`` imports (statements anywhere, or at module level only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_optim"):
            found.add(node.module)
            for alias in node.names:  # ``from lightning_optim.functional import artifact`` imports a module
                candidate = f"{node.module}.{alias.name}"
                if candidate in MODULES:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lightning_optim"))
    return found


MODULES = _modules()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_it(module):
    rank = RANKS[_part(module)]
    above = sorted(m for m in _imports(MODULES[module]) if RANKS[_part(m)] > rank)
    assert not above, f"{module} (rank {rank}) imports from a layer above it: {above}"


def test_models_use_no_compression_tool():
    for module, path in MODULES.items():
        if _part(module) != "models":
            continue
        used = sorted(
            m
            for m in _imports(path)
            if m.startswith(tuple(f"lightning_optim.{t}" for t in COMPRESSION_TOOLS))
        )
        assert not used, f"{module} imports compression tools: {used}"


def test_functional_uses_no_lightning():
    for module, path in MODULES.items():
        if _part(module) != "functional":
            continue
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        lightning = [
            n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")
        ]
        assert not lightning, f"{module} imports Lightning: {lightning}"


def test_no_import_cycles():
    graph = {
        m: {i for i in _imports(p, module_level_only=True) if i in MODULES and i != m}
        for m, p in MODULES.items()
    }
    # a package's __init__ importing its own children is how packages re-export: not a cycle
    for m in graph:
        graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_callback_lives_in_callbacks_is_exported_and_in_the_settings_table():
    import lightning_optim.callbacks as callbacks_pkg
    from tests.callbacks.callback_settings import CALLBACK_SETTINGS

    for info in pkgutil.walk_packages(lightning_optim.__path__, "lightning_optim."):
        importlib.import_module(info.name)
    found = set()
    for module in list(MODULES):
        mod = importlib.import_module(module)
        for obj in vars(mod).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Callback)
                and obj.__module__.startswith("lightning_optim")
            ):
                found.add(obj)
    assert found, "no callback found"
    for cls in found:
        assert cls.__module__.startswith("lightning_optim.callbacks."), f"{cls} lives outside callbacks/"
        if cls.__name__.startswith("_"):
            continue
        assert cls.__name__ in callbacks_pkg.__all__, (
            f"{cls.__name__} is not exported from lightning_optim.callbacks"
        )
        assert cls.__name__ in CALLBACK_SETTINGS, f"{cls.__name__} has no entry in tests/callbacks/settings/"
