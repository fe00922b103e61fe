"""Dependency groups: which slices of which parameters must lose the same channel together.

Structured pruning removes *channels*, and a channel is shared by every layer that writes or reads it: the
convolution that produces it, the batch norm and depthwise convolution on its way, the other branch of a
residual addition, the gate of a squeeze-excitation block, the part of a concatenation it becomes, and the
input columns of every consumer (after a flatten, ``H * W`` input features of a ``Linear``). Pruning one of
them alone either breaks the shapes or leaves the channel in place.

:func:`build_dependency_graph` traces the network with ``torch.fx`` on an example input and joins, channel
by channel, every tensor element that must go together (union-find). Each resulting *unit* is one channel
that can be removed as a whole: its :class:`ParamSlice` list says which rows, columns and entries it owns.
Units that touch something we cannot change (the model's input or output, an operation we do not know, a
grouped convolution whose input and output widths differ, a layer norm across the channels of a token
tensor) are *pinned*, with the reason. A grouped convolution with as many outputs as inputs (ResNeXt, RegNet)
couples output channel ``k`` with input channel ``k`` (both in conv group ``k // (channels / groups)``); its coupling group then
loses the same number of channels in every conv group, so that the convolution stays grouped. A unit is also pinned
when masking it would not make the channel exactly zero where it is consumed (for example after a sigmoid),
so that the masked model and the compacted one compute the same function.

A layer norm across the channels of a feature map (ConvNeXt's ``nn.LayerNorm`` in channels-last and its
``LayerNorm2d``) does not pin them: removing a channel changes the mean and variance of the others, so the
*masked* model normalises over the kept channels only (:func:`~.groups.apply_layer_norm_masks` installs that
on the modules of :attr:`DependencyGraph.layer_norms`), and the masked and compacted models agree. On token
tensors (a transformer's residual stream) the channels stay pinned unless ``prune_layer_norm_tokens=True``.

Units with the same set of member parameters form a *coupling group* (for instance all channels of one
residual stage, or all filters of one convolution): the group is what per-layer sparsity applies to.

The per-op rules live in small tables keyed by op type (:data:`PASSTHROUGH_MODULES`,
:data:`PASSTHROUGH_FUNCTIONS`, ...), as Torch-Pruning splits tracing, importance and per-op functions.
"""

from __future__ import annotations

import fnmatch
import operator
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

#: elementwise modules that map 0 to 0 (a masked channel stays zero through them)
ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Softsign,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
)
#: elementwise modules that do not map 0 to 0 (the channel survives them, but not as a zero)
NONZERO_MODULES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
#: channel-wise normalizations: their entries belong to the channel
NORM_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

ZERO_PRESERVING_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu_,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardtanh,
    torch.tanh,
    F.tanh,
    F.dropout,
    F.dropout2d,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.interpolate,
    operator.neg,
    torch.neg,
}
NONZERO_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.exp, F.softplus}
ZERO_PRESERVING_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "tanh_",
    "contiguous",
    "clone",
    "detach",
    "neg",
    "float",
    "to",
    "type_as",
}
NONZERO_METHODS = {"sigmoid", "sigmoid_", "exp"}
ADD_OPS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
MUL_OPS = {operator.mul, operator.imul, torch.mul}
DIV_OPS = {operator.truediv, operator.itruediv, torch.div}
ADD_METHODS = {"add", "add_", "sub", "sub_"}
MUL_METHODS = {"mul", "mul_"}
DIV_METHODS = {"div", "div_"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
REDUCE_METHODS = {"mean", "sum", "amax"}
CAT_FUNCTIONS = {torch.cat, torch.concat}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unflatten}
RESHAPE_METHODS = {"reshape", "view", "flatten", "unflatten"}
PERMUTE_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.t}
PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "t"}
EXPAND_FUNCTIONS = {torch.unsqueeze, torch.squeeze, torch.broadcast_to}
EXPAND_METHODS = {"unsqueeze", "squeeze", "expand", "expand_as", "broadcast_to"}
SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}
SOFTMAX_METHODS = {"softmax", "log_softmax"}
SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split}
SPLIT_METHODS = {"chunk", "split", "tensor_split"}
MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm}
MATMUL_METHODS = {"matmul", "bmm"}


def _register_torchvision() -> None:
    """torchvision's stochastic depth scales whole samples: zero stays zero."""
    global ZERO_PRESERVING_MODULES
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    ZERO_PRESERVING_MODULES = (*ZERO_PRESERVING_MODULES, StochasticDepth)
    ZERO_PRESERVING_FUNCTIONS.add(stochastic_depth)


_register_torchvision()


class DependencyError(RuntimeError):
    """The network cannot be traced or run on the example input."""


@dataclass(frozen=True)
class ParamSlice:
    """Index ``index`` along axis ``axis`` of the parameter or buffer ``name`` of module ``module``."""

    module: str
    name: str
    axis: int
    index: int


@dataclass
class Unit:
    """One removable channel: the parameter slices it owns, and why it cannot be removed if it is pinned.

    ``outputs`` are the slices that write the channel (producer rows, biases, batch-norm entries, depthwise
    filters): masking them makes the channel zero. ``inputs`` are the slices that read it (consumer columns).
    """

    id: int
    outputs: list[ParamSlice] = field(default_factory=list)
    inputs: list[ParamSlice] = field(default_factory=list)
    pinned: str | None = None
    group: int = -1

    @property
    def slices(self) -> list[ParamSlice]:
        return self.outputs + self.inputs


@dataclass
class CouplingGroup:
    """Units with the same member parameters: one layer's filters, or one residual stage's channels."""

    id: int
    name: str
    units: list[int]
    producers: list[str]
    #: ``{unit id: conv group}`` when a grouped convolution runs through the group: every conv group must
    #: lose the same number of units (empty otherwise)
    divisions: dict[int, int] = field(default_factory=dict)
    #: ``"channels"`` (filters, neurons, a residual stage's channels) or ``"heads"`` (an attention layer's heads)
    kind: str = "channels"


@dataclass
class AttentionSite:
    """A module whose ``forward`` splits a width into attention heads: the unit of each head (in head order),
    the head width, and whether it is a whole attention layer (``nn.MultiheadAttention``, replaced by
    :class:`~lightning_optim.layers.attention.PrunedMultiheadAttention` when it loses heads) or a module whose
    head count attribute (``num_heads``...) is updated."""

    module: str
    heads: list[int]
    head_dim: int
    leaf: bool


@dataclass
class LayerNormSite:
    """A layer norm whose channels are units: the masked model normalises over the kept channels only.

    Attributes:
        module: the module whose ``forward`` is the layer norm (``nn.LayerNorm``, a ``LayerNorm2d`` that
            permutes around ``F.layer_norm``...); its output has the layout of its input.
        axis: the axis of the channels in that module's input, counted from the end (``-1`` for
            ``nn.LayerNorm`` on channels-last tensors, ``-3`` for a ``LayerNorm2d`` on ``(N, C, H, W)``).
        units: the unit of each channel, in channel order (``-1``: a channel of no unit, always kept).
        eps: the layer norm's epsilon.
        weight: the name of the module's scale parameter (``None`` without one).
        bias: the name of the module's shift parameter (``None`` without one).
    """

    module: str
    axis: int
    units: list[int]
    eps: float
    weight: str | None = "weight"
    bias: str | None = "bias"


