"""Pruning masks: unstructured magnitude (layer-wise or global) and structured (neurons/filters by norm).

A mask is a ``bool`` tensor, ``True`` where the weight is kept. Unstructured masks have the weight's shape;
structured masks select whole output units (rows of a ``Linear``, filters of a ``Conv``) and have shape
``(out, 1, ..., 1)``, so they broadcast over the weight and cost one flag per unit.

Sparsity is always the fraction of the weights (or units) pruned, a *target*: exactly
``round(sparsity * n)`` of the ``n`` entries are pruned (the lowest scores; ties broken by position), never
a fraction of what was left by an earlier step. How weights and units are scored, and how many a sparsity
prunes, is :mod:`lightning_optim.functional.pruning.importance`.

Sharded parameters (``DTensor``, as FSDP2's ``fully_shard`` or tensor parallelism make them): masks are
computed on the full tensors (:func:`compute_masks` gathers them with :func:`full_tensor`, a collective that
every rank runs), so they are the masks of a single-process run, and applied to each rank's shards
(:func:`cast_masks` splits each mask as its tensor is split, with :func:`shard_like`, without communication).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_optim.checks import check_choice
from lightning_optim.functional.pruning.importance import (
    IMPORTANCES as IMPORTANCES,  # re-exported: masks.IMPORTANCES was its home before importance.py
)
from lightning_optim.functional.pruning.importance import (
    check_importance,
    keep_mask_from_scores,
    magnitude_scores,
    num_pruned,
    unit_scores,
)

#: granularity name -> canonical granularity (``neuron``/``filter``/``channel`` all prune output units of one
#: layer; ``channel_groups``/``groups`` prune channels with every layer that shares them, by dependency groups:
#: :mod:`lightning_optim.functional.pruning.groups`, which needs the model, not only its weights)
GRANULARITIES: dict[str, str] = {
    "unstructured": "unstructured",
    "structured": "structured",
    "neuron": "structured",
    "filter": "structured",
    "channel": "structured",
    "channel_groups": "groups",
    "groups": "groups",
}
#: scope names
SCOPES: tuple[str, ...] = ("layer", "global")


def _dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``, or ``None`` where torch is built without distributed support."""
    import torch.distributed as dist

    if not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter, gradient or state split over a device mesh)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def full_tensor(t: Tensor) -> Tensor:
    """The whole of ``t``: a ``DTensor`` gathered from its shards (a collective: every rank of its mesh must
    call it, in the same order), any other tensor itself."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(mask: Tensor, tensor: Tensor) -> Tensor:
    """``mask`` (whole, the same on every rank) split over ``tensor``'s device mesh as ``tensor`` is (a
    ``DTensor`` with its placements: each rank keeps its part, no communication); ``mask`` itself when
    ``tensor`` is not sharded. A mask that broadcasts over the tensor (a structured ``(out, 1, ...)`` mask)
    is split along the same dimensions."""
    if not is_sharded(tensor):
        return mask
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(mask, tensor.device_mesh, tensor.placements, src_data_rank=None)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Unstructured mask pruning exactly ``round(sparsity * numel)`` entries of lowest ``|w|``."""
    scores = magnitude_scores(weight)
    return keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity))


def structured_mask(weight: Tensor, sparsity: float, importance: str = "l1") -> Tensor:
    """Mask of shape ``(out, 1, ...)`` pruning ``round(sparsity * out)`` output units of lowest norm
    (at least one unit is kept)."""
    scores = unit_scores(weight, importance)
    keep = keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity, keep_one=True))
    return keep.view(-1, *([1] * (weight.dim() - 1)))


