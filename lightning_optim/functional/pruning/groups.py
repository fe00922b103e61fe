"""Channel pruning by dependency groups: score the units of a :class:`DependencyGraph`, choose which to prune,
mask them in place (training goes on with the same architecture), and remove them (compaction).

- :func:`group_unit_scores`: one importance per unit, the norm of everything that writes the channel (all
  producers' filters, summed over the members of a residual stage), normalised by the mean of its group;
- :func:`select_units`: the units to prune for a target sparsity, per coupling group (``scope="layer"``) or
  ranked across groups (``scope="global"``), with per-group overrides; a group never loses its last unit;
- :func:`group_masks`: scores, selection and masks of one pruning event, with a mask for every prunable parameter;
  :func:`pruned_units` reads the pruned units back from masks;
- :func:`unit_masks`: keep-masks of every parameter slice the pruned units write (producer rows, biases,
  batch-norm entries, depthwise filters), ready for :func:`~lightning_optim.functional.pruning.masks.apply_masks_`;
- :func:`apply_layer_norm_masks`: the rest of the masked model where a layer norm normalises across channels
  that are units (ConvNeXt): forward hooks that normalise over the kept channels only and write zeros in the
  pruned ones (:func:`layer_norm_masks` says which; :func:`remove_layer_norm_masks` takes them off);
- :func:`remove_units`: a copy of the model with the pruned units removed from every member (rows, columns,
  entries, and the module attributes ``out_channels``/``in_features``/``num_features``/``normalized_shape``...),
  checked against the masked model.

Per-op slicing lives in :data:`SIZE_ATTRIBUTES` (which attribute holds the size of which axis, by op type).
"""

from __future__ import annotations

import copy
import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_optim.checks import check_choice
from lightning_optim.functional.pruning.compaction import CompactionMismatch, check_equivalent
from lightning_optim.functional.pruning.dependency import DependencyGraph, ParamSlice, build_dependency_graph
from lightning_optim.functional.pruning.importance import IMPORTANCES
from lightning_optim.functional.pruning.masks import SCOPES
from lightning_optim.layers.attention import (
    HEAD_COUNT_ATTRIBUTES,
    INNER_WIDTH_ATTRIBUTES,
    PrunedMultiheadAttention,
    from_multihead_attention,
)

#: op type -> {(parameter name, axis): the attribute that holds that size}; the first matching type wins
SIZE_ATTRIBUTES: list[tuple[type[nn.Module], dict[tuple[str, int], tuple[str, ...]]]] = [
    (nn.Linear, {("weight", 0): ("out_features",), ("weight", 1): ("in_features",)}),
    (
        nn.modules.conv._ConvNd,
        {("weight", 0): ("out_channels",), ("weight", 1): ("in_channels",)},
    ),
    (
        nn.modules.batchnorm._NormBase,
        {("weight", 0): ("num_features",), ("running_mean", 0): ("num_features",)},
    ),
    (nn.Embedding, {("weight", 1): ("embedding_dim",)}),
    (nn.MultiheadAttention, {("in_proj_weight", 1): ("embed_dim", "kdim", "vdim")}),
    (PrunedMultiheadAttention, {("in_proj_weight", 1): ("embed_dim",)}),
]

#: the parameters whose rows score a unit (its filters, neurons, heads)
SCORED_PARAMETERS = ("weight", "in_proj_weight")


def _param(modules: Mapping[str, nn.Module], s: ParamSlice) -> Tensor | None:
    t = getattr(modules[s.module], s.name, None)
    return t if isinstance(t, Tensor) else None


