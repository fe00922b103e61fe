"""Pruning masks: unstructured magnitude (layer-wise or global) and structured (neurons/filters by norm).

A mask is a ``bool`` tensor, ``True`` where the weight is kept. Unstructured masks have the weight's shape;
structured masks select whole output units (rows of a ``Linear``, filters of a ``Conv``) and have shape
``(out, 1, ..., 1)``, so they broadcast over the weight and cost one flag per unit.

Sparsity is always the fraction of the weights (or units) pruned, a *target*: exactly
``round(sparsity * n)`` of the ``n`` entries are pruned (the lowest scores; ties broken by position), never
a fraction of what was left by an earlier step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

#: granularity name -> canonical granularity (``neuron``/``filter``/``channel`` all prune output units)
GRANULARITIES: dict[str, str] = {
    "unstructured": "unstructured",
    "structured": "structured",
    "neuron": "structured",
    "filter": "structured",
    "channel": "structured",
}
#: importance name -> norm order of a unit's weights (unstructured pruning uses |w| for both)
IMPORTANCES: dict[str, int] = {"l1": 1, "magnitude": 1, "l2": 2}
#: scope names
SCOPES: tuple[str, ...] = ("layer", "global")


def check_choice(value: str, allowed: Mapping | tuple, name: str) -> str:
    """Validate that ``value`` is one of ``allowed``.

    Raises:
        ValueError: naming the option and the allowed values.
    """
    if value not in allowed:
        raise ValueError(f"Unknown `{name}` {value!r}; allowed: {sorted(allowed)}.")
    return value


def num_pruned(n: int, sparsity: float, keep_one: bool = False) -> int:
    """``round(sparsity * n)``, at most ``n - 1`` when ``keep_one``."""
    k = int(round(float(sparsity) * n))
    return min(k, n - 1) if keep_one else min(k, n)


def unit_scores(weight: Tensor, importance: str = "l1", normalize: bool = False) -> Tensor:
    """Norm of each output unit (row of ``weight.flatten(1)``): L1 or L2; divided by the unit's size
    (mean absolute value, root mean square) when ``normalize``, to compare units of different layers."""
    order = IMPORTANCES[check_choice(importance, IMPORTANCES, "importance")]
    rows = weight.detach().flatten(1).float()
    if order == 1:
        scores = rows.abs().sum(1)
        return scores / rows.shape[1] if normalize else scores
    scores = rows.pow(2).sum(1)
    return (scores / rows.shape[1]).sqrt() if normalize else scores.sqrt()


def _keep_mask_from_scores(scores: Tensor, k: int) -> Tensor:
    """``True`` everywhere except at the ``k`` lowest scores (flattened)."""
    flat = scores.flatten()
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        # stable sort: equal scores are pruned in index order, the same on every process
        idx = torch.sort(flat, stable=True).indices[:k]
        keep[idx] = False
    return keep.view_as(scores)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Unstructured mask pruning exactly ``round(sparsity * numel)`` entries of lowest ``|w|``."""
    scores = weight.detach().abs().float()
    return _keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity))


def structured_mask(weight: Tensor, sparsity: float, importance: str = "l1") -> Tensor:
    """Mask of shape ``(out, 1, ...)`` pruning ``round(sparsity * out)`` output units of lowest norm
    (at least one unit is kept)."""
    scores = unit_scores(weight, importance)
    keep = _keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity, keep_one=True))
    return keep.view(-1, *([1] * (weight.dim() - 1)))