def global_magnitude_masks(weights: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Unstructured masks over several tensors ranked together: exactly ``round(sparsity * total)`` of all
    their entries are pruned, so layers with many small weights end up sparser."""
    if not weights:
        return {}
    names = list(weights)
    scores = torch.cat([magnitude_scores(weights[n]).flatten() for n in names])
    keep = keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity))
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
    keep = keep_mask_from_scores(torch.cat(guarded), k)
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

    Sharded weights (``DTensor``) are gathered first (:func:`full_tensor`, a collective: every rank calls
    this function with the same names), so the masks are whole and equal to a single-process run's.

    Args:
        weights: name -> weight tensor (plain or ``DTensor``).
        sparsity: target fraction pruned, in ``[0, 1)``.
        granularity: ``"unstructured"``, or ``"structured"`` (alias ``"neuron"``, ``"filter"``, ``"channel"``):
            whole output units.
        scope: ``"layer"`` (each tensor reaches ``sparsity``) or ``"global"`` (all tensors ranked together).
        importance: ``"l1"`` (alias ``"magnitude"``) or ``"l2"`` norm of a unit, for structured pruning.
        layer_sparsity: name -> sparsity for tensors pruned at their own target (layer-wise) instead.

    Raises:
        ValueError: for unknown granularity/scope/importance names or a sparsity outside ``[0, 1)``.
    """
    gran = GRANULARITIES[check_choice("granularity", granularity, sorted(GRANULARITIES))]
    if gran == "groups":
        raise ValueError(
            f"`granularity={granularity!r}` masks dependency groups of a traced model, not named weights: use "
            "lightning_optim.functional.pruning.groups.group_masks(model, graph, ...)."
        )
    check_choice("scope", scope, sorted(SCOPES))
    check_importance(importance)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity}.")
    weights = {n: full_tensor(w) for n, w in weights.items()}
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


def unit_masks_with_followers(
    masks: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    followers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Tensor]:
    """Structured masks extended to everything that belongs to a pruned output unit.

    A unit mask of ``"<module>.weight"`` (shape ``(out, 1, ...)``) also masks ``"<module>.bias"`` and the
    ``weight``/``bias`` of the normalization layers that follow the module (``followers``: module name ->
    follower module names, as :func:`lightning_optim.functional.pruning.channel_followers` gives them), each
    where that parameter exists in ``params`` with one entry per unit.
    A parameter reached by two masks keeps only what both keep.

    Args:
        masks: weight name (``"<module>.weight"``) -> structured keep-mask.
        params: parameter name -> parameter (``dict(model.named_parameters())``); only their shapes are read.
        followers: module name -> names of the modules whose per-channel parameters follow its units.

    Returns:
        parameter name -> keep-mask (the weights' own masks first, in the order of ``masks``).
    """
    followers = followers or {}
    out: dict[str, Tensor] = {}

    def add(name: str, mask: Tensor) -> None:
        out[name] = out[name] & mask if name in out else mask

    for name, mask in masks.items():
        add(name, mask)
        unit = mask.flatten()
        module_name = name[: -len(".weight")] if name.endswith(".weight") else name
        extra = [f"{module_name}.bias"]
        for follower in followers.get(module_name, []):
            extra += [f"{follower}.weight", f"{follower}.bias"]
        for pname in extra:
            p = params.get(pname)
            if p is not None and p.shape == unit.shape:
                add(pname, unit)
    return out


def cast_masks(masks: Mapping[str, Tensor], tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``masks`` in the dtype and on the device of the tensor of the same name: the fast form for
    :func:`apply_masks_` (a multiply, no conversion at each step). Masks without a tensor are left out.
    The mask of a sharded tensor (``DTensor``) is split as the tensor is (:func:`shard_like`), so that the
    multiply, of the tensor, its gradient or its optimizer state, stays on each rank's shard."""
    return {
        n: shard_like(m.to(device=tensors[n].device, dtype=tensors[n].dtype), tensors[n])
        for n, m in masks.items()
        if n in tensors
    }


@torch.no_grad()
def apply_masks_(tensors: Mapping[str, Tensor | None], masks: Mapping[str, Tensor]) -> None:
    """Zero in place the entries of ``tensors`` (weights, gradients) where ``masks`` is ``False``.

    Masks may have any dtype (``bool`` or the tensor's own, which is faster) and broadcast over the tensor.
    A name missing from ``tensors`` or mapped to ``None`` (a parameter without a gradient) is skipped.
    """
    for name, mask in masks.items():
        t = tensors.get(name)
        if t is not None:
            t.mul_(mask)


@torch.no_grad()
def mask_gradients_(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero in place the gradients of ``params`` where ``masks`` is ``False`` (parameters without one are
    skipped), so that an optimizer step does not move pruned weights through their gradient."""
    apply_masks_({n: p.grad for n, p in params.items()}, masks)


@torch.no_grad()
def mask_optimizer_state_(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> None:
    """Zero in place the per-entry optimizer state (momentum, moment estimates: every state tensor of the
    parameter's shape) of the entries that ``masks`` prunes, so that it does not push on the masked weights."""
    for name, mask in masks.items():
        param = params.get(name)
        state = optimizer.state.get(param) if param is not None else None
        if not state:
            continue
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.mul_(mask.to(value.dtype))


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