def _axis_sums(t: Tensor, axis: int, p: int) -> Tensor:
    """For every index along ``axis`` of ``t``, the sum of ``|x|`` (``p=1``) or ``x**2`` (``p=2``) over the other
    dimensions, accumulated in float64: one number per slice. A ``DTensor`` split by rows (FSDP2) is not gathered:
    each rank sums its shard, then the per-row sums are gathered (``axis`` 0) or the partial sums all-reduced (a
    collective: every rank calls it for the same tensors, in the same order); another ``DTensor`` is gathered."""
    from lightning_optim.functional.pruning.masks import full_tensor, is_row_sharded, is_sharded

    def sums(x: Tensor) -> Tensor:
        x = x.detach()
        x = x.abs() if p == 1 else x.double().pow(2)  # squares in float64, as a slice's norm always was
        dims = [d for d in range(x.dim()) if d != axis]
        return torch.sum(x, dims, dtype=torch.float64) if dims else x.double()

    if not is_sharded(t):
        return sums(t)
    if not is_row_sharded(t):
        return sums(full_tensor(t.detach()))
    from torch.distributed.tensor import DTensor, Partial, Shard

    local = sums(t.to_local())  # type: ignore[attr-defined]
    mesh = t.device_mesh  # type: ignore[attr-defined]
    if axis == 0:
        return DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=(t.shape[0],), stride=(1,)
        ).full_tensor()
    return DTensor.from_local(local, mesh, [Partial()], run_check=False).full_tensor()


@torch.no_grad()
def group_unit_scores(model: nn.Module, graph: DependencyGraph, importance: str = "l2") -> Tensor:
    """Importance of every unit: the ``importance`` norm (``"l1"``/``"magnitude"`` or ``"l2"``) of the filters
    that write it (producer rows and depthwise filters, summed over members), divided by the mean score of
    its coupling group (so groups of different sizes and scales can be ranked together). Pinned units get
    ``inf``.

    Each scored parameter is reduced once per axis to one number per slice (:func:`_axis_sums`), so a network
    sharded by rows (FSDP2) is scored without gathering its weights (a collective then: every rank calls it)."""
    p = IMPORTANCES[check_choice("importance", importance, sorted(IMPORTANCES))]
    modules = dict(model.named_modules())
    raw = torch.zeros(len(graph.units), dtype=torch.float64)
    slice_sums: dict[tuple[str, str, int], Tensor | None] = {}
    for u in graph.units:
        total = 0.0
        for s in u.outputs:
            if s.name not in SCORED_PARAMETERS:
                continue
            key = (s.module, s.name, s.axis)
            if key not in slice_sums:
                t = _param(modules, s)
                skip = (
                    t is None
                    or isinstance(modules[s.module], nn.modules.batchnorm._NormBase)
                    or "layernorm" in graph.roles.get(s.module, ())  # a scale, as a batch norm's
                )
                slice_sums[key] = None if skip else _axis_sums(t, s.axis, p)
            sums = slice_sums[key]
            if sums is not None:
                total += float(sums[s.index])
        raw[u.id] = total if p == 1 else total**0.5
    scores = raw.clone()
    for g in graph.groups:
        idx = torch.tensor(g.units)
        mean = raw[idx].mean()
        scores[idx] = raw[idx] / mean if mean > 0 else raw[idx]
    for u in graph.units:
        if u.pinned is not None:
            scores[u.id] = float("inf")
    return scores


def _group_target(
    name_patterns: Iterable[str], sparsity: float, overrides: Mapping[str, float] | None
) -> float:
    for pattern, value in (overrides or {}).items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in name_patterns):
            return float(value)
    return sparsity


def _overridden_target(
    group, overrides: Mapping[str, float] | None, group_sparsity: Mapping[int, float] | None
) -> float | None:
    """The group's own target (``group_sparsity`` by id first, then the first matching pattern), or ``None``."""
    if group_sparsity and group.id in group_sparsity:
        return float(group_sparsity[group.id])
    names = group.producers or [group.name]
    for pattern, value in (overrides or {}).items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return float(value)
    return None


def _select_per_division(group: Any, free: list[int], scores: Tensor, target: float) -> set[int]:
    """The lowest-scoring ``round(target * width)`` units of each conv group of a grouped convolution (the same
    number everywhere, at least one kept per conv group; none when a conv group has pinned units)."""
    by_division: dict[int, list[int]] = defaultdict(list)
    for u in group.units:
        by_division[group.divisions[u]].append(u)
    free_set = set(free)
    if any(set(members) - free_set for members in by_division.values()):
        return set()
    width = min(len(members) for members in by_division.values())
    k = min(int(round(target * width)), width - 1)
    chosen: set[int] = set()
    if k <= 0:
        return chosen
    for members in by_division.values():
        chosen.update(sorted(members, key=lambda u: (float(scores[u]), u))[:k])
    return chosen