@dataclass
class DependencyGraph:
    """The units of a network and their coupling groups (see :func:`build_dependency_graph`)."""

    units: list[Unit]
    groups: list[CouplingGroup]
    #: ``{reason: number of units pinned for it}``
    pinned: dict[str, int]
    #: module name -> the kind of member it is ("producer", "norm", "depthwise", "consumer", "attention"...)
    roles: dict[str, set[str]]
    #: where attention splits widths into heads (empty for a CNN)
    attention: list[AttentionSite] = field(default_factory=list)
    #: the layer norms across channels that are units (masked: normalised over the kept channels only)
    layer_norms: list[LayerNormSite] = field(default_factory=list)

    def prunable_groups(self) -> list[CouplingGroup]:
        """The groups with at least one unit that is not pinned."""
        return [g for g in self.groups if any(self.units[u].pinned is None for u in g.units)]

    def summary(self) -> str:
        """A short text: units, prunable units, groups, and what is pinned and why."""
        free = sum(u.pinned is None for u in self.units)
        lines = [
            f"{len(self.units)} channels in {len(self.groups)} coupling groups; {free} removable "
            f"({len(self.prunable_groups())} groups)."
        ]
        for reason, n in sorted(self.pinned.items(), key=lambda kv: -kv[1]):
            lines.append(f"  kept {n}: {reason}")
        return "\n".join(lines)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Space:
    """The channel elements a tensor carries: ``ids[i, j, ...]`` is the element at index ``i`` of tensor axis
    ``axes[0]``, ``j`` of ``axes[1]``... (the other axes carry no channel: batch, tokens, pixels). One tracked
    axis for a feature map or a token tensor; two after attention splits its width into heads and head
    dimensions; an id repeats where one channel spans several features (after a flatten)."""

    __slots__ = ("axes", "ids", "ndim")

    def __init__(self, axes: tuple[int, ...], ids: Tensor, ndim: int) -> None:
        self.axes, self.ids, self.ndim = axes, ids, ndim

    def single(self, axis: int, count: int | None = None) -> bool:
        """One tracked axis, ``axis``, with ``count`` channels."""
        return self.axes == (axis % self.ndim,) and (count is None or self.ids.shape[0] == count)


#: largest element array a reshape materialises (a flatten of a big feature map into features)
_MAX_RESHAPE_ELEMENTS = 1 << 24


def _args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _meta(node: Any) -> Any:
    return node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = _meta(node)
    return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _describe(node: fx.Node) -> str:
    """``torch.cat `cat_1` in `blocks.0.attn` ``: the op, the node and the module whose forward has it."""
    target = node.target
    op = str(target) if isinstance(target, str) else getattr(target, "__name__", str(target))
    if node.op == "call_method":
        op = f".{op}()"
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    where = f" in `{stack[-1][0]}`" if stack and stack[-1][0] else ""
    return f"`{op}` (`{node.name}`{where})"


def _is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))


def _is_attention(m: nn.Module) -> bool:
    from lightning_optim.layers.attention import PrunedMultiheadAttention

    return isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention))


