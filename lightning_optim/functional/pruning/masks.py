"""Pruning masks: unstructured magnitude (layer-wise or global) and structured (neurons/filters by norm).

A mask is a ``bool`` tensor, ``True`` where the weight is kept. Unstructured masks have the weight's shape;
structured masks select whole output units (rows of a ``Linear``, filters of a ``Conv``) and have shape
``(out, 1, ..., 1)``, so they broadcast over the weight and cost one flag per unit.

Sparsity is always the fraction of the weights (or units) pruned, a *target*: exactly
``round(sparsity * n)`` of the ``n`` entries are pruned (the lowest scores; ties broken by position), never
a fraction of what was left by an earlier step. How weights and units are scored, and how many a sparsity
prunes, is :mod:`lightning_optim.functional.pruning.importance`.

Sharded parameters (``DTensor``, as FSDP2's ``fully_shard`` or tensor parallelism make them): by default
masks are computed on the full tensors (:func:`compute_masks` gathers them with :func:`full_tensor`, a
collective that every rank runs), so they are the masks of a single-process run, and applied to each rank's
shards (:func:`cast_masks` splits each mask as its tensor is split, with :func:`shard_like`, without
communication). With ``compute_masks(..., shard_masks=True)``, unstructured masks of weights split by rows over
a 1-D mesh (FSDP2's ``Shard(0)``) are computed *shard-wise* instead (:func:`sharded_magnitude_masks`): no
weight is gathered; the ``k``-th lowest score of each layer (or of all of them, global scope) is found exactly
by a radix selection over the bits of the scores (4 all-reduces of 256-bin histograms, and one all-gather of
the counts of the scores equal to it, which settles ties by position as a single process does), and each rank
keeps its part of every mask (a ``DTensor`` split as its weight): the same masks as a single-process run, at
1/world of the memory. :func:`mask_counts` counts their kept entries, :func:`gather_mask` gathers one whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

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


def is_row_sharded(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` split by rows (``Shard(0)``) over a 1-D device mesh, as FSDP2's
    ``fully_shard`` splits parameters: rank ``i`` of the mesh holds the ``i``-th block of rows (``torch.chunk``
    sizes, possibly empty), so the flattened entries of the ranks follow each other in rank order."""
    if not is_sharded(t):
        return False
    from torch.distributed.tensor import Shard

    return t.device_mesh.ndim == 1 and tuple(t.placements) == (Shard(0),)  # type: ignore[attr-defined]


def can_shard_masks(weights: Iterable[Tensor]) -> bool:
    """Whether the unstructured masks of ``weights`` are computed and kept sharded by
    ``compute_masks(..., shard_masks=True)``: there is one at least, and all are split by rows over one 1-D mesh
    (:func:`is_row_sharded`). Other sharded weights (tensor parallelism's ``Shard(1)``, a mix with plain
    tensors) are gathered instead."""
    weights = list(weights)
    return bool(weights) and all(
        is_row_sharded(w) and w.device_mesh == weights[0].device_mesh  # type: ignore[attr-defined]
        for w in weights
    )