def select_units(
    graph: DependencyGraph,
    scores: Tensor,
    sparsity: float,
    scope: str = "layer",
    overrides: Mapping[str, float] | None = None,
    group_sparsity: Mapping[int, float] | None = None,
) -> set[int]:
    """The units to prune: in each coupling group, the ``round(sparsity * n)`` lowest-scoring of its ``n``
    units (``scope="layer"``), or the lowest-scoring ``round(sparsity * N)`` of all ``N`` prunable units
    (``scope="global"``). Pinned units are never chosen, and every group keeps at least one unit.

    A group with its own target (``group_sparsity``, else ``overrides``) is pruned on its own to that target
    in both scopes; with ``scope="global"`` the other groups are ranked together.

    Args:
        graph: the dependency graph.
        scores: one score per unit (:func:`group_unit_scores`).
        sparsity: the fraction of each group's (or all) prunable units to prune, in ``[0, 1)``.
        scope: ``"layer"`` or ``"global"``.
        overrides: ``{glob pattern: sparsity}`` for groups one of whose producers' names matches (the first
            matching pattern wins).
        group_sparsity: ``{group id: sparsity}``, before ``overrides``.
    """
    check_choice("scope", scope, SCOPES)
    chosen: set[int] = set()
    ranked: list = []
    for g in graph.groups:
        free = [u for u in g.units if graph.units[u].pinned is None]
        if not free:
            continue
        target = _overridden_target(g, overrides, group_sparsity)
        if target is None and scope == "global" and not g.divisions:
            ranked.append(g)
            continue
        target = sparsity if target is None else target
        if g.divisions:  # a grouped convolution: the same number from every conv group
            chosen.update(_select_per_division(g, free, scores, target))
            continue
        k = min(int(round(target * len(g.units))), len(free), len(g.units) - 1)
        if k <= 0:
            continue
        order = sorted(free, key=lambda u: (float(scores[u]), u))
        chosen.update(order[:k])
    if scope == "layer":
        return chosen
    free = [u for g in ranked for u in g.units if graph.units[u].pinned is None]
    k = int(round(sparsity * len(free)))
    left = {g.id: len(g.units) for g in ranked}
    taken = 0
    for u in sorted(free, key=lambda u: (float(scores[u]), u)):
        if taken >= k:
            break
        g = graph.units[u].group
        if left[g] > 1:
            chosen.add(u)
            left[g] -= 1
            taken += 1
    return chosen


def unit_masks(model: nn.Module, graph: DependencyGraph, pruned: Iterable[int]) -> dict[str, Tensor]:
    """``{parameter name: bool keep-mask}`` that zero what the ``pruned`` units write: rows of producers and
    depthwise filters (shape ``(out, 1, ...)``), biases and batch-norm scale/shift (shape ``(C,)``). Running
    statistics are not masked (they are buffers; the zero scale and shift already zero the channel)."""
    modules = dict(model.named_modules())
    masks: dict[str, Tensor] = {}
    for uid in pruned:
        for s in graph.units[uid].outputs:
            t = _param(modules, s)
            if not isinstance(t, nn.Parameter):
                continue
            key = f"{s.module}.{s.name}" if s.module else s.name
            if key not in masks:
                shape = [1] * t.dim()
                shape[s.axis] = t.shape[s.axis]
                masks[key] = torch.ones(shape, dtype=torch.bool, device=t.device)
            index = [0] * t.dim()
            index[s.axis] = s.index
            masks[key][tuple(index)] = False
    return masks


def layer_norm_masks(graph: DependencyGraph, pruned: Iterable[int]) -> dict[str, tuple[int, Tensor]]:
    """``{module name: (channel axis of its input, bool keep-mask of its channels)}`` of the layer norms across
    channels (:attr:`DependencyGraph.layer_norms`) that lose some of them with the ``pruned`` units."""
    pruned = set(pruned)
    out = {}
    for site in graph.layer_norms:
        keep = torch.tensor([u not in pruned for u in site.units], dtype=torch.bool)
        if not bool(keep.all()):
            out[site.module] = (site.axis, keep)
    return out