def _reshape_groups(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Runs of source and destination axes with equal products (how a row-major reshape regroups axes)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    try:
        while i < len(src) and j < len(dst):
            si, sj, pi, pj = [i], [j], src[i], dst[j]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    pi, i = pi * src[i], i + 1
                    si.append(i - 1)
                else:
                    pj, j = pj * dst[j], j + 1
                    sj.append(j - 1)
            groups.append((si, sj))
    except IndexError:
        return None
    if not groups:
        return None
    groups[-1][0].extend(range(i, len(src)))  # trailing size-1 axes
    groups[-1][1].extend(range(j, len(dst)))
    return groups


def _varies(ids: Tensor, dim: int) -> bool:
    return bool((ids != ids.narrow(dim, 0, 1)).any())


def _permutation(node: fx.Node, n: int) -> list[int] | None:
    """``perm`` such that ``node`` is ``input.permute(perm)`` for a permute, transpose or ``t`` of an ``n``-D
    tensor (``None`` for any other op, or dims that are not constants)."""
    if node.op == "call_function" and node.target in PERMUTE_FUNCTIONS:
        pass
    elif node.op != "call_method" or node.target not in PERMUTE_METHODS:
        return None
    if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
        d0, d1 = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        if not isinstance(d0, int) or not isinstance(d1, int):
            return None
        perm = list(range(n))
        perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
        return perm
    if node.target in ("t", torch.t):
        return list(reversed(range(n)))
    dims = node.args[1:] if node.op == "call_method" else _arg(node, 1, "dims")
    if node.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    if not isinstance(dims, (list, tuple)) or len(dims) != n or not all(isinstance(d, int) for d in dims):
        return None
    return [d % n for d in dims]


#: ops a layer norm module may run around the layer norm itself and keep its layout (copies)
_LAYOUT_COPIES = {"contiguous", "clone", "detach", torch.clone}


def _layout_permutation(node: fx.Node, n: int) -> list[int] | None:
    """:func:`_permutation`, and the identity for a copy (``contiguous``, ``clone``, ``detach``)."""
    if node.op in ("call_function", "call_method") and node.target in _LAYOUT_COPIES:
        return list(range(n))
    return _permutation(node, n)


def _scope(node: fx.Node) -> list[str]:
    """The qualified names of the modules whose ``forward`` issued ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]


#: why the channels a layer norm normalises across are kept on a token tensor (the default)
TOKEN_LAYER_NORM = (
    "a layer norm across channels of a token tensor (a transformer's residual stream, kept by default: "
    "build_dependency_graph(prune_layer_norm_tokens=True) prunes it)"
)


@dataclass
class _LayerNorm:
    """A layer norm whose channels are units, as the walk finds it (element ids instead of unit ids)."""

    module: str
    axis: int
    ids: list[int]
    eps: float
    weight: str | None
    bias: str | None


@dataclass
class _Site:
    """Where attention splits a width into heads: the module whose ``forward`` does it, one element per head,
    the head width, and whether it is a whole attention module (``nn.MultiheadAttention``)."""

    module: str
    heads: list[int]
    head_dim: int
    leaf: bool


class _Builder:
    """Walks the traced graph once, node by node, joining channel elements (see the module docstring)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, prune_layer_norm_tokens: bool = False) -> None:
        self.model = model
        self.prune_layer_norm_tokens = prune_layer_norm_tokens
        self.modules = dict(model.named_modules())
        self.graph = graph
        self.uf = _UnionFind()
        self.space: dict[fx.Node, Any] = {}  # node -> _Space, or a list of _Space/None for a tuple output
        self.attrs: dict[fx.Node, tuple[str, str]] = {}  # get_attr node -> (module, parameter name)
        self.barrier: dict[int, str] = {}  # element id -> reason
        self.nonzero: set[int] = set()  # elements that are not zero when their unit is masked
        self.outputs: list[tuple[int, ParamSlice]] = []
        self.inputs: list[tuple[int, ParamSlice]] = []
        self.reads: list[int] = []  # elements read by a consumer's weight (must be zero when masked)
        self.roles: dict[str, set[str]] = defaultdict(set)
        # element -> [(grouped conv, its conv group of this channel, groups)]
        self.divisions: dict[int, list[tuple[str, int, int]]] = {}
        self.sites: dict[tuple[str, int], _Site] = {}
        self.layer_norms: list[_LayerNorm] = []
        self.scoped: dict[str, set[fx.Node]] | None = None

    # ------------------------------------------------------------------------------------ spaces
    def fresh(self, sizes: tuple[int, ...] | torch.Size) -> Tensor:
        n = 1
        for d in sizes:
            n *= int(d)
        start = self.uf.add(n)
        return torch.arange(start, start + n, dtype=torch.long).reshape(tuple(sizes))

    def tracked(self, node: Any) -> _Space | None:
        sp = self.space.get(node) if isinstance(node, fx.Node) else None
        return sp if isinstance(sp, _Space) else None

    def set_space(self, node: fx.Node, axes: tuple[int, ...], ids: Tensor) -> _Space | None:
        shape = _shape(node)
        if shape is None or not axes:
            return None
        sp = _Space(tuple(axes), ids, len(shape))
        self.space[node] = sp
        return sp

    def new_channels(self, node: fx.Node, axis: int) -> _Space | None:
        shape = _shape(node)
        if shape is None or len(shape) < 1:
            return None
        axis %= len(shape)
        return self.set_space(node, (axis,), self.fresh((shape[axis],)))

    def pin_ids(self, ids: Tensor, reason: str) -> None:
        for e in ids.flatten().tolist():
            self.barrier.setdefault(e, reason)

    def pin(self, node: Any, reason: str) -> None:
        sp = self.space.get(node) if isinstance(node, fx.Node) else None
        for s in sp if isinstance(sp, list) else [sp]:
            if isinstance(s, _Space):
                self.pin_ids(s.ids, reason)

    def pin_args(self, node: fx.Node, reason: str) -> None:
        for a in _args(node):
            self.pin(a, reason)

    def union_ids(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.flatten().tolist(), b.flatten().tolist()):
            self.uf.union(x, y)

    def mark_nonzero(self, ids: Tensor, where: Tensor | None = None) -> None:
        flat = ids.flatten().tolist()
        if where is None:
            self.nonzero.update(flat)
        else:
            self.nonzero.update(e for e, w in zip(flat, where.flatten().tolist()) if w)

    def zero_mask(self, ids: Tensor) -> Tensor:
        """``True`` where the element is zero when its unit is masked."""
        nz = self.nonzero
        return torch.tensor([e not in nz for e in ids.flatten().tolist()], dtype=torch.bool).reshape(
            ids.shape
        )

    def alias(self, node: fx.Node, source: fx.Node, zero: bool = True, fresh: bool = False) -> bool:
        """``node`` carries the channels of ``source`` on the same axes (an elementwise op, a pooling, a norm):
        the same elements (``fresh``: new elements joined to them, for ops that write the channel or do not
        keep zeros)."""
        src = self.tracked(source)
        shape, src_shape = _shape(node), _shape(source)
        if src is None or shape is None or src_shape is None or len(shape) != len(src_shape):
            return False
        if any(shape[a] != src_shape[a] for a in src.axes):
            self.pin(source, f"{_describe(node)} changes the channel count")
            return True
        if not fresh and zero:
            self.set_space(node, src.axes, src.ids)
            return True
        ids = self.fresh(tuple(src.ids.shape))
        self.union_ids(ids, src.ids)
        if not zero:
            self.mark_nonzero(ids)
        self.set_space(node, src.axes, ids)
        return True

    # ------------------------------------------------------------------------------------ members
    def add_producer(
        self,
        node: fx.Node,
        name: str,
        module: nn.Module,
        axis: int,
        weight_axis: int = 0,
        role: str = "producer",
    ) -> None:
        out = self.new_channels(node, axis)
        if out is None:
            return
        self.roles[name].add(role)
        has_bias = weight_axis == 0 and getattr(module, "bias", None) is not None
        for k, e in enumerate(out.ids.tolist()):
            self.outputs.append((e, ParamSlice(name, "weight", weight_axis, k)))
            if has_bias:
                self.outputs.append((e, ParamSlice(name, "bias", 0, k)))

    def add_consumer(
        self, source: Any, name: str, count: int, axis: int = 1, param: str = "weight", param_axis: int = 1
    ) -> bool:
        src = self.tracked(source)
        if src is None:
            return (
                True  # reads no channel tensor of ours (the model input, a constant, an unknown op's output)
            )
        if not src.single(axis, count):
            self.pin(source, f"`{name}` reads {count} features of a tensor whose channels lie elsewhere")
            return False
        self.roles[name].add("consumer")
        for k, e in enumerate(src.ids.tolist()):
            self.inputs.append((e, ParamSlice(name, param, param_axis, k)))
            self.reads.append(e)
        return True

    # ------------------------------------------------------------------------------------ walk
    def run(self, calls: dict[str, int]) -> None:
        for node in self.graph.nodes:
            if node.op == "placeholder":
                continue  # the input carries no channel of ours (the first layer's input columns stay)
            if node.op == "output":
                self.pin_args(node, "the model's output")
            elif node.op == "get_attr":
                self.get_attr(node)
            elif node.op == "call_module":
                self.call_module(node, calls)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)

    def get_attr(self, node: fx.Node) -> None:
        target = str(node.target)
        owner, _, pname = target.rpartition(".")
        module = self.modules.get(owner)
        if module is not None and isinstance(getattr(module, pname, None), Tensor):
            self.attrs[node] = (owner, pname)

    def unknown(self, node: fx.Node, what: str) -> None:
        self.pin_args(node, f"an operation we do not prune through: {what}")

    def call_module(self, node: fx.Node, calls: dict[str, int]) -> None:
        name, module = str(node.target), self.modules[str(node.target)]
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if calls[name] > 1 and any(True for _ in module.parameters(recurse=False)):
            self.pin_args(node, f"`{name}` is called more than once")
            return
        if _is_attention(module):
            if not self.attention_module(node, name, module):
                self.unknown(node, f"module `{name}` ({type(module).__name__} with these options)")
            return
        if isinstance(module, nn.Linear):
            self.add_consumer(source, name, module.in_features, axis=-1)
            self.add_producer(node, name, module, -1)
            return
        if isinstance(module, nn.Embedding):
            self.add_producer(node, name, module, -1, weight_axis=1, role="embedding")
            return
        if _is_conv(module):
            self.conv(node, name, module, source)
            return
        if isinstance(module, NORM_MODULES) and source is not None and self.alias(node, source, fresh=True):
            out = self.tracked(node)
            if out is not None and out.single(1):
                self.roles[name].add("norm")
                for k, e in enumerate(out.ids.tolist()):
                    for pname in ("weight", "bias", "running_mean", "running_var"):
                        if getattr(module, pname, None) is not None:
                            self.outputs.append((e, ParamSlice(name, pname, 0, k)))
            elif out is not None:
                self.pin(node, f"batch norm `{name}` on a tensor whose channels lie elsewhere")
            return
        if (
            isinstance(module, nn.LayerNorm)
            and type(module).forward is nn.LayerNorm.forward  # a subclass of its own (LayerNorm2d) as a leaf
            and source is not None
        ):
            weight, bias = (
                (name, p) if getattr(module, p, None) is not None else None for p in ("weight", "bias")
            )
            self.layer_norm(node, source, len(module.normalized_shape), weight, bias, name, module.eps)
            return
        if isinstance(module, ZERO_PRESERVING_MODULES) and source is not None:
            if self.alias(node, source):
                return
        if isinstance(module, NONZERO_MODULES) and source is not None:
            if self.alias(node, source, zero=False):
                return
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)) and source is not None:
            if self.softmax(node, source, module.dim):
                return
        if isinstance(module, (nn.Flatten, nn.Unflatten)) and source is not None:
            if self.reshape(node, source):
                return
        self.unknown(node, f"module `{name}` ({type(module).__name__})")

    def conv(self, node: fx.Node, name: str, module: nn.Module, source: fx.Node | None) -> None:
        if module.groups == 1:
            self.add_consumer(source, name, module.in_channels)
            self.add_producer(node, name, module, 1)
            return
        src = self.tracked(source)
        same_width = module.in_channels == module.out_channels
        if src is not None and src.single(1) and same_width and self.alias(node, source, fresh=True):
            out = self.tracked(node)
            if out is None:
                return
            if _is_depthwise(module):
                self.roles[name].add("depthwise")
                for k, e in enumerate(out.ids.tolist()):
                    self.outputs.append((e, ParamSlice(name, "weight", 0, k)))
                    if module.bias is not None:
                        self.outputs.append((e, ParamSlice(name, "bias", 0, k)))
                return
            if same_width:
                # grouped, in == out: channel k in and out go together (conv group k // width)
                self.roles[name].add("grouped")
                width = module.out_channels // module.groups
                for k, (e, s) in enumerate(zip(out.ids.tolist(), src.ids.tolist())):
                    self.outputs.append((e, ParamSlice(name, "weight", 0, k)))
                    if module.bias is not None:
                        self.outputs.append((e, ParamSlice(name, "bias", 0, k)))
                    self.inputs.append((e, ParamSlice(name, "weight", 1, k)))
                    self.reads.append(s)
                    self.divisions.setdefault(e, []).append((name, k // width, module.groups))
                return
            self.space.pop(node, None)
        reason = f"grouped convolution `{name}` (groups={module.groups}, in != out)"
        self.pin_args(node, reason)
        if self.new_channels(node, 1) is not None:
            self.pin(node, reason)

    def layer_norm(
        self,
        node: fx.Node,
        source: fx.Node,
        normalized: int,
        weight: tuple[str, str] | None = None,
        bias: tuple[str, str] | None = None,
        owner: str | None = None,
        eps: Any = 1e-5,
    ) -> None:
        """A layer norm (``weight``/``bias``: ``(module, parameter)`` of its scale and shift; ``owner``: the
        module whose ``forward`` runs it). Per position (over axes without channels) it keeps the channels
        apart, but not their zeros. Across the channels of a feature map (4-D or more; of any tensor with
        ``prune_layer_norm_tokens``) it joins their units: its scale and shift entries belong to the channel,
        the masked model normalises over the kept channels only (:class:`LayerNormSite`) and writes zero in
        a masked one. Otherwise (a token tensor by default, several normalised axes, a module that does more
        than the layer norm) the channels are kept: removing one changes the mean and variance of the
        others."""
        src, shape = self.tracked(source), _shape(source)
        if src is None or shape is None:
            return
        if not any(a >= len(shape) - normalized for a in src.axes):
            self.alias(node, source, zero=False)  # per position: a zero channel normalises to the bias
            return
        single = normalized == 1 and src.single(-1)
        reason = "a layer norm across channels (it renormalises what is left)"
        if single and len(shape) < 4 and not self.prune_layer_norm_tokens:
            reason = TOKEN_LAYER_NORM
        elif single:
            found = self._layer_norm_site(node, source, weight, bias, owner, eps)
            if not isinstance(found, str):
                ids = self.fresh(tuple(src.ids.shape))
                self.union_ids(ids, src.ids)  # zero when masked: the masked layer norm writes zeros there
                self._layer_norm_members(src.ids, weight, bias)
                self.layer_norms.append(found)
                self.set_space(node, src.axes, ids)
                return
            reason = found
        self.pin(source, reason)
        self.set_space(node, src.axes, src.ids)
        if single:
            self._layer_norm_members(src.ids, weight, bias)

    def _layer_norm_members(self, ids: Tensor, *params: tuple[str, str] | None) -> None:
        for param in params:
            if param is None:
                continue
            module, pname = param
            self.roles[module].add("layernorm")
            for k, e in enumerate(ids.tolist()):
                self.outputs.append((e, ParamSlice(module, pname, 0, k)))

    def _layer_norm_site(
        self,
        node: fx.Node,
        source: fx.Node,
        weight: tuple[str, str] | None,
        bias: tuple[str, str] | None,
        owner: str | None,
        eps: Any,
    ) -> _LayerNorm | str:
        """The layer norm across the channels of ``source`` (last axis) as a :class:`_LayerNorm`, or why its
        masked form cannot be installed (the reason its channels are kept)."""
        module = self.modules.get(owner) if owner is not None else None
        width = _shape(source)[-1]
        if module is None or not owner:
            return f"a layer norm across channels outside a module of its own ({_describe(node)})"
        if weight is None:
            return (
                f"a layer norm across channels without a scale (`{owner}`: a checkpoint would not record its "
                "width)"
            )
        if any(p is not None and p[0] != owner for p in (weight, bias)):
            return (
                f"a layer norm across channels whose scale or shift belong to another module than `{owner}`"
            )
        shape = getattr(module, "normalized_shape", None)
        if (
            not isinstance(shape, (tuple, list))
            or tuple(shape) != (width,)
            or not isinstance(eps, (int, float))
        ):
            return (
                f"a layer norm across channels in `{owner}` ({type(module).__name__}), whose width is not "
                "its `normalized_shape` attribute"
            )
        runs = [
            n
            for n in self._members(owner)
            if (n.op == "call_module" and n.target == owner)
            or (n.op == "call_function" and n.target is F.layer_norm)
        ]
        if len(runs) > 1:
            return f"the layer norm `{owner}` runs more than once"
        axis = self._layer_norm_axis(node, source, owner)
        if axis is None:
            return (
                f"a layer norm across channels in `{owner}` ({type(module).__name__}), whose forward does "
                "more than the layer norm (and permutations that undo each other)"
            )
        src = self.tracked(source)
        return _LayerNorm(
            owner, axis, src.ids.tolist(), float(eps), weight[1], bias[1] if bias is not None else None
        )

    def _members(self, owner: str) -> set[fx.Node]:
        """The nodes the ``forward`` of module ``owner`` issued (of every call, and of its submodules)."""
        if self.scoped is None:  # module name -> its nodes, once per graph
            self.scoped = defaultdict(set)
            for n in self.graph.nodes:
                for path in _scope(n):
                    self.scoped[path].add(n)
        return self.scoped.get(owner, set())

    def _layer_norm_axis(self, node: fx.Node, source: fx.Node, owner: str) -> int | None:
        """The axis, counted from the end, of the channels in the input of module ``owner``, when its
        ``forward`` is the layer norm ``node`` over the last axis of ``source``, between permutations (or
        copies) whose output has the layout of its input (``LayerNorm2d``: permute to channels-last, layer
        norm, permute back); ``None`` when ``owner`` computes anything else."""
        members = self._members(owner)

        def inside(n: Any) -> bool:
            return n in members

        ndim = len(_shape(source))
        if not inside(node):
            return None
        chain = {node}
        back = list(range(ndim))  # axis i of the layer norm's input is axis back[i] of `cur`
        cur = source
        while inside(cur):
            perm = _layout_permutation(cur, ndim)
            if perm is None or not cur.args or not isinstance(cur.args[0], fx.Node):
                return None
            back = [perm[b] for b in back]
            chain.add(cur)
            cur = cur.args[0]
        if self.tracked(cur) is None:
            return None
        forward = list(range(ndim))  # axis i of `cur` is axis forward[i] of the layer norm's output
        cur = node
        while True:
            users = list(cur.users)
            inner = [u for u in users if inside(u)]
            if not inner:
                break
            if len(users) != 1 or users[0].args[:1] != (cur,):
                return None
            nxt = users[0]
            perm = _layout_permutation(nxt, ndim)
            if perm is None:
                return None
            forward = [forward[p] for p in perm]
            chain.add(nxt)
            cur = nxt
        if any(back[forward[i]] != i for i in range(ndim)):
            return None  # the module's output has another layout than its input
        for n in members - chain:
            if n.op != "get_attr" and _shape(n) is not None:
                return None  # the module computes something else too
        return back[ndim - 1] - ndim

    def softmax(self, node: fx.Node, source: fx.Node, dim: int | None) -> bool:
        src, shape = self.tracked(source), _shape(source)
        if src is None or shape is None or dim is None:
            return False
        if dim % len(shape) in src.axes:
            return False
        return self.alias(node, source, zero=False)

    def call_function(self, node: fx.Node) -> None:
        target = node.target
        is_fn, is_method = node.op == "call_function", node.op == "call_method"
        if is_fn and target is getattr:
            return
        meta = _meta(node)
        tensors = [a for a in _args(node) if a in self.space]
        if (
            is_method
            and target in ("type_as", "to", "expand_as")
            and node.args
            and node.args[0] in self.space
        ):
            tensors = [node.args[0]]  # the other tensor gives a dtype, device or shape, not channels
        if meta is None:
            return  # no tensor comes out (sizes, shapes, dims): nothing to follow
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if is_fn and target is operator.getitem and source in self.space:
            if self.getitem(node, source, node.args[1]):
                return
        if not tensors:
            if is_fn and target in (operator.mul, torch.mul, operator.add, torch.add):
                return
            return  # made from the input, constants or parameters: carries no channel of ours

        def op(functions: set | dict, methods: set) -> bool:
            return (is_fn and target in functions) or (is_method and target in methods)

        single = source in self.space and len(tensors) == 1
        if op(ZERO_PRESERVING_FUNCTIONS, ZERO_PRESERVING_METHODS) and single and self.alias(node, source):
            return
        if op(NONZERO_FUNCTIONS, NONZERO_METHODS) and single and self.alias(node, source, zero=False):
            return
        if op(ADD_OPS, ADD_METHODS) and self.elementwise(node, "add"):
            return
        if op(MUL_OPS, MUL_METHODS) and self.elementwise(node, "mul"):
            return
        if op(DIV_OPS, DIV_METHODS) and source in self.space and self.elementwise(node, "div"):
            return
        if op(CAT_FUNCTIONS, set()) and self.cat(node):
            return
        if op(RESHAPE_FUNCTIONS, RESHAPE_METHODS) and single and self.reshape(node, source):
            return
        if op(PERMUTE_FUNCTIONS, PERMUTE_METHODS) and single and self.permute(node, source):
            return
        if op(EXPAND_FUNCTIONS, EXPAND_METHODS) and source in self.space and self.expand(node, source):
            return
        if op(REDUCE_FUNCTIONS, REDUCE_METHODS) and single and self.reduce(node, source):
            return
        if op(SOFTMAX_FUNCTIONS, SOFTMAX_METHODS) and single:
            if self.softmax(node, source, _arg(node, 1, "dim")):
                return
        if op({F.layer_norm}, set()) and source in self.space:
            normalized = _arg(node, 1, "normalized_shape")
            affine = [_arg(node, 2, "weight"), _arg(node, 3, "bias")]
            eps = _arg(node, 4, "eps", 1e-5)
            if isinstance(normalized, (list, tuple)) and all(a is None or a in self.attrs for a in affine):
                weight, bias = (self.attrs[a] if a is not None else None for a in affine)
                scope = _scope(node)
                owner = scope[-1] if scope else None
                self.layer_norm(node, source, len(normalized), weight, bias, owner, eps)
                return
        if op({torch.select}, {"select"}) and single:
            if self.select(node, source, _arg(node, 1, "dim"), _arg(node, 2, "index")):
                return
        if op({torch.unbind}, {"unbind"}) and single and self.unbind(node, source, _arg(node, 1, "dim", 0)):
            return
        if op(SPLIT_FUNCTIONS, SPLIT_METHODS) and single and self.split(node, source):
            return
        if op(MATMUL_FUNCTIONS, MATMUL_METHODS) and self.matmul(node):
            return
        if op({F.scaled_dot_product_attention}, set()) and self.sdpa(node):
            return
        if op({F.linear}, set()) and self.functional_linear(node):
            return
        self.unknown(node, f"`{getattr(target, '__name__', target)}`")

    # ------------------------------------------------------------------------------------ elementwise
    def elementwise(self, node: fx.Node, rule: str) -> bool:
        """``a + b``, ``a * b``, ``a / b`` with broadcasting: tensors that carry channels must carry the same ones
        on the same axes; a parameter that varies along them (a layer scale, a position embedding) joins the
        channels as a member; anything else that varies along them keeps them."""
        out_shape = _shape(node)
        if out_shape is None:
            return False
        ro = len(out_shape)
        operands = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
        tracked: list[tuple[fx.Node, Tensor]] = []
        out_axes: tuple[int, ...] | None = None
        for a in operands:
            sp = self.tracked(a)
            if sp is None:
                continue
            off = ro - sp.ndim
            axes = tuple(ax + off for ax in sp.axes)
            if any(out_shape[ax] != n for ax, n in zip(axes, sp.ids.shape)):
                return False
            if out_axes is not None and axes != out_axes:
                return False
            out_axes = axes
            tracked.append((a, sp.ids))
        if out_axes is None:
            return False
        ids = self.fresh(tuple(tracked[0][1].shape))
        constant = any(not isinstance(a, fx.Node) for a in node.args)
        for a in operands:
            if a in self.space:
                continue
            shape = _shape(a)
            if shape is None:
                constant = True
                continue
            off = ro - len(shape)
            varying = [ax for ax in out_axes if ax - off >= 0 and shape[ax - off] != 1]
            if not varying:
                constant = True
                continue
            if a in self.attrs and varying == list(out_axes) and len(out_axes) == 1:
                module, pname = self.attrs[a]
                self.roles[module].add("parameter")
                for k, e in enumerate(ids.tolist()):
                    self.outputs.append((e, ParamSlice(module, pname, out_axes[0] - off, k)))
                continue
            self.pin_ids(ids, f"{_describe(node)} combines the channels with a tensor we do not follow")
            constant = True
        zeros = [self.zero_mask(t) for _, t in tracked]
        for _, t in tracked:
            self.union_ids(ids, t)
        if rule == "add":
            is_zero = torch.stack(zeros).all(0) if not constant else torch.zeros_like(zeros[0])
        elif rule == "mul":
            is_zero = torch.stack(zeros).any(0)
        else:  # div: zero when the numerator is
            is_zero = zeros[0] if tracked[0][0] is node.args[0] else torch.zeros_like(zeros[0])
        self.mark_nonzero(ids, ~is_zero)
        self.set_space(node, out_axes, ids)
        return True

    def cat(self, node: fx.Node) -> bool:
        parts = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        out_shape = _shape(node)
        if not isinstance(parts, (list, tuple)) or out_shape is None:
            return False
        axis = dim % len(out_shape)
        spaces = [self.tracked(p) for p in parts]
        known = [s for s in spaces if s is not None]
        if not known or any(s.ndim != len(out_shape) for s in known):
            return False
        axes = known[0].axes
        if any(s.axes != axes for s in known):
            return False
        if axis in axes:  # along the channels: offsets
            if axes != (axis,):
                return False
            pieces = []
            for p, s in zip(parts, spaces):
                if s is None:
                    shape = _shape(p)
                    if shape is None:
                        return False
                    fresh = self.fresh((shape[axis],))
                    self.pin_ids(fresh, f"{_describe(node)} joins them with channels we do not follow")
                    pieces.append(fresh)
                else:
                    pieces.append(s.ids)
            ids = torch.cat(pieces)
            if ids.shape[0] != out_shape[axis]:
                return False
            self.set_space(node, axes, ids)
            return True
        # along another axis (tokens): every part carries the same channels
        return (
            self.elementwise(node, "add")
            if len(known) == len(parts)
            else self._cat_with_constants(node, parts)
        )

    def _cat_with_constants(self, node: fx.Node, parts: list[fx.Node]) -> bool:
        """A concatenation along tokens of channel tensors and parameters (a class token): the parameters join."""
        out_shape = _shape(node)
        sp = next(s for s in (self.tracked(p) for p in parts) if s is not None)
        ids = self.fresh(tuple(sp.ids.shape))
        for p in parts:
            s = self.tracked(p)
            if s is not None:
                self.union_ids(ids, s.ids)
                self.mark_nonzero(ids, ~self.zero_mask(s.ids))
                continue
            shape = _shape(p)
            if p in self.attrs and shape is not None and len(sp.axes) == 1 and len(shape) == len(out_shape):
                module, pname = self.attrs[p]
                self.roles[module].add("parameter")
                for k, e in enumerate(ids.tolist()):
                    self.outputs.append((e, ParamSlice(module, pname, sp.axes[0], k)))
            else:
                self.pin_ids(ids, f"{_describe(node)} joins them with a tensor we do not follow (`{p.name}`)")
        self.set_space(node, sp.axes, ids)
        return True

    # ------------------------------------------------------------------------------------ shapes
    def reshape(self, node: fx.Node, source: fx.Node) -> bool:
        """A row-major reshape (view, flatten, unflatten): regroup the axes; a channel axis split into heads
        and head dimensions becomes two tracked axes, a channel axis merged with pixels repeats each id."""
        src, in_shape, out_shape = self.tracked(source), _shape(source), _shape(node)
        if src is None or in_shape is None or out_shape is None:
            return False
        groups = _reshape_groups(in_shape, out_shape)
        if groups is None:
            return False
        chosen = [(si, sj) for si, sj in groups if any(a in si for a in src.axes)]
        src_axes = [a for si, _ in chosen for a in si]
        dst_axes = [b for _, sj in chosen for b in sj]
        size = 1
        for a in src_axes:
            size *= in_shape[a]
        if size > _MAX_RESHAPE_ELEMENTS:
            return False
        view = [in_shape[a] if a in src.axes else 1 for a in src_axes]
        arr = (
            src.ids.reshape(view)
            .expand([in_shape[a] for a in src_axes])
            .reshape([out_shape[b] for b in dst_axes])
        )
        keep = []
        for dim in reversed(range(len(dst_axes))):
            if arr.shape[dim] > 1 and _varies(arr, dim):
                keep.append(dst_axes[dim])
            else:
                arr = arr.select(dim, 0)
        if not keep:
            return False
        self.set_space(node, tuple(reversed(keep)), arr.contiguous())
        return True

    def permute(self, node: fx.Node, source: fx.Node) -> bool:
        src = self.tracked(source)
        if src is None:
            return False
        perm = _permutation(node, src.ndim)
        if perm is None:
            return False
        new_axes = [perm.index(a) for a in src.axes]
        order = sorted(range(len(new_axes)), key=lambda i: new_axes[i])
        self.set_space(node, tuple(new_axes[i] for i in order), src.ids.permute(order))
        return True

    def expand(self, node: fx.Node, source: fx.Node) -> bool:
        """unsqueeze, squeeze, expand: the tracked axes keep their sizes and move with the new axes."""
        src, in_shape, out_shape = self.tracked(source), _shape(source), _shape(node)
        if src is None or in_shape is None or out_shape is None:
            return False
        if node.target in ("unsqueeze", torch.unsqueeze):
            d = _arg(node, 1, "dim") % len(out_shape)
            axes = tuple(a + (a >= d) for a in src.axes)
        elif node.target in ("squeeze", torch.squeeze):
            dims = [i for i in range(len(in_shape)) if in_shape[i] == 1]
            d = _arg(node, 1, "dim")
            if d is not None:
                d = [d] if isinstance(d, int) else list(d)
                dims = [x % len(in_shape) for x in d if in_shape[x % len(in_shape)] == 1]
            if any(a in dims for a in src.axes):
                return False
            axes = tuple(a - sum(x < a for x in dims) for a in src.axes)
        else:  # expand / expand_as / broadcast_to: new leading axes, size-1 axes grown
            off = len(out_shape) - len(in_shape)
            axes = tuple(a + off for a in src.axes)
        if any(out_shape[b] != in_shape[a] for a, b in zip(src.axes, axes)):
            return False
        self.set_space(node, axes, src.ids)
        return True

    def reduce(self, node: fx.Node, source: fx.Node) -> bool:
        src, shape = self.tracked(source), _shape(source)
        dims = _arg(node, 1, "dim")
        keepdim = _arg(node, 2, "keepdim", False)
        if src is None or shape is None or dims is None:
            return False
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(shape) for d in dims]
        if any(a in dims for a in src.axes):
            return False
        axes = src.axes if keepdim else tuple(a - sum(d < a for d in dims) for a in src.axes)
        self.set_space(node, axes, src.ids)
        return True

    def _take(self, node: Any, src: _Space, axis: int, index: int, reason_node: fx.Node) -> tuple:
        """Index ``index`` of axis ``axis``: a constant that stays right only if every unit spans the whole axis,
        so the elements along it are joined."""
        axes, ids = src.axes, src.ids
        if axis in axes:
            i = axes.index(axis)
            first = ids.select(i, 0)
            for j in range(1, ids.shape[i]):
                self.union_ids(first, ids.select(i, j))
            ids = ids.select(i, index)
            axes = axes[:i] + axes[i + 1 :]
        return tuple(a - (a > axis) for a in axes), ids

    def select(self, node: fx.Node, source: fx.Node, dim: int | None, index: int | None) -> bool:
        src = self.tracked(source)
        if src is None or not isinstance(dim, int) or not isinstance(index, int):
            return False
        axes, ids = self._take(node, src, dim % src.ndim, index, node)
        if axes:
            self.set_space(node, axes, ids)
        return True

    def unbind(self, node: fx.Node, source: fx.Node, dim: Any) -> bool:
        src = self.tracked(source)
        meta = _meta(node)
        if src is None or not isinstance(dim, int) or not isinstance(meta, (list, tuple)):
            return False
        dim %= src.ndim
        parts = []
        for i in range(len(meta)):
            axes, ids = self._take(node, src, dim, i, node)
            parts.append(_Space(axes, ids, src.ndim - 1) if axes else None)
        self.space[node] = parts
        return True

    def split(self, node: fx.Node, source: fx.Node) -> bool:
        """chunk / split along an axis without channels: every part carries them all."""
        src = self.tracked(source)
        meta = _meta(node)
        if src is None or not isinstance(meta, (list, tuple)):
            return False
        dim = _arg(node, 2, "dim", 0)
        if not isinstance(dim, int) or dim % src.ndim in src.axes:
            return False
        self.space[node] = [_Space(src.axes, src.ids, src.ndim) for _ in meta]
        return True

    def getitem(self, node: fx.Node, source: fx.Node, index: Any) -> bool:
        sp = self.space.get(source)
        if isinstance(sp, list):
            if isinstance(index, int) and -len(sp) <= index < len(sp) and sp[index] is not None:
                self.space[node] = sp[index]
            return True
        src, in_shape = self.tracked(source), _shape(source)
        if src is None or in_shape is None:
            return False
        items = list(index) if isinstance(index, tuple) else [index]
        if any(
            isinstance(i, fx.Node) or not isinstance(i, (int, slice, type(None), type(Ellipsis)))
            for i in items
        ):
            return False
        if Ellipsis in items:
            at = items.index(Ellipsis)
            used = sum(1 for i in items if i is not None and i is not Ellipsis)
            items[at : at + 1] = [slice(None)] * (len(in_shape) - used)
        items += [slice(None)] * (len(in_shape) - sum(1 for i in items if i is not None))
        axes, ids, out_axis, in_axis = list(src.axes), src.ids, 0, 0
        mapping: dict[int, int] = {}
        for item in items:
            if item is None:
                out_axis += 1
                continue
            if isinstance(item, int):
                if in_axis in src.axes:
                    return False  # one channel picked by position: index constants break after removal
            else:
                full = item.indices(in_shape[in_axis]) == (0, in_shape[in_axis], 1)
                if in_axis in src.axes and not full:
                    return False
                mapping[in_axis] = out_axis
                out_axis += 1
            in_axis += 1
        del axes
        self.set_space(node, tuple(mapping[a] for a in src.axes), ids)
        return True

    # ------------------------------------------------------------------------------------ attention
    def _heads(self, operands: list[tuple[_Space | None, int, str]], out_shape: tuple[int, ...]) -> Any:
        """Batch axes of a (batched) matmul that carry channels in the operands: attention heads. Returns
        ``(tracked output batch axes, [(space, axis offset)])`` or ``None`` when the operands disagree."""
        ro = len(out_shape)
        head_axes: tuple[int, ...] | None = None
        for sp, ndim, _ in operands:
            if sp is None:
                continue
            off = ro - ndim
            batch = tuple(a + off for a in sp.axes if a < ndim - 2)
            if head_axes is None:
                head_axes = batch
            elif batch != head_axes:
                return None
        return head_axes

    def _join_heads(
        self,
        node: fx.Node,
        spaces: list[tuple[_Space, int]],
        head_axes: tuple[int, ...],
        out_extra: list[int],
    ) -> Tensor:
        """One unit per head: every element of every operand at that head index, and the output's."""
        out_shape = _shape(node)
        sizes = [out_shape[a] for a in head_axes]
        heads = self.fresh(tuple(sizes)).flatten()
        for sp, off in spaces:
            ids = sp.ids
            lead = [sp.axes.index(a - off) for a in head_axes]
            rest = [i for i in range(ids.dim()) if i not in lead]
            per_head = ids.permute(lead + rest).reshape(len(heads), -1)
            for h, row in zip(heads.tolist(), per_head.tolist()):
                for e in row:
                    self.uf.union(h, e)
        return heads.reshape(sizes)

    def _record_site(self, node: fx.Node, heads: Tensor, head_dim: int, leaf: str | None = None) -> None:
        if leaf is not None:
            module = leaf
        else:
            stack = node.meta.get("nn_module_stack") or {}
            entries = list(stack.values())
            module = entries[-1][0] if entries else ""
            module = module if isinstance(module, str) else str(module)
        key = (module, heads.numel())
        if key not in self.sites:
            self.sites[key] = _Site(module, heads.flatten().tolist(), head_dim, leaf is not None)

    def matmul(self, node: fx.Node) -> bool:
        a, b = _arg(node, 0, "input"), _arg(node, 1, "other")
        sa, sb, so = _shape(a), _shape(b), _shape(node)
        if sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
            return False
        A, B = self.tracked(a), self.tracked(b)
        head_axes = self._heads([(A, len(sa), "a"), (B, len(sb), "b")], so)
        if head_axes is None:
            return False
        ro = len(so)
        if not head_axes:
            # no heads: only a channel that passes through one side (a token-mixing matmul) is followed
            if A is not None and B is None and A.axes == (len(sa) - 2,):
                return self._through(node, A, (ro - 2,))
            if B is not None and A is None and B.axes == (len(sb) - 1,):
                return self._through(node, B, (ro - 1,))
            return False
        # an operand without channels must not vary along the heads
        for sp, shape in ((A, sa), (B, sb)):
            if sp is None:
                off = ro - len(shape)
                if any(a_ - off >= 0 and shape[a_ - off] != 1 for a_ in head_axes):
                    return False
        spaces = [(sp, ro - len(shape)) for sp, shape in ((A, sa), (B, sb)) if sp is not None]
        heads = self._join_heads(node, spaces, head_axes, [])
        out_axes, out_ids = head_axes, heads
        if B is not None and (len(sb) - 1) in B.axes:
            dh = so[-1]
            out_axes = (*head_axes, ro - 1)
            out_ids = heads.unsqueeze(-1).expand(*heads.shape, dh).contiguous()
            fresh = self.fresh(tuple(out_ids.shape))
            self.union_ids(fresh, out_ids)
            out_ids = fresh
        else:
            fresh = self.fresh(tuple(heads.shape))
            self.union_ids(fresh, heads)
            out_ids = fresh
        # zero when a whole operand's head is zero (masked q, k or v)
        zero = torch.zeros(heads.numel(), dtype=torch.bool)
        for sp, off in spaces:
            lead = [sp.axes.index(x - off) for x in head_axes]
            rest = [i for i in range(sp.ids.dim()) if i not in lead]
            z = self.zero_mask(sp.ids.permute(lead + rest).reshape(heads.numel(), -1)).all(1)
            zero |= z
        per = out_ids.reshape(heads.numel(), -1)
        self.mark_nonzero(per, (~zero).unsqueeze(1).expand_as(per))
        self.set_space(node, out_axes, out_ids)
        dim_a = sa[-1]
        self._record_site(node, heads, dim_a if A is not None and (len(sa) - 1) in A.axes else so[-1])
        return True

    def _through(self, node: fx.Node, sp: _Space, axes: tuple[int, ...]) -> bool:
        """The channels of one operand of a matmul that does not mix them (zero stays zero)."""
        ids = self.fresh(tuple(sp.ids.shape))
        self.union_ids(ids, sp.ids)
        self.mark_nonzero(ids, ~self.zero_mask(sp.ids))
        self.set_space(node, axes, ids)
        return True

    def sdpa(self, node: fx.Node) -> bool:
        q, k, v = _arg(node, 0, "query"), _arg(node, 1, "key"), _arg(node, 2, "value")
        shapes = [_shape(t) for t in (q, k, v)]
        so = _shape(node)
        if so is None or any(s is None or len(s) < 3 for s in shapes):
            return False
        Q, K, V = (self.tracked(t) for t in (q, k, v))
        head_axes = self._heads([(s, len(sh), n) for s, sh, n in zip((Q, K, V), shapes, "qkv")], so)
        if not head_axes:
            return False
        ro = len(so)
        for sp, shape in zip((Q, K, V), shapes):
            if sp is None and any(
                a - (ro - len(shape)) >= 0 and shape[a - (ro - len(shape))] != 1 for a in head_axes
            ):
                return False
        mask = _arg(node, 3, "attn_mask")
        if isinstance(mask, fx.Node):
            if mask in self.space:
                return False
            ms = _shape(mask)
            if ms is not None and any(
                a - (ro - len(ms)) >= 0 and ms[a - (ro - len(ms))] != 1 for a in head_axes
            ):
                return False
        spaces = [(sp, ro - len(sh)) for sp, sh in zip((Q, K, V), shapes) if sp is not None]
        heads = self._join_heads(node, spaces, head_axes, [])
        if V is not None and (len(shapes[2]) - 1) in V.axes:
            out_axes = (*head_axes, ro - 1)
            base = heads.unsqueeze(-1).expand(*heads.shape, so[-1]).contiguous()
        else:
            out_axes, base = head_axes, heads
        out_ids = self.fresh(tuple(base.shape))
        self.union_ids(out_ids, base)
        if V is not None:
            off = ro - len(shapes[2])
            lead = [V.axes.index(x - off) for x in head_axes]
            rest = [i for i in range(V.ids.dim()) if i not in lead]
            zero = self.zero_mask(V.ids.permute(lead + rest).reshape(heads.numel(), -1)).all(1)
        else:
            zero = torch.zeros(heads.numel(), dtype=torch.bool)
        per = out_ids.reshape(heads.numel(), -1)
        self.mark_nonzero(per, (~zero).unsqueeze(1).expand_as(per))
        self.set_space(node, out_axes, out_ids)
        self._record_site(node, heads, shapes[0][-1])
        return True

    def attention_module(self, node: fx.Node, name: str, m: nn.Module) -> bool:
        """``nn.MultiheadAttention`` (packed projections): its heads are units (rows of ``in_proj_weight`` and
        ``in_proj_bias`` for q, k and v, columns of ``out_proj``), its inputs are read by ``in_proj_weight``'s
        columns and its output is written by ``out_proj``."""
        if not getattr(m, "_qkv_same_embed_dim", True) or getattr(m, "bias_k", None) is not None:
            return False
        if getattr(m, "add_zero_attn", False):
            return False
        sources = [_arg(node, i, n) for i, n in enumerate(("query", "key", "value"))]
        out_meta = _meta(node)
        if not isinstance(out_meta, (list, tuple)) or not out_meta or not hasattr(out_meta[0], "shape"):
            return False
        e, h = m.embed_dim, m.num_heads
        inner = m.in_proj_weight.shape[0] // 3
        dh = m.head_dim
        spaces = [self.tracked(s) for s in sources]
        for s, sp in zip(sources, spaces):
            if sp is not None and not sp.single(-1, e):
                self.pin(s, f"`{name}` reads {e} features of a tensor whose channels lie elsewhere")
        known = [sp for sp in spaces if sp is not None and sp.single(-1, e)]
        for sp in known[1:]:
            self.union_ids(known[0].ids, sp.ids)
        if known:
            self.roles[name].add("consumer")
            for k, el in enumerate(known[0].ids.tolist()):
                self.inputs.append((el, ParamSlice(name, "in_proj_weight", 1, k)))
                self.reads.append(el)
        heads = self.fresh((inner // dh,))
        self.roles[name].add("attention")
        out_proj = f"{name}.out_proj"
        for hh, el in enumerate(heads.tolist()):
            for part in range(3):
                for j in range(dh):
                    row = part * inner + hh * dh + j
                    self.outputs.append((el, ParamSlice(name, "in_proj_weight", 0, row)))
                    if m.in_proj_bias is not None:
                        self.outputs.append((el, ParamSlice(name, "in_proj_bias", 0, row)))
            for j in range(dh):
                self.inputs.append((el, ParamSlice(out_proj, "weight", 1, hh * dh + j)))
        # the output: written by out_proj
        shape = tuple(int(d) for d in out_meta[0].shape)
        ids = self.fresh((shape[-1],))
        self.roles[out_proj].add("producer")
        for k, el in enumerate(ids.tolist()):
            self.outputs.append((el, ParamSlice(out_proj, "weight", 0, k)))
            if m.out_proj.bias is not None:
                self.outputs.append((el, ParamSlice(out_proj, "bias", 0, k)))
        self.space[node] = [_Space((len(shape) - 1,), ids, len(shape)), None]
        del h
        self._record_site(node, heads, dh, leaf=name)
        return True

    def functional_linear(self, node: fx.Node) -> bool:
        """``F.linear(x, layer.weight, layer.bias)`` inside a module's forward: that layer, read as a module."""
        weight = _arg(node, 1, "weight")
        if weight not in self.attrs:
            return False
        owner, pname = self.attrs[weight]
        module = self.modules.get(owner)
        if pname != "weight" or not isinstance(module, nn.Linear):
            return False
        self.add_consumer(node.args[0], owner, module.in_features, axis=-1)
        self.add_producer(node, owner, module, -1)
        return True


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with the attention layer compaction leaves behind kept whole (a leaf), and the
    modules named in ``leaves`` (glob patterns) kept whole: their inputs and outputs are kept, they are not
    traced into (the way out for a block that cannot be traced)."""

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        super().__init__()
        self.leaves = list(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaves and any(fnmatch.fnmatchcase(module_qualified_name, p) for p in self.leaves):
            return True
        return _is_attention(m) or super().is_leaf_module(m, module_qualified_name)


def _untraceable_part(model: nn.Module, leaves: Iterable[str]) -> str | None:
    """The innermost submodule that ``torch.fx`` cannot trace on its own, as ``name (Class)``."""
    name, module = "", model
    while True:
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if _Tracer(leaves).is_leaf_module(child, full):
                continue
            try:
                _Tracer(leaves).trace(child)
            except Exception:  # noqa: BLE001 - a failing child: look inside it
                name, module = full, child
                break
        else:
            return f"`{name}` ({type(module).__name__})" if name else None


def check_traceable(model: nn.Module, leaves: Iterable[str] = ()) -> fx.GraphModule:
    """``model`` traced by ``torch.fx`` (no input needed), or a :class:`DependencyError` that names the model,
    the submodule that fails, the failure and the way out.

    Args:
        model: the network.
        leaves: glob patterns of module names not to trace into (kept whole).

    Raises:
        DependencyError: when ``torch.fx`` cannot trace the model.
    """
    try:
        graph = _Tracer(leaves).trace(model)
        return fx.GraphModule(model, graph, type(model).__name__)
    except Exception as err:  # noqa: BLE001 - every tracing failure means: no graph
        part = _untraceable_part(model, leaves)
        where = f" in {part}" if part else ""
        raise DependencyError(
            f"torch.fx could not trace {type(model).__name__}{where} ({type(err).__name__}: {err}). Data-dependent "
            "control flow (if/for on tensor values) cannot be traced: exclude that module from pruning, or leave "
            "it dense."
        ) from err


def _traced(model: nn.Module, example_input: Tensor, leaves: Iterable[str] = ()) -> fx.Graph:
    """The graph of ``model`` with the shape of every tensor (``node.meta["tensor_meta"]``): ``torch.fx``, else
    ``torch.export`` rewritten into ``torch.fx``'s conventions (:func:`~.tracing.trace_graph`)."""
    from lightning_optim.functional.pruning.tracing import trace_graph

    try:
        return trace_graph(model, example_input, tracer=_Tracer(leaves)).graph
    except DependencyError as err:
        part = _untraceable_part(model, leaves)
        if part is None:
            raise
        raise DependencyError(
            f"{err} The part torch.fx cannot follow: {part}; keep it whole with `exclude` (ProgressivePruning) or "
            "`leaves` (build_dependency_graph)."
        ) from err


def build_dependency_graph(
    model: nn.Module,
    example_input: Tensor,
    leaves: Iterable[str] = (),
    prune_layer_norm_tokens: bool = False,
) -> DependencyGraph:
    """Trace ``model`` and return its removable channels (units) and their coupling groups.

    Args:
        model: the network (not modified; run once in eval mode on ``example_input``).
        example_input: a batch it accepts.
        leaves: glob patterns of modules not to trace into: kept whole, with the channels they read and write
            (the way out for a block that cannot be traced).
        prune_layer_norm_tokens: also make units of the channels a layer norm normalises across on tensors of
            fewer than 4 dimensions (a transformer's residual stream, its embedding width). Off by default: they
            are kept. On feature maps (4-D or more, ConvNeXt) they are always units. The masked model must
            then normalise over the kept channels only (:func:`~.groups.apply_layer_norm_masks`).

    Raises:
        DependencyError: when ``torch.fx`` cannot trace the model or the traced model fails on the input.
    """
    graph = _traced(model, example_input, leaves)
    calls: dict[str, int] = defaultdict(int)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] += 1
    b = _Builder(model, graph, prune_layer_norm_tokens)
    b.run(calls)

    roots: dict[int, Unit] = {}

    def unit_of(e: int) -> Unit:
        r = b.uf.find(e)
        if r not in roots:
            roots[r] = Unit(id=len(roots))
        return roots[r]

    seen: set[tuple[int, ParamSlice]] = set()
    for e, s in b.outputs:
        u = unit_of(e)
        if (u.id, s) not in seen:
            seen.add((u.id, s))
            u.outputs.append(s)
    for e, s in b.inputs:
        u = unit_of(e)
        if (u.id, s) not in seen:
            seen.add((u.id, s))
            u.inputs.append(s)
    for e, reason in b.barrier.items():
        r = b.uf.find(e)
        if r in roots and roots[r].pinned is None:
            roots[r].pinned = reason
    for e in b.reads:
        if e in b.nonzero:
            u = roots[b.uf.find(e)]
            if u.pinned is None:
                u.pinned = (
                    "masking it would not make the channel zero where it is read (a non-zero-preserving op)"
                )
    units = [u for u in sorted(roots.values(), key=lambda u: u.id) if u.outputs]

    def writers(u: Unit) -> list[str]:
        """The convolutions, linear layers, embeddings and attention layers that write the channel (norms and
        other parameters only scale or shift it)."""
        found = set()
        for s in u.outputs:
            roles = b.roles[s.module]
            if s.name == "weight" and s.axis == 0 and roles & {"producer", "depthwise", "grouped"}:
                found.add(s.module)
            elif s.name == "in_proj_weight" and s.axis == 0 and "attention" in roles:
                found.add(s.module)
            elif s.name == "weight" and "embedding" in roles:
                found.add(s.module)
        return sorted(found)

    for u in units:
        if u.pinned is None and not writers(u):
            u.pinned = "no layer writes it"
    # a parameter slice must belong to one unit only (a shared module makes units overlap)
    owner: dict[ParamSlice, int] = {}
    for u in units:
        for s in u.slices:
            if owner.setdefault(s, u.id) != u.id:
                u.pinned = u.pinned or f"`{s.module}` is shared by several channels"
    for i, u in enumerate(units):
        u.id = i

    # the conv group of each unit that runs through a grouped convolution (one grouped conv per unit, or the
    # conv groups must agree: several grouped convolutions with other group widths on one channel are pinned)
    unit_division: dict[int, int] = {}
    by_root = {id(u): u for u in units}
    for e, entries in b.divisions.items():
        u = roots.get(b.uf.find(e))
        if u is None or id(u) not in by_root:
            continue
        kinds = {(g, n) for _, g, n in entries}
        current = unit_division.get(u.id)
        key = next(iter(kinds))
        if (
            len(kinds) > 1
            or (current is not None and current != key[0])
            or any(n != key[1] for _, _, n in entries)
        ):
            u.pinned = u.pinned or "grouped convolutions with different group widths share it"
        unit_division[u.id] = key[0]

    # attention: the unit of each head, per module that splits its width into heads
    sites = []
    head_units: set[int] = set()
    for site in b.sites.values():
        ids = []
        for e in site.heads:
            u = roots.get(b.uf.find(e))
            ids.append(u.id if u is not None and id(u) in by_root else -1)
        if -1 in ids or len(set(ids)) != len(ids):
            for uid in ids:
                if uid >= 0:
                    units[uid].pinned = units[uid].pinned or f"the heads of `{site.module}` are not separable"
            continue
        head_units.update(ids)
        sites.append(AttentionSite(site.module, ids, site.head_dim, site.leaf))

    # layer norms across channels: the unit of each channel
    layer_norms = []
    for ln in b.layer_norms:
        ids = []
        for e in ln.ids:
            u = roots.get(b.uf.find(e))
            ids.append(u.id if u is not None and id(u) in by_root else -1)
        layer_norms.append(LayerNormSite(ln.module, ln.axis, ids, ln.eps, ln.weight, ln.bias))

    # coupling groups: units whose member parameters (module, name, axis) are the same set
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for u in units:
        sig = tuple(sorted({(s.module, s.name, s.axis) for s in u.slices}))
        by_signature[sig].append(u.id)
    groups = []
    for gid, (_sig, members) in enumerate(by_signature.items()):
        producers = writers(units[members[0]])
        for m in members:
            units[m].group = gid
        divisions = {m: unit_division[m] for m in members if m in unit_division}
        if divisions and len(divisions) != len(members):
            for m in members:
                units[m].pinned = units[m].pinned or "a grouped convolution reads only some of these channels"
            divisions = {}
        kind = "heads" if any(m in head_units for m in members) else "channels"
        groups.append(
            CouplingGroup(
                gid, producers[0] if producers else f"group{gid}", members, producers, divisions, kind
            )
        )
    pinned: dict[str, int] = defaultdict(int)
    for u in units:
        if u.pinned is not None:
            pinned[u.pinned] += 1
    return DependencyGraph(units, groups, dict(pinned), dict(b.roles), sites, layer_norms)


__all__ = [
    "NONZERO_MODULES",
    "NORM_MODULES",
    "TOKEN_LAYER_NORM",
    "ZERO_PRESERVING_MODULES",
    "AttentionSite",
    "CouplingGroup",
    "DependencyError",
    "DependencyGraph",
    "LayerNormSite",
    "ParamSlice",
    "Unit",
    "build_dependency_graph",
    "check_traceable",
]
