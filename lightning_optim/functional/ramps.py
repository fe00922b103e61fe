r"""Ramps: how a value moves from ``start`` to ``end`` as training progresses from 0 to 1.

One function, :func:`ramp`, serves every schedule that is a ramp: the sparsity of a pruning run
(:mod:`lightning_optim.functional.pruning.schedules`) and the temperature and alpha of distillation
(:mod:`lightning_optim.functional.distillation`).

- ``"linear"``: ``start + (end - start) * p``;
- ``"cosine"``: a half-cosine ease, ``start + (end - start) * (1 - cos(pi p)) / 2``;
- ``"cubic"``: Zhu & Gupta 2017, ``end + (start - end) * (1 - p)^3`` (fast first, slow at the end);
- ``"constant"``: ``end`` from the start (one-shot).

``p`` is the progress clamped to ``[0, 1]``.
"""

from __future__ import annotations

import math

from lightning_optim.checks import check_choice

#: ramp shapes
RAMPS: tuple[str, ...] = ("linear", "cosine", "cubic", "constant")


def ramp(progress: float, start: float, end: float, kind: str = "linear") -> float:
    """The value of a ``kind`` ramp from ``start`` to ``end`` at ``progress`` (clamped to ``[0, 1]``).

    Raises:
        ValueError: for a ``kind`` outside :data:`RAMPS`.
    """
    check_choice("kind", kind, RAMPS)
    p = min(max(float(progress), 0.0), 1.0)
    if kind == "constant":
        return float(end)
    if kind == "cubic":
        return float(end + (start - end) * (1.0 - p) ** 3)
    if kind == "cosine":
        p = 0.5 * (1.0 - math.cos(math.pi * p))
    return float(start + (end - start) * p)


__all__ = ["RAMPS", "ramp"]
