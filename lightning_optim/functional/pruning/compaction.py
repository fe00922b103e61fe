"""Physical compaction: remove pruned channels and neurons, giving a smaller dense model.

Structured pruning (:class:`~lightning_optim.callbacks.ProgressivePruning` with ``granularity="structured"``)
zeroes whole output units: a filter of a convolution (with its bias and the batch-norm scale/shift that
follows), a row of a linear layer. :func:`compact_model` traces the network with ``torch.fx``, follows each
channel from the layer that produces it through the operations that keep channels apart (batch norm,
activations with ``f(0) = 0``, dropout, pooling, depthwise convolutions, flatten) to the layers that
consume it (convolution, linear; after a flatten, each channel is ``H * W`` input features), and removes
the channels that are zero wherever they are consumed: rows of the producer, entries of the batch norms
and depthwise convolutions on the way, input columns of the consumers.

A channel that reaches anything else (the model's output, an addition, a concatenation, a reshape, an
unknown function) is kept. A model that ``torch.fx`` cannot trace (data-dependent control flow) is
refused with :class:`CompactionError`, and the compacted model is checked against the original on the
example input before it is returned.

:func:`compact_model_report` also says, per layer, how many units were zero, how many went and why the others
stayed (:class:`CompactedLayer`); :func:`format_compaction` writes that as a table that reads in 100 columns
(:func:`padded_table`, with the reasons as footnotes).
"""

from __future__ import annotations

import copy
import operator
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from lightning_optim.functional.pruning.dependency import (
    ADD_METHODS,
    ADD_OPS,
    CAT_FUNCTIONS,
    MUL_METHODS,
    MUL_OPS,
    NORM_MODULES,
    ZERO_PRESERVING_FUNCTIONS,
    ZERO_PRESERVING_METHODS,
    ZERO_PRESERVING_MODULES,
)


class CompactionError(RuntimeError):
    """The model cannot be compacted (untraceable, or the compacted model would differ)."""


class CompactionMismatch(CompactionError):
    """The compacted model does not compute what the original (masked) model computes."""