def shard_like(mask: Tensor, tensor: Tensor) -> Tensor:
    """``mask`` (whole, the same on every rank) split over ``tensor``'s device mesh as ``tensor`` is (a
    ``DTensor`` with its placements: each rank keeps its part, no communication); ``mask`` itself when
    ``tensor`` is not sharded. A mask that broadcasts over the tensor (a structured ``(out, 1, ...)`` mask)
    is split along the same dimensions."""
    if not is_sharded(tensor) or is_sharded(mask):  # a sharded mask is split as its tensor already
        return mask
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(mask, tensor.device_mesh, tensor.placements, src_data_rank=None)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Unstructured mask pruning exactly ``round(sparsity * numel)`` entries of lowest ``|w|``."""
    scores = magnitude_scores(weight)
    return keep_mask_from_scores(scores, num_pruned(scores.numel(), sparsity))


def whole_unit_scores(weight: Tensor, importance: str = "l1", normalize: bool = False) -> Tensor:
    """:func:`~lightning_optim.functional.pruning.importance.unit_scores` of the whole ``weight``. A weight split by
    rows (FSDP2, :func:`is_row_sharded`) is not gathered: each rank scores its own rows (a unit's norm needs only
    its row) and the score vectors, one number per unit, are gathered (a collective: every rank calls it)."""
    if not is_row_sharded(weight):
        return unit_scores(full_tensor(weight), importance, normalize)
    from torch.distributed.tensor import DTensor, Shard

    local = unit_scores(weight.to_local(), importance, normalize)  # type: ignore[attr-defined]
    scores = DTensor.from_local(
        local, weight.device_mesh, [Shard(0)], run_check=False, shape=(weight.shape[0],), stride=(1,)
    )  # type: ignore[attr-defined]
    return scores.full_tensor()


def structured_mask(weight: Tensor, sparsity: float, importance: str = "l1") -> Tensor:
    """Mask of shape ``(out, 1, ...)`` pruning ``round(sparsity * out)`` output units of lowest norm
    (at least one unit is kept). A row-sharded weight is scored shard-wise (:func:`whole_unit_scores`)."""
    scores = whole_unit_scores(weight, importance)
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
    per_layer = [whole_unit_scores(weights[n], importance, normalize=True) for n in names]
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


#: entries of a local shard scored at a time by the shard-wise selection (bounds its temporary memory)
SCORE_CHUNK = 1 << 22
#: the key of every NaN score: above +inf's bits (``torch.sort`` puts NaN last, all NaN equal)
_NAN_KEY = 0x7FC00000
#: radix passes of the shard-wise selection, 8 bits each (the keys are 31-bit: scores are >= 0)
_RADIX_BITS, _RADIX_PASSES = 8, 4


def _score_keys(local: Tensor) -> Iterator[Tensor]:
    """The magnitude scores of a (local) tensor as ``int32`` keys, in chunks of :data:`SCORE_CHUNK` entries in
    flattened order: the bits of a float32 ``>= 0`` grow with its value, so keys order as ``torch.sort`` orders
    the scores (NaN, canonicalized, last)."""
    flat = local.detach().reshape(-1)
    for start in range(0, flat.numel(), SCORE_CHUNK):
        scores = magnitude_scores(flat[start : start + SCORE_CHUNK])
        keys = scores.view(torch.int32)
        keys.masked_fill_(torch.isnan(scores), _NAN_KEY)
        yield keys


def _all_reduce(t: Tensor, group: object) -> Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, group=group)
    return t


def sharded_magnitude_masks(
    groups: Sequence[tuple[Sequence[Tensor], int]],
) -> list[list[Tensor]]:
    """Unstructured keep-masks of row-sharded tensors, computed on each rank's shards (no tensor is gathered),
    exactly those of :func:`keep_mask_from_scores` on the gathered, flattened and concatenated tensors.

    Each group is ``(tensors, k)``: its tensors are ranked together by ``|w|`` and the ``k`` lowest entries
    pruned, ties in the order of position (the tensors in their order, each flattened). One group per tensor is
    layer scope, one group of several tensors global scope. A collective over the tensors' mesh: every rank calls
    it with the same groups (shapes, ``k``), in the same order (4 all-reduces of ``len(groups) x 256`` counts,
    one all-gather of one count per tensor).

    Args:
        groups: ``(tensors, k)`` pairs; every tensor :func:`is_row_sharded`, all on one device mesh.

    Returns:
        per group, per tensor, a ``bool`` ``DTensor`` split as the tensor is: ``True`` where the entry is kept.

    Raises:
        ValueError: a tensor not split by rows over the mesh of the first one.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    tensors = [t for ts, _ in groups for t in ts]
    if not tensors:
        return [[] for _ in groups]
    if not can_shard_masks(tensors):
        t = next((t for t in tensors if not is_row_sharded(t)), tensors[-1])
        raise ValueError(
            "Shard-wise masks need tensors split by rows (Shard(0)) over one 1-D device mesh (FSDP2's "
            f"fully_shard), got {type(t).__name__} with placements {getattr(t, 'placements', None)}: use "
            "`compute_masks(..., shard_masks=False)` (the tensors are gathered)."
        )
    mesh = tensors[0].device_mesh
    group = mesh.get_group()
    device = tensors[0].to_local().device
    counts = torch.zeros(len(groups), 1 << _RADIX_BITS, dtype=torch.int64, device=device)
    prefix = [0] * len(groups)
    rank_of_target = [k for _, k in groups]  # 1-based rank of the k-th lowest among the keys under `prefix`
    active = [k > 0 for _, k in groups]
    if any(active):
        for p in range(_RADIX_PASSES):
            shift = 32 - _RADIX_BITS * (p + 1)
            counts.zero_()
            for g, (ts, _) in enumerate(groups):
                if not active[g]:
                    continue
                for t in ts:
                    for keys in _score_keys(t.to_local()):
                        if p:
                            keys = keys[(keys >> (shift + _RADIX_BITS)) == prefix[g]]
                        digits = (keys >> shift) & ((1 << _RADIX_BITS) - 1)
                        counts[g] += torch.bincount(digits, minlength=1 << _RADIX_BITS)
            below = _all_reduce(counts, group).cumsum(1).cpu()
            for g in range(len(groups)):
                if not active[g]:
                    continue
                digit = int(torch.searchsorted(below[g], rank_of_target[g]))
                rank_of_target[g] -= int(below[g, digit - 1]) if digit else 0
                prefix[g] = (prefix[g] << _RADIX_BITS) | digit
    # the k-th lowest key of group g is prefix[g]; rank_of_target[g] of the entries equal to it are pruned, the
    # first ones in position order: (tensor, then rank) -- the ranks hold consecutive blocks of rows
    equal = torch.zeros(len(tensors), dtype=torch.int64, device=device)
    i = 0
    for g, (ts, _) in enumerate(groups):
        for t in ts:
            if active[g]:
                equal[i] = sum(int((keys == prefix[g]).sum()) for keys in _score_keys(t.to_local()))
            i += 1
    gathered = [torch.zeros_like(equal) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, equal, group=group)
    per_rank = torch.stack(gathered).cpu()  # (ranks, tensors)
    me = mesh.get_local_rank()
    out: list[list[Tensor]] = []
    i = 0
    for g, (ts, _) in enumerate(groups):
        masks, ties_before = [], 0
        for t in ts:
            local = t.to_local()
            keep = torch.ones(local.numel(), dtype=torch.bool, device=local.device)
            if active[g]:
                todo = rank_of_target[g] - ties_before - int(per_rank[:me, i].sum())
                todo = max(0, min(todo, int(per_rank[me, i])))
                start = 0
                for keys in _score_keys(local):
                    part = keep[start : start + keys.numel()]
                    torch.ge(keys, prefix[g], out=part)
                    if todo:
                        ties = (keys == prefix[g]).nonzero().flatten()[:todo]
                        part[ties] = False
                        todo -= ties.numel()
                    start += keys.numel()
                ties_before += int(per_rank[:, i].sum())
            masks.append(
                DTensor.from_local(
                    keep.view(local.shape),
                    mesh,
                    t.placements,
                    run_check=False,
                    shape=t.shape,
                    stride=t.stride(),
                )
            )
            i += 1
        out.append(masks)
    return out


