"""Class labels, checked before any epoch: class indices for tensors, one canonical name per class for text.

Two kinds of labels reach the data modules:

- **class indices** (tensors, named datasets, image folders): :func:`check_class_indices` accepts a 1-D tensor
  of whole, finite, non-negative numbers (an integer dtype, or a float one holding whole numbers: ``3.0`` is
  class 3), below ``num_classes`` where it is known, and returns them as int64. Everything else is refused
  with a message naming the first bad label, its position, how many there are and the fix: ``2.97`` (never
  truncated to 2), NaN/inf, negative labels, an ``(N, 1)`` column (``labels.squeeze(1)``), one-hot rows
  (``labels.argmax(1)``).
- **class names** (text files): :func:`canonical_label` gives every label one written form, so that
  ``"1"``, ``"1.0"``, ``" 1"``, ``"+1"``, ``"01"`` and the JSON number ``1.0`` are one class, ``"1"``:
  whitespace at the ends is stripped and runs inside collapse to one space, the text is NFC-normalized, and a
  label that reads as a number is written in its shortest exact decimal form (``"2.50"`` -> ``"2.5"``,
  ``"1e2"`` -> ``"100"``). Letters keep their case (``"Pos"`` and ``"pos"`` are two classes). ``NaN`` and
  infinite numbers are refused (a missing value is an empty field, and its row is dropped).

:func:`split_sizes` tells how a data module splits ``n`` samples, and :func:`check_split_sizes` refuses a
data set too small to give every split a sample, at construction or ``setup``.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: labels at or above this are refused where the number of classes is not known (it would be the model's width)
MAX_CLASS_INDEX: int = 2**31 - 1
#: a numeric text label is rewritten in its shortest form only when its decimal exponent is within this bound
_CANONICAL_EXPONENT: int = 40
_SPACES = re.compile(r"\s+")


def _first(mask: Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _shape_text(shape: Any) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_class_indices(
    labels: Any, *, num_classes: int | None = None, option: str = "labels", where: str = ""
) -> Tensor:
    """``labels`` as a 1-D int64 tensor of class indices, or a :class:`ValueError` saying what is wrong.

    Args:
        labels: a tensor (or array, or sequence of numbers) with one label per sample.
        num_classes: the number of classes where known (named datasets, folders); labels must be below it.
        option: the option the labels come from, named in the messages (``"labels"``).
        where: where they come from, added to the messages (``" (MNIST file 't10k-labels-idx1-ubyte')"``).

    Returns:
        int64 ``(N,)``: integer labels as they are, whole float labels (``3.0``) as integers, ``bool`` as 0/1.

    Raises:
        ValueError: not numbers; not 1-D (``(N, 1)``: use ``labels.squeeze(1)``; one-hot ``(N, K)``: use
            ``labels.argmax(1)``); NaN or inf; a fraction (``2.97``); a negative label; a label at or above
            ``num_classes`` (or above :data:`MAX_CLASS_INDEX` where it is not known).
    """
    name = f"`{option}`{where}"
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{name} must be class indices, one number per sample (a 1-D tensor of ints); got "
                f"{type(labels).__name__} that is not numeric ({err})."
            ) from None
    if labels.is_complex() or not (
        labels.is_floating_point() or labels.dtype == torch.bool or _is_int(labels)
    ):
        raise ValueError(f"{name} must be class indices (an integer tensor); got dtype {labels.dtype}.")
    if labels.ndim != 1:
        shape = _shape_text(labels.shape)
        if labels.ndim == 0:
            fix = "give one label per sample, shape (N,)"
        elif labels.ndim == 2 and labels.shape[1] == 1:
            fix = f"class indices are 1-D, shape ({labels.shape[0]},): use `{option}.squeeze(1)`"
        elif labels.ndim == 2:
            fix = (
                f"class indices are 1-D, one per sample; one-hot or per-class scores of {labels.shape[1]} "
                f"classes become indices with `{option}.argmax(1)`"
            )
        else:
            fix = "class indices are 1-D, shape (N,), one per sample"
        raise ValueError(f"{name} has shape {shape}: {fix}.")
    if labels.dtype == torch.bool:
        return labels.long()
    if labels.dtype in (torch.uint16, torch.uint32, torch.uint64):  # no min/max kernels for these on CPU
        labels = labels.to(torch.int64)
    if labels.is_floating_point():
        finite = torch.isfinite(labels)
        if not bool(finite.all()):
            bad = ~finite
            i = _first(bad)
            raise ValueError(
                f"{name} holds {int(bad.sum())} NaN/inf label(s), the first at index {i} ({float(labels[i])}): "
                "every sample needs a class index; drop those samples or give them their class."
            )
        fraction = labels != labels.round()
        if bool(fraction.any()):
            i = _first(fraction)
            raise ValueError(
                f"{name} holds {int(fraction.sum())} label(s) that are not whole numbers, the first at index {i} "
                f"({float(labels[i]):.6g}): class indices are integers (3.0 is class 3) and a fraction is never "
                f"truncated; give integer labels (`{option}.round().long()` if rounding is what you mean)."
            )
    if labels.numel() == 0:
        return labels.long()
    low = labels.min()
    if bool(low < 0):
        negative = labels < 0
        i = _first(negative)
        raise ValueError(
            f"{name} holds {int(negative.sum())} negative label(s), the first at index {i} ({_num(labels[i])}): "
            f"class indices run from 0 to the number of classes - 1; map the classes to 0, 1, ... first."
        )
    limit = num_classes if num_classes is not None else MAX_CLASS_INDEX
    over = labels >= limit
    if bool(over.any()):
        i = _first(over)
        allowed = (
            f"0..{num_classes - 1} ({num_classes} classes)" if num_classes is not None else f"below {limit}"
        )
        raise ValueError(
            f"{name} holds {int(over.sum())} label(s) out of range, the first at index {i} ({_num(labels[i])}); "
            f"class indices must be {allowed}."
        )
    return labels.long()


def _is_int(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _num(value: Tensor) -> str:
    v = value.item()
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def warn_missing_classes(labels: Tensor, option: str = "labels") -> None:
    """Warn when some of the classes ``0..max(labels)`` have no sample (1-based labels leave class 0 empty)."""
    if labels.numel() == 0:
        return
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        hint = " (1-based labels? class indices start at 0: subtract 1)" if empty[0] == 0 else ""
        warnings.warn(
            f"`{option}` leave {len(empty)} of the {counts.numel()} classes 0..{counts.numel() - 1} without a "
            f"sample, e.g. {empty[:5]}{hint}; the number of classes is the largest label + 1.",
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------------------ class names
def canonical_label(value: Any, where: str = "") -> str | None:
    """The one written form of a class name (see the module docstring); ``None`` for a missing label.

    Args:
        value: the label as read: a string (CSV/TSV field, JSON string), a JSON number or bool, or ``None``.
        where: where it was read, for the messages (``" ('train.csv' line 4)"``).

    Raises:
        ValueError: NaN or an infinite number; a JSON list or object.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()  # JSON true/false, as JSON writes them
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(_not_a_class(repr(value), where))
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise ValueError(
            f"Label {str(value)[:40]!r}{where} is a {type(value).__name__}; a label is a string or a number."
        )
    text = _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
    if not text:
        return None
    return _canonical_number(text, where)