# the per-op tables (which modules and functions keep channels apart and map 0 to 0) are the dependency
# tracer's: one list for both
def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a clear error for models it cannot follow.

    Raises:
        CompactionError: when tracing fails (for example data-dependent control flow in ``forward``).
    """
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - every tracing failure means: cannot compact
        raise CompactionError(
            f"Cannot compact {type(model).__name__}: torch.fx could not trace its forward ({type(err).__name__}: "
            f"{err}). Models with data-dependent control flow (if/for on tensor values) are not supported; "
            "keep the masked model, or compact the traceable sub-module."
        ) from err


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _is_producer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1)


def _row_zero(m: nn.Module) -> Tensor:
    """Output units whose weight row and bias are exactly zero."""
    rows = m.weight.detach().flatten(1).eq(0).all(1)
    if getattr(m, "bias", None) is not None:
        rows &= m.bias.detach().eq(0)
    return rows


def channel_followers(model: nn.Module, module_names: list[str]) -> dict[str, list[str]]:
    """For each named layer, the batch-norm layers that read its output directly (their scale/shift must be
    masked with its pruned units for the channel to be exactly zero).

    Uses ``torch.fx``; for a model it cannot trace, a batch norm registered right after the layer with a
    matching number of features.
    """
    wanted = set(module_names)
    out: dict[str, list[str]] = {n: [] for n in module_names}
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - fall back to registration order
        named = list(model.named_modules())
        for i, (name, module) in enumerate(named[:-1]):
            nxt_name, nxt = named[i + 1]
            units = getattr(module, "out_channels", getattr(module, "out_features", None))
            if name in wanted and isinstance(nxt, NORM_MODULES) and nxt.num_features == units:
                out[name].append(nxt_name)
        return out
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            for user in node.users:
                if user.op == "call_module" and isinstance(modules.get(user.target), NORM_MODULES):
                    out[node.target].append(user.target)
    return out


@dataclass
class _Group:
    """Channels produced by one layer and carried unchanged to their consumers."""

    root: fx.Node
    members: list[tuple[fx.Node, int]] = field(default_factory=list)  # (node, features per channel)
    reads: list[tuple[fx.Node, fx.Node]] = field(default_factory=list)  # (consumer node, node it reads)
    pinned: bool = False
    reason: str = ""  # why it is pinned (the first reason found)

    def pin(self, reason: str) -> None:
        if not self.pinned:
            self.pinned, self.reason = True, reason


@dataclass
class CompactedLayer:
    """What compaction did to the output units (channels, neurons) of one convolution or linear layer.

    Attributes:
        name: the layer's name in the model.
        units: its output units before compaction.
        zero: the units that were zero (weight row and bias): what pruning asked to remove.
        removed: the units removed.
        kept_because: why zero units were kept (empty when every zero unit went).
    """

    name: str
    units: int
    zero: int
    removed: int
    kept_because: str = ""


#: why zero units stay, in :attr:`CompactedLayer.kept_because`
KEEP_ONE = "every unit of the layer was zero: it keeps one (a layer with no unit is not a layer)"
SHARED = "the layer is called more than once (its units are shared by every call)"
NOT_READ = "no convolution or linear layer reads them"
NOT_ZERO_WHERE_READ = "they are not zero where a layer reads them (a batch-norm shift or bias on the way)"
AFTER_FLATTEN = "a convolution reads them after a flatten"
ADDITION = "they reach an addition (a residual connection: both inputs keep the same channels)"
CONCATENATION = "they reach a concatenation"
#: the reasons of channels tied to others' (channel-group pruning removes them together)
TIED: tuple[str, ...] = (ADDITION, CONCATENATION)


def _use(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """Why channels reaching ``node`` must stay: what ``node`` does with them, in words."""
    if node.op == "output":
        return "they reach the model's output"
    target = node.target
    if node.op == "call_module":
        return f"{target} ({type(modules.get(target)).__name__}) reads them, mixing or reshaping channels"
    if target in ADD_OPS or (node.op == "call_method" and target in ADD_METHODS):
        return ADDITION
    if target in MUL_OPS or (node.op == "call_method" and target in MUL_METHODS):
        return "they reach a multiplication of two tensors"
    if target in CAT_FUNCTIONS:
        return CONCATENATION
    if target in (operator.getitem,):
        return "they are indexed or sliced"
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return f"they reach {name}, which compaction does not follow"


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _flatten_start_dim(node: fx.Node, module: nn.Module | None) -> int | None:
    """``start_dim`` of a flatten to the end, or ``None`` when ``node`` is not such a flatten."""
    if module is not None:
        if isinstance(module, nn.Flatten) and module.end_dim == -1:
            return module.start_dim
        return None
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start if end == -1 else None
    return None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _slice_param(module: nn.Module, name: str, index: Tensor, dim: int) -> None:
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        module.register_buffer(name, new)


def _slice_outputs(module: nn.Module, index: Tensor) -> None:
    _slice_param(module, "weight", index, 0)
    _slice_param(module, "bias", index, 0)
    if isinstance(module, nn.Linear):
        module.out_features = len(index)
    else:
        module.out_channels = len(index)


def _slice_inputs(module: nn.Module, index: Tensor) -> None:
    _slice_param(module, "weight", index, 1)
    if isinstance(module, nn.Linear):
        module.in_features = len(index)
    else:
        module.in_channels = len(index)


def _slice_norm(module: nn.Module, index: Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice_param(module, name, index, 0)
    module.num_features = len(index)


def _slice_depthwise(module: nn.Conv2d, index: Tensor) -> None:
    _slice_param(module, "weight", index, 0)
    _slice_param(module, "bias", index, 0)
    module.in_channels = module.out_channels = module.groups = len(index)


def _expand(keep: Tensor, factor: int) -> Tensor:
    """Channel indices -> feature indices after a flatten with ``factor`` features per channel."""
    if factor == 1:
        return keep
    return (keep.view(-1, 1) * factor + torch.arange(factor)).flatten()


@torch.no_grad()
def compact_model(
    model: nn.Module, example_input: Tensor, atol: float = 1e-4, check: bool = True
) -> nn.Module:
    """A copy of ``model`` with its zeroed channels and neurons physically removed.

    :func:`compact_model_report` does the same and also says what went and what stayed, per layer.

    Args:
        model: a structurally pruned network (zero filters/rows, their biases and following batch-norm
            scale/shift zero); it is not modified.
        example_input: a batch the model accepts (its shapes follow flatten dependencies; also used for
            the equivalence check).
        atol: largest absolute difference allowed between the outputs of the compacted and original model
            (in eval mode) on ``example_input``.
        check: run that equivalence check.

    Returns:
        A model of the same class whose layers are smaller; its outputs equal the original's.

    Raises:
        CompactionError: for a model that ``torch.fx`` cannot trace, or a compacted model whose outputs
            differ from the original's. (A layer with parameters called more than once is left as it is.)
    """
    return compact_model_report(model, example_input, atol, check)[0]


@torch.no_grad()
def compact_model_report(
    model: nn.Module, example_input: Tensor, atol: float = 1e-4, check: bool = True
) -> tuple[nn.Module, list[CompactedLayer]]:
    """:func:`compact_model`, and what it did to each convolution and linear layer with zero units.

    Returns:
        The compacted copy, and one :class:`CompactedLayer` per convolution and linear layer (in registration
        order): how many of its units were zero, how many were removed, and why the others were kept.

    Raises:
        CompactionError: as :func:`compact_model`.
    """
    compact = copy.deepcopy(model)
    was_training = model.training
    compact.eval()
    gm = trace(compact)
    try:
        ShapeProp(gm).propagate(example_input)
    except Exception as err:  # noqa: BLE001
        raise CompactionError(
            f"Running the traced {type(model).__name__} on `example_input` failed: {err}"
        ) from err
    modules = dict(compact.named_modules())
    calls: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] += 1

    groups: dict[fx.Node, _Group] = {}
    member_of: dict[fx.Node, tuple[_Group, int]] = {}  # node -> (its group, features per channel)
    zero: dict[fx.Node, Tensor] = {}

    def pin_args(node: fx.Node, reason: str | None = None) -> None:
        for arg in _node_args(node):
            if arg in member_of:
                member_of[arg][0].pin(reason or _use(node, modules))

    records: dict[str, CompactedLayer] = {}  # every producer (conv, linear), by name
    unread: dict[str, str] = {}  # producers whose outputs are not followed -> why

    for node in gm.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        shape = _shape(node)
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                group = _Group(node, pinned=True)
                groups[node] = group
                member_of[node] = (group, 1)
                zero[node] = torch.zeros(shape[1], dtype=torch.bool)
            continue
        if node.op == "output":
            pin_args(node)
            continue
        inputs = _node_args(node)
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        shared = module is not None and calls[node.target] > 1 and any(True for _ in module.parameters())
        if module is not None and _is_producer(module) and shared:
            unread[node.target] = SHARED
        if (
            module is not None
            and _is_producer(module)
            and not shared
            and shape is not None
            and len(shape) >= 2
        ):
            if isinstance(module, nn.Linear) and len(shape) != 2:
                pin_args(node, f"{node.target} (a linear layer on a {len(shape)}-D tensor) reads them")
                unread[node.target] = f"its output is a {len(shape)}-D tensor, not followed"
                continue
            if source in member_of:
                g, factor = member_of[source]
                if isinstance(module, nn.Linear) or factor == 1:
                    g.reads.append((node, source))
                else:
                    g.pin(AFTER_FLATTEN)
            pin_args_except = [a for a in inputs if a is not source]
            for a in pin_args_except:
                if a in member_of:
                    member_of[a][0].pin(f"{node.target} reads them as a second input")
            group = _Group(node)
            groups[node] = group
            member_of[node] = (group, 1)
            zero[node] = _row_zero(module).cpu()
            continue
        # channel-preserving operations
        if source in member_of and len(inputs) == 1 and not shared:
            g, factor = member_of[source]
            z_in = zero[source]
            new_factor, z_out = None, None
            flat_start = _flatten_start_dim(node, module)
            in_shape = _shape(source)
            if module is not None and isinstance(module, NORM_MODULES):
                if module.affine:
                    z_out = module.weight.detach().eq(0).cpu() & module.bias.detach().eq(0).cpu()
                else:
                    z_out = torch.zeros_like(z_in)
                new_factor = factor
            elif module is not None and _is_depthwise(module) and factor == 1:
                z_out = z_in | module.weight.detach().flatten(1).eq(0).all(1).cpu()
                if module.bias is not None:
                    z_out &= module.bias.detach().eq(0).cpu()
                new_factor = 1
            elif module is not None and isinstance(module, ZERO_PRESERVING_MODULES):
                z_out, new_factor = z_in, factor
            elif node.op == "call_function" and node.target in ZERO_PRESERVING_FUNCTIONS:
                z_out, new_factor = z_in, factor
            elif node.op == "call_method" and node.target in ZERO_PRESERVING_METHODS:
                z_out, new_factor = z_in, factor
            elif flat_start == 1 and in_shape is not None and len(in_shape) >= 2:
                per_channel = 1
                for d in in_shape[2:]:
                    per_channel *= int(d)
                z_out, new_factor = z_in.repeat_interleave(per_channel), factor * per_channel
            if z_out is not None and shape is not None and len(shape) >= 2 and z_out.numel() == shape[1]:
                g.members.append((node, new_factor))
                member_of[node] = (g, new_factor)
                zero[node] = z_out
                continue
        pin_args(node)

    # decide and apply
    changed = False
    for root, group in groups.items():
        if root.op != "call_module":
            continue
        units = zero[root].numel()
        n_zero = int(zero[root].sum())
        record = records[root.target] = CompactedLayer(root.target, units, n_zero, 0)
        if group.pinned or not group.reads:
            record.kept_because = group.reason if group.pinned else NOT_READ
            continue
        producer = modules[root.target]
        removable = torch.ones(units, dtype=torch.bool)
        for _, read in group.reads:
            factor = member_of[read][1]
            removable &= zero[read].view(units, factor).all(1)
        if not removable.any():
            record.kept_because = NOT_ZERO_WHERE_READ
            continue
        if removable.all():
            removable[0] = False  # keep one channel: a layer with no units is not a layer
            record.kept_because = KEEP_ONE
        elif int(removable.sum()) < n_zero:
            record.kept_because = NOT_ZERO_WHERE_READ
        record.removed = int(removable.sum())
        keep = (~removable).nonzero().flatten()
        changed = True
        _slice_outputs(producer, keep)
        for node, factor in group.members:
            m = modules.get(node.target) if node.op == "call_module" else None
            if m is not None and isinstance(m, NORM_MODULES):
                _slice_norm(m, _expand(keep, factor))
            elif m is not None and _is_depthwise(m):
                _slice_depthwise(m, keep)
        for consumer, read in group.reads:
            _slice_inputs(modules[consumer.target], _expand(keep, member_of[read][1]))

    compact.train(was_training)
    if check and changed:
        check_equivalent(model, compact, example_input, atol, floor=1.0)
    original = dict(model.named_modules())
    for name, reason in unread.items():
        layer = original.get(name)
        if name not in records and layer is not None and _is_producer(layer):
            n_zero = int(_row_zero(layer).sum())
            records[name] = CompactedLayer(name, int(layer.weight.shape[0]), n_zero, 0, reason)
    order = {name: i for i, name in enumerate(original)}
    return compact, sorted(records.values(), key=lambda r: order.get(r.name, len(order)))


def padded_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A Markdown table whose columns are padded to one width, so that it also reads as plain text in a
    terminal; the columns numbered in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def footnote_keys(reasons: Sequence[str]) -> dict[str, str]:
    """``{reason: "(a)"}``: a short key per distinct reason, in order of first appearance."""
    keys: dict[str, str] = {}
    for reason in reasons:
        if reason and reason not in keys:
            n = len(keys)
            keys[reason] = f"({chr(ord('a') + n % 26)}{n // 26 or ''})"
    return keys


def footnotes(
    keys: Mapping[str, str], counts: Mapping[str, int] | None = None, width: int = 100
) -> list[str]:
    """The lines ``(a) <reason>`` (with ``counts[reason]`` units kept for it, where given), wrapped at ``width``."""
    lines = []
    for reason, key in keys.items():
        n = f"{counts[reason]} kept: " if counts and reason in counts else ""
        lines += textwrap.wrap(f"{key} {n}{reason}", width, subsequent_indent=" " * (len(key) + 1))
    return lines


def format_compaction(
    layers: Sequence[CompactedLayer],
    requested: Mapping[str, int] | None = None,
    title: str = "Compaction",
    width: int = 100,
) -> tuple[str, int, int]:
    """What compaction did, as a headline, a :func:`padded_table` (layer, units, requested, removed, kept:
    the key of the reason) and the reasons as footnotes, all within ``width`` columns (long layer names are
    shortened from the left); and ``(text, requested, removed)`` in total.

    Args:
        layers: from :func:`compact_model_report`.
        requested: ``{layer: units}`` that pruning asked to remove (default: the zero units of each layer); a
            layer named here that compaction did not see is listed with nothing removed.
        title: the start of the headline.
        width: the widest line.
    """
    by_name = {r.name: r for r in layers}
    wanted = dict(requested) if requested is not None else {r.name: r.zero for r in layers}
    names = [r.name for r in layers if wanted.get(r.name, 0) or r.removed] + [
        n for n in wanted if n not in by_name and wanted[n]
    ]
    rows, reasons = [], []
    for name in names:
        r = by_name.get(name)
        asked = int(wanted.get(name, r.zero if r is not None else 0))
        removed = r.removed if r is not None else 0
        reason = (
            (r.kept_because if r is not None else "compaction did not reach this layer")
            if removed < asked
            else ""
        )
        reasons.append(reason)
        rows.append([name, r.units if r is not None else "?", asked, removed, reason])
    keys = footnote_keys(reasons)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        if row[4]:
            counts[row[4]] += int(row[2]) - int(row[3])
    asked_total = sum(int(row[2]) for row in rows)
    removed_total = sum(int(row[3]) for row in rows)
    share = f" ({removed_total / asked_total:.0%})" if asked_total else ""
    head = f"{title} removed {removed_total} of the {asked_total} units pruning asked for{share}."
    if not rows:
        return f"{title}: no layer had a zero unit, nothing to remove.", 0, 0
    limit = max(12, width - 45)  # room left for the number columns and the key
    table_rows = [
        [
            row[0] if len(row[0]) <= limit else "..." + row[0][-(limit - 3) :],
            row[1],
            row[2],
            row[3],
            keys.get(row[4], ""),
        ]
        for row in rows
    ]
    table_rows.append(
        ["total", sum(int(row[1]) for row in rows if row[1] != "?"), asked_total, removed_total, ""]
    )
    table = padded_table(["layer", "units", "requested", "removed", "kept"], table_rows, right=(1, 2, 3))
    notes = footnotes(keys, counts, width)
    return "\n".join([head, table, *(["kept because:", *notes] if notes else [])]), asked_total, removed_total


@torch.no_grad()
def check_equivalent(
    reference: nn.Module, candidate: nn.Module, example_input: Tensor, tol: float = 1e-4, floor: float = 1e-12
) -> float:
    """The largest output difference of two models in eval mode on ``example_input``, relative to
    ``max(largest reference output, floor)`` (``floor=1`` makes it absolute for small outputs).

    Raises:
        CompactionMismatch: above ``tol``, or when the output shapes differ.
    """
    from torch.utils._pytree import tree_flatten

    modes = (reference.training, candidate.training)
    reference.eval()
    candidate.eval()
    try:
        with torch.no_grad():
            ref, out = reference(example_input), candidate(example_input)
    finally:
        reference.train(modes[0])
        candidate.train(modes[1])
    if isinstance(ref, dict) and isinstance(out, dict):  # Hugging Face outputs (ModelOutput is a dict)
        ref, out = list(ref.values()), list(out.values())
    refs, outs = tree_flatten(ref)[0], tree_flatten(out)[0]
    refs = [t for t in refs if isinstance(t, Tensor)]
    outs = [t for t in outs if isinstance(t, Tensor)]
    if not refs or len(refs) != len(outs) or any(a.shape != b.shape for a, b in zip(refs, outs)):
        raise CompactionMismatch("The compacted model's output has another shape than the original's.")
    ref = torch.cat([t.detach().float().flatten() for t in refs])
    out = torch.cat([t.detach().float().flatten() for t in outs])
    scale = max(float(ref.float().abs().max()), floor) if ref.numel() else 1.0
    diff = float((ref.float() - out.float()).abs().max()) / scale if ref.numel() else 0.0
    if diff > tol:
        raise CompactionMismatch(
            f"The compacted model differs from the original by {diff * scale:.3g} (allowed {tol * scale:.3g}); "
            "refusing to return it. Are the pruned units' biases and batch-norm scale/shift zero too?"
        )
    return diff