def mask_counts(masks: Sequence[Tensor]) -> list[int]:
    """The kept (``True``) entries of each mask: a sharded mask counted on its local part and summed over its
    mesh (one all-reduce when any is sharded: every rank calls it with the same masks; a replicated mesh dimension
    counts once), the others as they are."""
    out: list[int] = []
    local, group = [], None
    for m in masks:
        if is_sharded(m):
            mesh = m.device_mesh
            if mesh.ndim != 1:
                raise ValueError(
                    f"Counting a mask over a {mesh.ndim}-D device mesh is not supported (1-D only)."
                )
            group = mesh.get_group()
            replicated = any(p.is_replicate() for p in m.placements) and mesh.get_local_rank() != 0
            local.append(0 if replicated else int(m.to_local().sum()))
            out.append(-1)
        else:
            out.append(int(m.sum()))
    if group is not None:
        device = next(m.to_local().device for m in masks if is_sharded(m))
        summed = _all_reduce(torch.tensor(local, dtype=torch.int64, device=device), group).tolist()
        it = iter(summed)
        out = [next(it) if c < 0 else c for c in out]
    return out


def gather_mask(mask: Tensor) -> Tensor:
    """The whole of a mask, a plain ``bool`` tensor on the CPU: a sharded one gathered from its parts (a
    collective: every rank calls it, in the same order; it travels as ``uint8``), any other itself."""
    if is_sharded(mask):
        return full_tensor(mask.to(torch.uint8)).cpu().bool()
    return mask.cpu()