class MaskedLayerNorm:
    """A forward hook that makes a layer norm across channels the masked one: its output is computed from its
    input over the kept channels only (``F.layer_norm`` of those, with their scale and shift entries and the
    layer norm's epsilon) and is zero in the others, which is what the layer norm computes once they are
    removed. The module's own output is discarded.

    Args:
        axis: the axis of the channels in the module's input (and output).
        keep: bool keep-mask of the channels.
        eps: the layer norm's epsilon.
        weight: the name of the module's scale parameter (``None``: no scale).
        bias: the name of the module's shift parameter (``None``: no shift).
    """

    def __init__(
        self, axis: int, keep: Tensor, eps: float, weight: str | None = "weight", bias: str | None = "bias"
    ) -> None:
        self.axis, self.eps, self.weight, self.bias = int(axis), float(eps), weight, bias
        self.keep = keep.detach().to(torch.bool).cpu()
        self.index = self.keep.nonzero().flatten()

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor:
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))
        if x.shape[self.axis] != self.keep.numel():
            raise RuntimeError(
                f"The masked layer norm of a {type(module).__name__} expects {self.keep.numel()} channels on axis "
                f"{self.axis} of its input, got shape {tuple(x.shape)}: its masks belong to another network "
                "(remove them with remove_layer_norm_masks)."
            )
        index = self.index.to(x.device)
        x = x.movedim(self.axis, -1)
        w = getattr(module, self.weight) if self.weight else None
        b = getattr(module, self.bias) if self.bias else None
        kept = F.layer_norm(
            x.index_select(-1, index),
            (index.numel(),),
            w.index_select(0, index) if w is not None else None,
            b.index_select(0, index) if b is not None else None,
            self.eps,
        )
        return kept.new_zeros(x.shape).index_copy(-1, index, kept).movedim(-1, self.axis)


def apply_layer_norm_masks(
    model: nn.Module, graph: DependencyGraph, pruned: Iterable[int]
) -> list[RemovableHandle]:
    """Make ``model`` (with :func:`unit_masks` applied) the masked model where layer norms normalise across
    channels that are units: a :class:`MaskedLayerNorm` forward hook on each one that loses channels with the
    ``pruned`` units (the hooks of earlier masks on the graph's layer norms are taken off first). The masked
    model then computes what :func:`remove_units` makes of it.

    Returns:
        The hooks' handles (``handle.remove()``; or :func:`remove_layer_norm_masks` on the model).
    """
    modules = dict(model.named_modules())
    sites = {site.module: site for site in graph.layer_norms}
    missing = [name for name in sites if name not in modules]
    if missing:
        raise ValueError(
            f"The graph's layer norms {missing[:4]} are not modules of {type(model).__name__}: the graph belongs "
            "to another network."
        )
    for name in sites:
        _remove_hooks(modules[name])
    handles = []
    for name, (axis, keep) in layer_norm_masks(graph, pruned).items():
        module = modules[name]
        site = sites[name]
        hook = MaskedLayerNorm(axis, keep, site.eps, site.weight, site.bias)
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    return handles


def _remove_hooks(module: nn.Module) -> int:
    found = [k for k, h in module._forward_hooks.items() if isinstance(h, MaskedLayerNorm)]
    for k in found:
        module._forward_hooks.pop(k)
        module._forward_hooks_with_kwargs.pop(k, None)
        module._forward_hooks_always_called.pop(k, None)
    return len(found)


def remove_layer_norm_masks(model: nn.Module) -> int:
    """Take every :class:`MaskedLayerNorm` hook off ``model`` (those of :func:`apply_layer_norm_masks`, and
    their copies in a deep copy); returns how many."""
    return sum(_remove_hooks(m) for m in model.modules())