def _not_a_class(text: str, where: str) -> str:
    return (
        f"Label {text[:40]!r}{where} is not a class: NaN and infinite numbers are refused; leave the field "
        "empty for a missing label (its row is dropped and counted)."
    )


def _canonical_number(text: str, where: str) -> str:
    if (
        len(text) > 100
        or not any(c.isdigit() for c in text)
        and text.lower().strip("+-")
        not in (
            "nan",
            "snan",
            "inf",
            "infinity",
        )
    ):
        return text
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return text
    if number.is_nan() or number.is_infinite():
        raise ValueError(_not_a_class(text, where))
    if number.is_zero():
        return "0"
    if abs(number.adjusted()) > _CANONICAL_EXPONENT:
        return text
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def canonical_labels(values: list[Any], where: str = "") -> list[str | None]:
    """:func:`canonical_label` of every value (``where`` names the file in the messages)."""
    return [canonical_label(v, where) for v in values]


# ------------------------------------------------------------------------------------------------ split sizes
def holdout_count(n: int, fraction: float) -> int:
    """How many of ``n`` samples a seeded hold-out of ``fraction`` takes (at least one, never all)."""
    return min(n - 1, max(1, int(round(n * fraction)))) if n > 1 else 0


def split_sizes(n: int, val_split: float, test_fraction: float | None = 0.2) -> dict[str, int]:
    """``{"train", "val", "test"}`` sample counts of ``n`` samples: ``test_fraction`` held out first (``None``:
    the test data come from elsewhere), then ``val_split`` of the rest."""
    test = holdout_count(n, test_fraction) if test_fraction is not None else 0
    val = holdout_count(n - test, val_split)
    return {"train": n - test - val, "val": val, "test": test}


def check_split_sizes(sizes: dict[str, int], source: str, hint: str) -> None:
    """Refuse splits of which one is empty.

    Args:
        sizes: samples per split (``{"train": 1, "val": 0, "test": 1}``).
        source: what the samples come from (``"`images` hold 2 samples"``).
        hint: the fix (``"give at least 3 samples"``).

    Raises:
        ValueError: a split without a sample, naming the counts, the source and the fix.
    """
    empty = [name for name, count in sizes.items() if count == 0]
    if empty:
        counts = ", ".join(f"{name} {count}" for name, count in sizes.items())
        names = empty[0] if len(empty) == 1 else ", ".join(empty[:-1]) + " and " + empty[-1]
        raise ValueError(
            f"Too few samples to split: {source}, which leaves the {names} split{'s' if len(empty) > 1 else ''} "
            f"empty ({counts}); {hint}."
        )


__all__ = [
    "MAX_CLASS_INDEX",
    "canonical_label",
    "canonical_labels",
    "check_class_indices",
    "check_split_sizes",
    "holdout_count",
    "split_sizes",
    "warn_missing_classes",
]