def compute_masks(
    weights: Mapping[str, Tensor],
    sparsity: float,
    granularity: str = "unstructured",
    scope: str = "layer",
    importance: str = "l1",
    layer_sparsity: Mapping[str, float] | None = None,
    shard_masks: bool = False,
) -> dict[str, Tensor]:
    """Masks for named weights at a target ``sparsity``.

    Sharded weights (``DTensor``) are gathered first (:func:`full_tensor`, a collective: every rank calls
    this function with the same names), so the masks are whole and equal to a single-process run's. With
    ``shard_masks=True`` and unstructured masks of weights that are all split by rows over one 1-D mesh
    (:func:`is_row_sharded`: FSDP2), nothing is gathered: the masks are computed shard-wise
    (:func:`sharded_magnitude_masks`, a collective too) and each is a ``DTensor`` split as its weight (each rank
    holds its part), equal to a single-process run's once gathered (:func:`gather_mask`).

    Args:
        weights: name -> weight tensor (plain or ``DTensor``).
        sparsity: target fraction pruned, in ``[0, 1)``.
        granularity: ``"unstructured"``, or ``"structured"`` (alias ``"neuron"``, ``"filter"``, ``"channel"``):
            whole output units.
        scope: ``"layer"`` (each tensor reaches ``sparsity``) or ``"global"`` (all tensors ranked together).
        importance: ``"l1"`` (alias ``"magnitude"``) or ``"l2"`` norm of a unit, for structured pruning.
        layer_sparsity: name -> sparsity for tensors pruned at their own target (layer-wise) instead.
        shard_masks: keep the masks of row-sharded weights sharded (above); other weights are gathered.

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
    overrides = dict(layer_sparsity or {})
    layerwise = {n: overrides.get(n, sparsity) for n in weights if scope == "layer" or n in overrides}
    if shard_masks and gran == "unstructured" and can_shard_masks(weights.values()):
        return _sharded_compute_masks(weights, sparsity, layerwise)
    if gran == "unstructured" or not can_shard_masks(weights.values()):
        weights = {n: full_tensor(w) for n, w in weights.items()}
    # else structured masks of row-sharded weights: scored shard-wise, one number per unit gathered (no weight)
    masks: dict[str, Tensor] = {}
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


def _sharded_compute_masks(
    weights: Mapping[str, Tensor], sparsity: float, layerwise: Mapping[str, float]
) -> dict[str, Tensor]:
    """:func:`compute_masks` of unstructured masks over row-sharded weights, shard-wise: the tensors of
    ``layerwise`` each at its own sparsity, the others ranked together at ``sparsity``."""
    groups: list[tuple[list[Tensor], int]] = []
    names: list[list[str]] = []
    for name, s in layerwise.items():
        groups.append(([weights[name]], num_pruned(weights[name].numel(), s)))
        names.append([name])
    rest = [n for n in weights if n not in layerwise]
    if rest:
        total = sum(weights[n].numel() for n in rest)
        groups.append(([weights[n] for n in rest], num_pruned(total, sparsity)))
        names.append(rest)
    masks = {}
    for group_names, group_masks in zip(names, sharded_magnitude_masks(groups)):
        masks.update(zip(group_names, group_masks))
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
    out = {}
    for n, m in masks.items():
        if n not in tensors:
            continue
        t = tensors[n]
        if is_sharded(m):  # split as its tensor already: cast its part
            out[n] = m.to(dtype=t.dtype)
            continue
        if not is_sharded(t):
            out[n] = m.to(device=t.device, dtype=t.dtype)
            continue
        m = m.to(device=t.to_local().device)
        if tuple(m.shape) != tuple(t.shape):
            # a mask that broadcasts over a sharded tensor along a split dimension (a consumer's ``(1, in, ...)``
            # input-channel mask over rows split by FSDP2) cannot be split as the tensor is: expand it first
            split = {p.dim for p in t.placements if hasattr(p, "dim")}
            if m.dim() != t.dim() or any(m.shape[d] != t.shape[d] for d in split):
                m = m.expand(t.shape).contiguous()
        # split first, then cast this rank's part: no whole mask in the tensor's dtype
        out[n] = shard_like(m, t).to(dtype=t.dtype)
    return out


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
