"""Limits on the YAML the command line reads: document size, alias expansion, nesting, and no Python tags.

YAML lets a small document stand for a huge one: an anchor used ten times in a list that is itself used ten
times, nine levels deep (a "billion laughs"), is 1 kB on disk and 10^9 values once expanded. PyYAML builds
such a document as shared references, fast; what reads it next (validation, error messages, a saved
``config.yaml``) expands it and runs for minutes or prints hundreds of megabytes. :func:`check_yaml` measures
a document before anything uses it:

- its size: at most :data:`MAX_DOCUMENT_BYTES` (recipes are a few kB);
- what aliases add once expanded: at most :data:`MAX_ALIAS_EXPANSION` (nodes, plus the characters of the
  scalars they repeat); a recipe that reuses a block of settings a few times stays far below it;
- its depth once expanded: at most :data:`MAX_DEPTH` levels; an alias to one of its own ancestors (a
  recursive document) is refused;
- no ``!!python/...`` tag (the loaders are PyYAML's safe loaders, which refuse them anyway: this says so
  clearly, with the line).

:func:`install` puts the check in front of jsonargparse's YAML loader (``jsonargparse.set_loader``), so that
``lightning-optim fit --config recipe.yaml`` (and every value given on the command line) is measured before it
is parsed; a document over a limit is refused with :class:`YAMLLimitError`, which jsonargparse reports as a
config it cannot parse, naming the file.

Example::

    >>> from lightning_optim import yaml_limits
    >>> yaml_limits.install()  # once per process, before the command line is parsed
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from lightning_optim.paths import user_file

__all__ = [
    "MAX_ALIAS_EXPANSION",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "YAMLLimitError",
    "check_config_files",
    "check_yaml",
    "guard_cli",
    "install",
    "load_yaml",
    "uninstall",
]

#: the largest YAML document read (bytes)
MAX_DOCUMENT_BYTES = 1 * 2**20
#: the most that aliases may add to a document once expanded: nodes, plus the characters of repeated scalars
MAX_ALIAS_EXPANSION = 100_000
#: the deepest nesting, aliases expanded
MAX_DEPTH = 100

_PYTHON_TAG = "tag:yaml.org,2002:python/"
_MARKER = "_lightning_optim_yaml_limits"


class YAMLLimitError(yaml.YAMLError, ValueError):
    """A YAML document over a limit of :func:`check_yaml` (a ``ValueError``, and a ``yaml.YAMLError`` so that
    whatever reports YAML errors reports it)."""


def _loader_class() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _where(source: str) -> str:
    return f"YAML {source!r}" if source else "YAML document"


def _line(node: yaml.Node) -> str:
    mark = getattr(node, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


def check_yaml(
    text: str | bytes,
    source: str | os.PathLike = "",
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_alias_expansion: int = MAX_ALIAS_EXPANSION,
    max_depth: int = MAX_DEPTH,
) -> None:
    """Refuse a YAML document over a limit, before anything builds or expands it.

    The document is composed (parsed to its node graph, aliases kept as shared nodes) with PyYAML's safe
    loader, and measured in one pass over its distinct nodes: the size it expands to is computed, not built.

    Args:
        text: the document.
        source: the file it came from, named in the messages.
        max_bytes: the largest document (UTF-8 bytes).
        max_alias_expansion: the most that aliases may add once expanded, in nodes plus the characters of the
            scalars they repeat.
        max_depth: the deepest nesting once aliases are expanded.

    Raises:
        YAMLLimitError: over a limit, recursive, or a ``!!python/...`` tag.
        yaml.YAMLError: not YAML (PyYAML's own error, with the line).
    """
    where = _where(os.fspath(source))
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > max_bytes:
        raise YAMLLimitError(
            f"{where} has {size:,} bytes, more than the {max_bytes:,} a config file may have."
        )
    loader = _loader_class()(text)
    try:
        root = loader.get_single_node()
    except RecursionError:  # the pure-Python composer on a deeply nested document
        raise YAMLLimitError(f"{where} is nested more deeply than {max_depth} levels.") from None
    finally:
        loader.dispose()
    if root is not None:
        _measure(root, where, max_alias_expansion, max_depth)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _measure(root: yaml.Node, where: str, max_alias_expansion: int, max_depth: int) -> None:
    """Expanded size and depth of the node graph from ``root`` (memoized per distinct node: linear time)."""
    weight: dict[int, int] = {}  # id -> the node's size once expanded: nodes + scalar characters
    height: dict[int, int] = {}  # id -> levels below and including the node, expanded
    on_path: set[int] = set()
    own = 0  # the document's size as written: each distinct node once
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = _children(node)
            own_weight = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            weight[key] = own_weight + sum(weight[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            own += own_weight
            if height[key] > max_depth:
                raise YAMLLimitError(f"{where} is nested more deeply than {max_depth} levels{_line(node)}.")
            continue
        if key in weight:
            continue
        if key in on_path:
            raise YAMLLimitError(
                f"{where} is recursive: an alias refers to a node that contains it{_line(node)}."
            )
        if isinstance(node.tag, str) and node.tag.startswith(_PYTHON_TAG):
            raise YAMLLimitError(
                f"{where} uses the tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r}{_line(node)}: config files "
                "hold data, not Python objects."
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in weight)
    added = weight[id(root)] - own
    if added > max_alias_expansion:
        raise YAMLLimitError(
            f"{where} expands its aliases to {weight[id(root)]:,} nodes and characters from {own:,} as written "
            f"(aliases add {added:,}, more than {max_alias_expansion:,}): refused (a 'billion laughs' document?)."
        )


def load_yaml(
    text: str | bytes,
    source: str | os.PathLike = "",
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_alias_expansion: int = MAX_ALIAS_EXPANSION,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The document's data, loaded with PyYAML's safe loader after :func:`check_yaml` (same arguments).

    Raises:
        YAMLLimitError: over a limit (see :func:`check_yaml`).
        yaml.YAMLError: not YAML, or a tag the safe loader does not know.
    """
    check_yaml(
        text, source, max_bytes=max_bytes, max_alias_expansion=max_alias_expansion, max_depth=max_depth
    )
    return yaml.load(text, Loader=_loader_class())  # noqa: S506 - a safe loader


def bounded(loader: Callable[[str], Any], **limits: int) -> Callable[..., Any]:
    """``loader`` (a jsonargparse YAML loader: text in, data out) behind :func:`check_yaml` with ``limits``;
    the file's path, when jsonargparse passes it, is named in the messages."""
    inner = getattr(loader, _MARKER, loader)  # wrapped once, whatever the number of install() calls

    def load(stream: str, path: str | os.PathLike = "") -> Any:
        check_yaml(stream, path, **limits)
        return inner(stream)

    # not functools.wraps: jsonargparse reads the signature (``path``), which ``__wrapped__`` would hide
    load.__name__ = load.__qualname__ = f"bounded_{getattr(inner, '__name__', 'loader')}"
    load.__doc__ = f"{getattr(inner, '__name__', 'loader')} behind lightning_optim.yaml_limits.check_yaml."
    setattr(load, _MARKER, inner)
    return load


def install(
    max_bytes: int = MAX_DOCUMENT_BYTES,
    max_alias_expansion: int = MAX_ALIAS_EXPANSION,
    max_depth: int = MAX_DEPTH,
) -> None:
    """Put :func:`check_yaml` in front of jsonargparse's YAML loading, for every parser of this process.

    Registers the bounded loader with ``jsonargparse.set_loader("yaml", ...)`` (config files and command-line
    values), and wraps the YAML loader jsonargparse uses for values inside a config that are themselves YAML
    text. Calling it again replaces the limits (the loaders are wrapped once).
    """
    from jsonargparse import get_loader, set_loader

    limits = {"max_bytes": max_bytes, "max_alias_expansion": max_alias_expansion, "max_depth": max_depth}
    set_loader(
        "yaml", bounded(get_loader("yaml"), **limits), exceptions=(yaml.YAMLError,), json_superset=True
    )
    try:  # values that are YAML text inside a config (a string where a number is expected) load through this
        from jsonargparse import _loaders_dumpers
    except ImportError:  # pragma: no cover - another jsonargparse layout: config files are still covered
        return
    if callable(getattr(_loaders_dumpers, "yaml_load", None)):
        _loaders_dumpers.yaml_load = bounded(_loaders_dumpers.yaml_load, **limits)


def uninstall() -> None:
    """Undo :func:`install`: jsonargparse's own YAML loaders again (tests use it to compare)."""
    from jsonargparse import get_loader, set_loader

    current = get_loader("yaml")
    if getattr(current, _MARKER, None) is not None:
        set_loader("yaml", getattr(current, _MARKER), exceptions=(yaml.YAMLError,), json_superset=True)
        try:
            from jsonargparse import _loaders_dumpers

            _loaders_dumpers.loader_params.pop("yaml", None)  # the original takes no ``path``
        except ImportError:  # pragma: no cover
            pass
    try:
        from jsonargparse import _loaders_dumpers
    except ImportError:  # pragma: no cover
        return
    inner = getattr(getattr(_loaders_dumpers, "yaml_load", None), _MARKER, None)
    if inner is not None:
        _loaders_dumpers.yaml_load = inner


def check_config_files(args: Sequence[str] | None = None) -> None:
    """Refuse, before jsonargparse reads anything, a command line whose ``--config`` is not a regular file, or
    any of whose values names a FIFO or a socket: jsonargparse would block on it forever.

    Args:
        args: the command line (``None``: ``sys.argv[1:]``); anything but a list of strings is left alone.

    Raises:
        FileNotFoundError: a ``--config`` file that does not exist.
        ValueError: a ``--config`` that is a folder, FIFO, socket or device, or a value naming a FIFO or socket.
    """
    args = sys.argv[1:] if args is None else args
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        return
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            user_file(args[i + 1], "--config", what="a YAML config file")
        elif arg.startswith("--config="):
            user_file(arg.split("=", 1)[1], "--config", what="a YAML config file")
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        try:
            mode = os.stat(value).st_mode if value and "\0" not in value else 0
        except (OSError, ValueError):
            continue
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            option = args[i - 1] if value == arg and i and args[i - 1].startswith("--") else arg.split("=")[0]
            raise ValueError(
                f"`{option}` {value!r} is not a regular file (a FIFO or socket): reading it would block; give the "
                "path of a file."
            )


def guard_cli(args: Sequence[str] | None = None) -> None:
    """What the ``lightning-optim`` command does before parsing: :func:`install` the limits and
    :func:`check_config_files` of ``args``."""
    install()
    check_config_files(args)