def groups_kept_whole(
    graph: DependencyGraph,
    sparsity: float,
    overrides: Mapping[str, float] | None = None,
    group_sparsity: Mapping[int, float] | None = None,
) -> list[str]:
    """The coupling groups whose target would remove all their channels (``round(target * n) == n``, a small
    group at a high sparsity): :func:`select_units` keeps one channel of each; callers say so."""
    names = []
    for g in graph.groups:
        if not any(graph.units[u].pinned is None for u in g.units):
            continue
        target = _overridden_target(g, overrides, group_sparsity)
        target = sparsity if target is None else target
        if int(round(target * len(g.units))) >= len(g.units):
            names.append(g.name)
    return names


def group_masks(
    model: nn.Module,
    graph: DependencyGraph,
    sparsity: float,
    scope: str = "layer",
    importance: str = "l2",
    overrides: Mapping[str, float] | None = None,
    group_sparsity: Mapping[int, float] | None = None,
) -> tuple[dict[str, Tensor], set[int]]:
    """The keep-masks of one pruning event by dependency groups: score (:func:`group_unit_scores`), select
    (:func:`select_units`), mask (:func:`unit_masks`).

    Every parameter that a prunable unit writes has a mask, all ``True`` where none of its units is pruned,
    so that the names and shapes are the same at every event and on every process (a tensor-by-tensor
    broadcast needs that).

    Returns:
        ``(masks, pruned unit ids)``; :func:`pruned_units` recovers the ids from the masks.
    """
    scores = group_unit_scores(model, graph, importance)
    pruned = select_units(graph, scores, sparsity, scope, overrides, group_sparsity)
    free = [u.id for u in graph.units if u.pinned is None]
    masks = {n: torch.ones_like(m) for n, m in unit_masks(model, graph, free).items()}
    masks.update(unit_masks(model, graph, pruned))
    return masks, pruned


def pruned_units(graph: DependencyGraph, masks: Mapping[str, Tensor]) -> set[int]:
    """The free units whose every written weight/bias slice is masked (``False``) in ``masks``: the inverse of
    :func:`unit_masks` (a restored checkpoint or a broadcast mask set gives back the units to remove)."""
    out = set()
    for u in graph.units:
        if u.pinned is not None:
            continue
        checked = 0
        for s in u.outputs:
            key = f"{s.module}.{s.name}" if s.module else s.name
            mask = masks.get(key)
            if mask is None:
                continue
            index = [0] * mask.dim()
            index[s.axis] = s.index
            if bool(mask[tuple(index)]):
                break
            checked += 1
        else:
            if checked:
                out.add(u.id)
    return out


@torch.no_grad()
def zero_units(model: nn.Module, graph: DependencyGraph) -> set[int]:
    """The free units of ``graph`` whose every written parameter slice (producer rows, biases, batch-norm
    scale and shift) is exactly zero in ``model``: channels a checkpoint holds pruned, read back from the weights
    alone (:func:`unit_masks` of them keeps them at zero)."""
    modules = dict(model.named_modules())
    out = set()
    for u in graph.units:
        if u.pinned is not None:
            continue
        checked = 0
        for s in u.outputs:
            t = _param(modules, s)
            if not isinstance(t, nn.Parameter):
                continue
            if bool(t.detach().select(s.axis, s.index).ne(0).any()):
                break
            checked += 1
        else:
            if checked:
                out.add(u.id)
    return out


def _size_attributes(module: nn.Module, name: str, axis: int) -> tuple[str, ...]:
    for cls, table in SIZE_ATTRIBUTES:
        if isinstance(module, cls):
            return table.get((name, axis), ())
    return ()