def global_magnitude_masks(weights: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Unstructured masks over several tensors ranked together: exactly ``round(sparsity * total)`` of all
    their entries are pruned, so layers with many small weights end up sparser."""
    if not weights:
        return {}
    names = list(weights)
    scores = torch.cat([weights[n].detach().abs().float().flatten() for n in names])
    keep = _keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity))
    out, offset = {}, 0
    for n in names:
        numel = weights[n].numel()
        out[n] = keep[offset : offset + numel].view_as(weights[n])
        offset += numel
    return out


def global_structured_masks(
    weights: Mapping[str, Tensor], sparsity: float, importance: str = "l1"
) -> dict[str, Tensor]:
    """Structured masks over several layers ranked together by size-normalized unit norm (mean ``|w|`` for
    ``l1``, RMS for ``l2``): exactly ``round(sparsity * total_units)`` units pruned, each layer keeping at
    least one."""
    if not weights:
        return {}
    names = list(weights)
    per_layer = [unit_scores(weights[n], importance, normalize=True) for n in names]
    scores = torch.cat(per_layer)
    # the best unit of every layer is never pruned: give it an infinite score
    guarded = []
    for s in per_layer:
        s = s.clone()
        s[torch.argmax(s)] = float("inf")
        guarded.append(s)
    total = scores.numel()
    k = min(num_pruned(total, sparsity), total - len(names))
    keep = _keep_mask_from_scores(torch.cat(guarded), k)
    out, offset = {}, 0
    for n, s in zip(names, per_layer):
        out[n] = keep[offset : offset + s.numel()].view(-1, *([1] * (weights[n].dim() - 1)))
        offset += s.numel()
    return out


def compute_masks(
    weights: Mapping[str, Tensor],
    sparsity: float,
    granularity: str = "unstructured",
    scope: str = "layer",
    importance: str = "l1",
    layer_sparsity: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Masks for named weights at a target ``sparsity``.

    Args:
        weights: name -> weight tensor.
        sparsity: target fraction pruned, in ``[0, 1)``.
        granularity: ``"unstructured"``, or ``"structured"`` (alias ``"neuron"``, ``"filter"``, ``"channel"``):
            whole output units.
        scope: ``"layer"`` (each tensor reaches ``sparsity``) or ``"global"`` (all tensors ranked together).
        importance: ``"l1"`` (alias ``"magnitude"``) or ``"l2"`` norm of a unit, for structured pruning.
        layer_sparsity: name -> sparsity for tensors pruned at their own target (layer-wise) instead.

    Raises:
        ValueError: for unknown granularity/scope/importance names or a sparsity outside ``[0, 1)``.
    """
    gran = GRANULARITIES[check_choice(granularity, GRANULARITIES, "granularity")]
    check_choice(scope, SCOPES, "scope")
    check_choice(importance, IMPORTANCES, "importance")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity}.")
    overrides = dict(layer_sparsity or {})
    masks: dict[str, Tensor] = {}
    layerwise = {n: overrides.get(n, sparsity) for n in weights if scope == "layer" or n in overrides}
    for name, s in layerwise.items():
        w = weights[name]
        masks[name] = magnitude_mask(w, s) if gran == "unstructured" else structured_mask(w, s, importance)
    rest = {n: w for n, w in weights.items() if n not in layerwise}
    if rest:
        if gran == "unstructured":
            masks.update(global_magnitude_masks(rest, sparsity))
        else:
            masks.update(global_structured_masks(rest, sparsity, importance))
    return {n: masks[n] for n in weights}


@torch.no_grad()
def apply_masks_(tensors: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero in place the entries of ``tensors`` (weights, gradients) where ``masks`` is ``False``.

    Masks may have any dtype (``bool`` or the tensor's own, which is faster) and broadcast over the tensor.
    """
    for name, mask in masks.items():
        t = tensors.get(name)
        if t is not None:
            t.mul_(mask)


@torch.no_grad()
def zero_masks(tensors: Mapping[str, Tensor], min_dim: int = 2) -> dict[str, Tensor]:
    """Keep-masks (``True`` where non-zero) of the tensors with at least ``min_dim`` dimensions that hold an
    exact zero: what :func:`apply_masks_` needs to keep pruned weights at zero while others train on.

    Example::

        keep = zero_masks(dict(model.named_parameters()))
        ...  # an optimizer step
        apply_masks_(dict(model.named_parameters()), keep)
    """
    out = {}
    for name, t in tensors.items():
        if t.dim() >= min_dim:
            keep = t != 0
            if not bool(keep.all()):
                out[name] = keep
    return out


def mask_sparsity(mask: Tensor, shape: torch.Size | tuple[int, ...] | None = None) -> float:
    """Fraction of the weight pruned by ``mask`` (a broadcast structured mask counts whole units)."""
    if shape is None or tuple(mask.shape) == tuple(shape):
        return 1.0 - float(mask.float().mean())
    return 1.0 - float(mask.float().expand(shape).mean())


def pack_mask(mask: Tensor) -> Tensor:
    """A bool mask as bits: ``uint8`` with 8 entries per byte (1/32 of a float32 weight)."""
    flat = mask.detach().flatten().to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (flat.view(-1, 8) * bits).sum(1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_mask`."""
    n = 1
    for d in shape:
        n *= int(d)
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    flat = (packed.to(torch.uint8).view(-1, 1) & bits).ne(0).flatten()[:n]
    return flat.view(tuple(shape))
