"""Old import paths kept for one release (0.2.x): each access warns and names the new path.

The shims are removed in 0.3.0. A shim module is empty except for ``__getattr__ = moved(__name__, NEW)``:
every attribute is looked up in the new module on access, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

#: the release that removes the old paths
REMOVED_IN = "0.3.0"


def moved(old: str, new: str, renamed: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that forwards ``old.<name>`` to ``new.<name>`` with a ``DeprecationWarning``.

    Args:
        old: the deprecated module path (the shim's ``__name__``).
        new: the module that now holds the names.
        renamed: ``{old name: "module.path:new_name"}`` for names that moved elsewhere or were renamed.
    """
    renamed = dict(renamed or {})

    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        target_module, _, target_name = renamed.get(name, f"{new}:{name}").partition(":")
        module = importlib.import_module(target_module)
        try:
            value = getattr(module, target_name)
        except AttributeError:
            raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
        warnings.warn(
            f"`{old}.{name}` moved to `{target_module}.{target_name}`; the old path is removed in "
            f"lightning-optim {REMOVED_IN}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