def _slice_grouped_conv(module: nn.Module, outputs: set[int], inputs: set[int]) -> None:
    """Remove output rows and (global) input channels of a grouped convolution, conv group by conv group: its
    weight's second axis holds each conv group's own inputs, so the kept ones are gathered per group (every
    group keeps as many, which :func:`select_units` guarantees)."""
    w = module.weight
    groups, out_width, in_width = module.groups, module.out_channels // module.groups, w.shape[1]
    rows, blocks = [], []
    for g in range(groups):
        kept_rows = [r for r in range(g * out_width, (g + 1) * out_width) if r not in outputs]
        kept_cols = [c - g * in_width for c in range(g * in_width, (g + 1) * in_width) if c not in inputs]
        blocks.append(w.detach()[kept_rows][:, kept_cols])
        rows += kept_rows
    if len({b.shape for b in blocks}) != 1:
        raise ValueError(
            f"A grouped convolution must keep as many channels in every conv group; got {[tuple(b.shape) for b in blocks]}."
        )
    module.weight = nn.Parameter(torch.cat(blocks).clone(), requires_grad=w.requires_grad)
    if module.bias is not None:
        module.bias = nn.Parameter(
            module.bias.detach()[rows].clone(), requires_grad=module.bias.requires_grad
        )
    module.out_channels = len(rows)
    module.in_channels = blocks[0].shape[1] * groups


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _remove_heads(
    model: nn.Module,
    modules: dict[str, nn.Module],
    graph: DependencyGraph,
    pruned: set[int],
    drop: dict[tuple[str, str, int], set[int]],
) -> None:
    """Heads: an ``nn.MultiheadAttention`` that loses some (or whose embedding width shrinks) becomes a
    :class:`PrunedMultiheadAttention` with the kept ones (its slices of heads are then done); any other module
    that splits a width into heads gets its head count and inner width attributes updated (its projections
    are sliced like any layer)."""
    for site in graph.attention:
        gone = [h for h, uid in enumerate(site.heads) if uid in pruned]
        module = modules[site.module]
        # an nn.MultiheadAttention whose embedding width shrinks (its inner width stays): replaced as well
        narrower = isinstance(module, nn.MultiheadAttention) and (site.module, "in_proj_weight", 1) in drop
        if not gone and not (site.leaf and narrower):
            continue
        kept = [h for h in range(len(site.heads)) if h not in gone]
        if site.leaf:
            new = from_multihead_attention(module, kept)
            _set_module(model, site.module, new)
            modules[site.module] = new
            modules[f"{site.module}.out_proj"] = new.out_proj
            for key in [k for k in drop if k[0] == site.module and k[2] == 0]:
                drop.pop(key)
            drop.pop((f"{site.module}.out_proj", "weight", 1), None)
            continue
        before, after = len(site.heads), len(kept)
        for attr in HEAD_COUNT_ATTRIBUTES:
            if getattr(module, attr, None) == before and not isinstance(getattr(module, attr), bool):
                setattr(module, attr, after)
        for attr in INNER_WIDTH_ATTRIBUTES:
            if getattr(module, attr, None) == before * site.head_dim:
                setattr(module, attr, after * site.head_dim)


