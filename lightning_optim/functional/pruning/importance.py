"""Importance: how much each weight or unit is worth keeping, and how many of them a sparsity prunes.

Unstructured pruning ranks single weights by ``|w|``; structured pruning ranks output units (rows of a
``Linear``, filters of a ``Conv``) by the L1 or L2 norm of their weights (:func:`unit_scores`). A sparsity
``s`` of ``n`` entries prunes exactly ``round(s * n)`` of them (:func:`num_pruned`), the lowest scores, ties
broken by position (:func:`keep_mask_from_scores`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_optim.checks import check_choice

#: importance name -> norm order of a unit's weights (unstructured pruning uses |w| for both)
IMPORTANCES: dict[str, int] = {"l1": 1, "magnitude": 1, "l2": 2}


def check_importance(importance: str) -> str:
    """``importance`` if it is a name of :data:`IMPORTANCES`.

    Raises:
        ValueError: ``Unknown `importance` ...; allowed: [...].``
    """
    return check_choice("importance", importance, sorted(IMPORTANCES))


def num_pruned(n: int, sparsity: float, keep_one: bool = False) -> int:
    """``round(sparsity * n)``, at most ``n - 1`` when ``keep_one``."""
    k = int(round(float(sparsity) * n))
    return min(k, n - 1) if keep_one else min(k, n)


def magnitude_scores(weight: Tensor) -> Tensor:
    """``|w|`` in float32, the score of every single weight (unstructured pruning)."""
    return weight.detach().abs().float()


def unit_scores(weight: Tensor, importance: str = "l1", normalize: bool = False) -> Tensor:
    """Norm of each output unit (row of ``weight.flatten(1)``): L1 or L2; divided by the unit's size
    (mean absolute value, root mean square) when ``normalize``, to compare units of different layers."""
    order = IMPORTANCES[check_importance(importance)]
    rows = weight.detach().flatten(1).float()
    if order == 1:
        scores = rows.abs().sum(1)
        return scores / rows.shape[1] if normalize else scores
    scores = rows.pow(2).sum(1)
    return (scores / rows.shape[1]).sqrt() if normalize else scores.sqrt()


def keep_mask_from_scores(scores: Tensor, k: int) -> Tensor:
    """``True`` everywhere except at the ``k`` lowest scores (flattened; equal scores pruned in index order)."""
    flat = scores.flatten()
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        # stable sort: equal scores are pruned in index order, the same on every process
        idx = torch.sort(flat, stable=True).indices[:k]
        keep[idx] = False
    return keep.view_as(scores)


__all__ = [
    "IMPORTANCES",
    "check_importance",
    "keep_mask_from_scores",
    "magnitude_scores",
    "num_pruned",
    "unit_scores",
]
