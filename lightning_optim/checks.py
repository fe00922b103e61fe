"""Validation helpers shared by every part of the package, so that every refusal reads the same way.

The one wording of a bad choice: ``Unknown `option` 'value'; allowed: [...].`` (:func:`check_choice`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def check_choice(option: str, value: T, allowed: Iterable[Any], *, kind: str = "", hint: str = "") -> T:
    """``value`` if it is one of ``allowed``, else a :class:`ValueError` naming the option and the choices.

    Args:
        option: the option's name as the user writes it (``"granularity"``); shown in backticks.
        value: what the user gave.
        allowed: the valid values, listed in this order in the message (pass ``sorted(...)`` for sorted).
        kind: a word before the option (``kind="warm-up"`` gives ``Unknown warm-up `mode` ...``).
        hint: text after the list (``" or a dotted import path"``), before the final full stop.

    Raises:
        ValueError: ``Unknown `option` 'value'; allowed: [...]{hint}.``

    Example::

        check_choice("unit", unit, ("epoch", "step"))
    """
    choices = list(allowed)
    try:
        ok = value in choices
    except TypeError:  # an unhashable or uncomparable value is not a choice
        ok = False
    if not ok:
        prefix = f"{kind} " if kind else ""
        raise ValueError(f"Unknown {prefix}`{option}` {value!r}; allowed: {choices}{hint}.")
    return value


__all__ = ["check_choice"]