@torch.no_grad()
def remove_units(
    model: nn.Module,
    graph: DependencyGraph,
    pruned: Iterable[int],
    example_input: Tensor | None = None,
    rtol: float = 1e-4,
) -> nn.Module:
    """A copy of ``model`` without the ``pruned`` units: every slice they own is cut out of its parameter or
    buffer, and the size attributes of the changed modules are updated (depthwise convolutions also get
    ``groups``, layer norms ``normalized_shape``). With ``example_input``, the result is checked against
    ``model`` with the units masked (:func:`unit_masks`, and :func:`apply_layer_norm_masks` where a layer norm
    loses channels). The copy carries no masked-layer-norm hook of ``model``.

    Raises:
        CompactionMismatch: when the outputs differ by more than ``rtol`` (relative to the largest output).
    """
    pruned = set(pruned)
    compact = copy.deepcopy(model)
    remove_layer_norm_masks(compact)  # its layer norms are exact once the channels are gone
    modules = dict(compact.named_modules())
    drop: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    for uid in pruned:
        u = graph.units[uid]
        if u.pinned is not None:
            raise ValueError(f"Unit {uid} is pinned ({u.pinned}) and cannot be removed.")
        for s in u.slices:
            drop[(s.module, s.name, s.axis)].add(s.index)
    _remove_heads(compact, modules, graph, pruned, drop)
    grouped = {
        m
        for m, _, _ in drop
        if isinstance(modules[m], nn.modules.conv._ConvNd)
        and 1 < modules[m].groups
        and not (modules[m].groups == modules[m].in_channels == modules[m].out_channels)
    }
    for mname in grouped:
        drop.pop((mname, "bias", 0), None)  # sliced with the rows
        _slice_grouped_conv(
            modules[mname], drop.pop((mname, "weight", 0), set()), drop.pop((mname, "weight", 1), set())
        )
    for (mname, pname, axis), indices in drop.items():
        module = modules[mname]
        t = getattr(module, pname, None)
        if not isinstance(t, Tensor):
            continue
        depthwise = (
            isinstance(module, nn.modules.conv._ConvNd)
            and module.groups > 1
            and module.groups == module.in_channels == module.out_channels
        )
        keep = torch.tensor([i for i in range(t.shape[axis]) if i not in indices], dtype=torch.long)
        new = t.detach().index_select(axis, keep.to(t.device)).clone()
        if isinstance(t, nn.Parameter):
            setattr(module, pname, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            module.register_buffer(pname, new)
        for attr in _size_attributes(module, pname, axis):
            setattr(module, attr, len(keep))
        if depthwise and pname == "weight" and axis == 0:
            module.groups = module.in_channels = module.out_channels = len(keep)
    for name, (_, keep) in layer_norm_masks(graph, pruned).items():
        modules[name].normalized_shape = (int(keep.sum()),)
    if example_input is not None and pruned:
        check_equivalent(masked_copy(model, graph, pruned), compact, example_input, rtol)
    return compact


@torch.no_grad()
def masked_copy(model: nn.Module, graph: DependencyGraph, pruned: Iterable[int]) -> nn.Module:
    """A copy of ``model`` computing what it computes with the ``pruned`` units masked: their parameter slices
    zeroed (:func:`unit_masks`) and their layer norms normalising over the kept channels
    (:func:`apply_layer_norm_masks`); what :func:`remove_units` is checked against."""
    pruned = set(pruned)
    masked = copy.deepcopy(model)
    remove_layer_norm_masks(masked)
    params = dict(masked.named_parameters())
    for name, mask in unit_masks(masked, graph, pruned).items():
        params[name].mul_(mask.to(params[name].dtype))
    apply_layer_norm_masks(masked, graph, pruned)
    return masked


def prune_channels(
    model: nn.Module,
    example_input: Tensor,
    sparsity: float,
    importance: str = "l2",
    scope: str = "layer",
    overrides: Mapping[str, float] | None = None,
    prune_layer_norm_tokens: bool = False,
) -> tuple[nn.Module, DependencyGraph, set[int]]:
    """One-shot channel pruning by dependency groups: trace, score, select, remove (checked against the masked
    model on ``example_input``).

    Args:
        model: the network.
        example_input: a batch it accepts (traced and checked on).
        sparsity: the fraction of each coupling group's (``scope="global"``: of all) channels to remove.
        importance: ``"l1"``/``"magnitude"`` or ``"l2"`` (:func:`group_unit_scores`).
        scope: ``"layer"`` or ``"global"`` (:func:`select_units`).
        overrides: ``{glob pattern of a producer's name: sparsity}``.
        prune_layer_norm_tokens: also prune the channels a layer norm normalises across on token tensors (a
            transformer's residual stream; :func:`~.dependency.build_dependency_graph`).

    Returns:
        ``(compacted copy, graph, pruned unit ids)``; ``model`` is not changed.
    """
    graph = build_dependency_graph(model, example_input, prune_layer_norm_tokens=prune_layer_norm_tokens)
    scores = group_unit_scores(model, graph, importance)
    pruned = select_units(graph, scores, sparsity, scope, overrides)
    return remove_units(model, graph, pruned, example_input), graph, pruned


__all__ = [
    "SIZE_ATTRIBUTES",
    "CompactionMismatch",
    "MaskedLayerNorm",
    "apply_layer_norm_masks",
    "check_equivalent",
    "group_masks",
    "masked_copy",
    "groups_kept_whole",
    "group_unit_scores",
    "layer_norm_masks",
    "prune_channels",
    "pruned_units",
    "remove_layer_norm_masks",
    "remove_units",
    "select_units",
    "unit_masks",
]
