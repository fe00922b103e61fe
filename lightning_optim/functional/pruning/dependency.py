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
grouped convolution whose input and output widths differ, a layer norm across channels) are *pinned*, with
the reason. A grouped convolution with as many outputs as inputs (ResNeXt, RegNet) couples output channel
``k`` with input channel ``k`` (both in conv group ``k // (channels / groups)``); its coupling group then
loses the same number of channels in every conv group, so that the convolution stays grouped. A unit is also pinned
when masking it would not make the channel exactly zero where it is consumed (for example after a sigmoid),
so that the masked model and the compacted one compute the same function.

Units with the same set of member parameters form a *coupling group* (for instance all channels of one
residual stage, or all filters of one convolution): the group is what per-layer sparsity applies to.

The per-op rules live in small tables keyed by op type (:data:`PASSTHROUGH_MODULES`,
:data:`PASSTHROUGH_FUNCTIONS`, ...), as Torch-Pruning splits tracing, importance and per-op functions.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

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
FLATTEN_FUNCTIONS = {torch.flatten}


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


@dataclass
class DependencyGraph:
    """The units of a network and their coupling groups (see :func:`build_dependency_graph`)."""

    units: list[Unit]
    groups: list[CouplingGroup]
    #: ``{reason: number of units pinned for it}``
    pinned: dict[str, int]
    #: module name -> the kind of member it is ("producer", "norm", "depthwise", "consumer")
    roles: dict[str, set[str]]

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


def _args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))


class _Builder:
    """Walks the traced graph once, node by node, joining channel elements (see the module docstring)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.modules = dict(model.named_modules())
        self.gm = gm
        self.uf = _UnionFind()
        # node -> (first element id, channel count, channel axis)
        self.space: dict[fx.Node, tuple[int, int, int]] = {}
        self.barrier: dict[int, str] = {}  # element id -> reason
        self.nonzero: set[int] = set()  # elements that are not zero when their unit is masked
        self.outputs: list[tuple[int, ParamSlice]] = []
        self.inputs: list[tuple[int, ParamSlice]] = []
        self.reads: list[int] = []  # elements read by a consumer's weight (must be zero when masked)
        self.roles: dict[str, set[str]] = defaultdict(set)
        # element -> [(grouped conv, its conv group of this channel, groups)]
        self.divisions: dict[int, list[tuple[str, int, int]]] = {}

    # ------------------------------------------------------------------------------------ spaces
    def new_space(self, node: fx.Node, axis: int) -> tuple[int, int, int] | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        axis = axis % len(shape)
        count = int(shape[axis])
        entry = (self.uf.add(count), count, axis)
        self.space[node] = entry
        return entry

    def pin(self, node: fx.Node, reason: str) -> None:
        entry = self.space.get(node)
        if entry is None:
            return
        start, count, _ = entry
        for e in range(start, start + count):
            self.barrier.setdefault(e, reason)

    def pin_args(self, node: fx.Node, reason: str) -> None:
        for a in _args(node):
            self.pin(a, reason)

    def passthrough(self, node: fx.Node, source: fx.Node, zero: bool = True) -> bool:
        """``node`` has the channels of ``source``, one to one (same axis, same count)."""
        src = self.space.get(source)
        if src is None:
            return False
        out = self.new_space(node, src[2])
        if out is None or out[1] != src[1]:
            self.pin(source, f"`{node.format_node()}` changes the channel count")
            if out is not None:
                self.pin(node, f"`{node.format_node()}` changes the channel count")
            return True
        for k in range(src[1]):
            self.uf.union(src[0] + k, out[0] + k)
            if not zero:
                self.nonzero.add(out[0] + k)
        return True

    # ------------------------------------------------------------------------------------ members
    def add_producer(self, node: fx.Node, name: str, module: nn.Module, axis: int) -> None:
        out = self.new_space(node, axis)
        if out is None:
            return
        self.roles[name].add("producer")
        for k in range(out[1]):
            e = out[0] + k
            self.outputs.append((e, ParamSlice(name, "weight", 0, k)))
            if getattr(module, "bias", None) is not None:
                self.outputs.append((e, ParamSlice(name, "bias", 0, k)))

    def add_consumer(self, source: fx.Node, name: str, count: int, axis: int = 1) -> bool:
        src = self.space.get(source)
        if src is None:
            return True  # reads no channel tensor of ours (e.g. the model input without a channel axis)
        shape = _shape(source) or ()
        if src[1] != count or src[2] != axis % max(len(shape), 1):
            self.pin(source, f"`{name}` reads {count} features of a {src[1]}-channel tensor")
            return False
        self.roles[name].add("consumer")
        for k in range(count):
            e = src[0] + k
            self.inputs.append((e, ParamSlice(name, "weight", 1, k)))
            self.reads.append(e)
        return True

    # ------------------------------------------------------------------------------------ walk
    def run(self, calls: dict[str, int]) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.new_space(node, 1) is not None:
                    self.pin(node, "the model's input channels")
            elif node.op == "output":
                self.pin_args(node, "the model's output")
            elif node.op == "get_attr":
                if self.new_space(node, 1) is not None:
                    self.pin(node, f"a constant tensor `{node.target}`")
            elif node.op == "call_module":
                self.call_module(node, calls)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)

    def call_module(self, node: fx.Node, calls: dict[str, int]) -> None:
        name, module = node.target, self.modules[node.target]
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if calls[name] > 1 and any(True for _ in module.parameters(recurse=False)):
            self.pin_args(node, f"`{name}` is called more than once")
            if self.new_space(node, 1) is not None:
                self.pin(node, f"`{name}` is called more than once")
            return
        if isinstance(module, nn.Linear):
            shape = _shape(source) if source is not None else None
            if source in self.space and self.space[source][2] != len(shape or ()) - 1:
                self.pin(source, f"`{name}` reads the last axis, not the channel axis")
            elif source is not None:
                self.add_consumer(source, name, module.in_features, axis=-1)
            self.add_producer(node, name, module, -1)
            return
        if _is_conv(module):
            if module.groups == 1:
                if source is not None:
                    self.add_consumer(source, name, module.in_channels)
                self.add_producer(node, name, module, 1)
            elif _is_depthwise(module) and source is not None and self.passthrough(node, source):
                out = self.space.get(node)
                if out is not None:
                    self.roles[name].add("depthwise")
                    for k in range(out[1]):
                        self.outputs.append((out[0] + k, ParamSlice(name, "weight", 0, k)))
                        if module.bias is not None:
                            self.outputs.append((out[0] + k, ParamSlice(name, "bias", 0, k)))
            elif (
                module.in_channels == module.out_channels
                and source is not None
                and source in self.space
                and self.space[source][2] == 1
                and self.passthrough(node, source)
            ):
                # grouped, in == out: channel k in and out go together (conv group k // width)
                out = self.space.get(node)
                if out is not None:
                    self.roles[name].add("grouped")
                    width = module.out_channels // module.groups
                    src = self.space[source][0]
                    for k in range(out[1]):
                        e = out[0] + k
                        self.outputs.append((e, ParamSlice(name, "weight", 0, k)))
                        if module.bias is not None:
                            self.outputs.append((e, ParamSlice(name, "bias", 0, k)))
                        self.inputs.append((e, ParamSlice(name, "weight", 1, k)))
                        self.reads.append(src + k)
                        self.divisions.setdefault(e, []).append((name, k // width, module.groups))
            else:
                self.pin_args(node, f"grouped convolution `{name}` (groups={module.groups}, in != out)")
                if self.new_space(node, 1) is not None:
                    self.pin(node, f"grouped convolution `{name}` (groups={module.groups}, in != out)")
            return
        if isinstance(module, NORM_MODULES) and source is not None and self.passthrough(node, source):
            out = self.space.get(node)
            if out is not None:
                self.roles[name].add("norm")
                for k in range(out[1]):
                    for pname in ("weight", "bias", "running_mean", "running_var"):
                        if getattr(module, pname, None) is not None:
                            self.outputs.append((out[0] + k, ParamSlice(name, pname, 0, k)))
            return
        if isinstance(module, ZERO_PRESERVING_MODULES) and source is not None:
            if self.passthrough(node, source):
                return
        if isinstance(module, NONZERO_MODULES) and source is not None:
            if self.passthrough(node, source, zero=False):
                return
        if isinstance(module, nn.Flatten) and source is not None and module.end_dim == -1:
            if self.flatten(node, source, module.start_dim):
                return
        self.unknown(node, f"module `{name}` ({type(module).__name__})")

    def call_function(self, node: fx.Node) -> None:
        target = node.target
        tensors = [a for a in _args(node) if a in self.space]
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        is_fn, is_method = node.op == "call_function", node.op == "call_method"
        if not tensors:
            # shapes, sizes, scalars: no channel tensor in or (if any) out
            if _shape(node) is not None and len(_shape(node)) >= 2:
                self.new_space(node, 1)
                self.pin(node, f"a tensor made by `{node.format_node()}`")
            return
        if (is_fn and target in ZERO_PRESERVING_FUNCTIONS) or (
            is_method and target in ZERO_PRESERVING_METHODS
        ):
            if source in self.space and len(tensors) == 1 and self.passthrough(node, source):
                return
        if (is_fn and target in NONZERO_FUNCTIONS) or (is_method and target in NONZERO_METHODS):
            if source in self.space and len(tensors) == 1 and self.passthrough(node, source, zero=False):
                return
        if (is_fn and target in ADD_OPS) or (is_method and target in ADD_METHODS):
            if self.elementwise(node, tensors, rule="add"):
                return
        if (is_fn and target in MUL_OPS) or (is_method and target in MUL_METHODS):
            if self.elementwise(node, tensors, rule="mul"):
                return
        if (is_fn and target in DIV_OPS) or (is_method and target in DIV_METHODS):
            if source in self.space and self.elementwise(node, tensors, rule="div"):
                return
        if (is_fn and target in CAT_FUNCTIONS) and self.cat(node):
            return
        if (is_fn and target in FLATTEN_FUNCTIONS) or (is_method and target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if source in self.space and end == -1 and self.flatten(node, source, start):
                return
        if (is_fn and target in REDUCE_FUNCTIONS) or (is_method and target in REDUCE_METHODS):
            if source in self.space and self.reduce(node, source):
                return
        self.unknown(node, f"`{getattr(target, '__name__', target)}`")

    def unknown(self, node: fx.Node, what: str) -> None:
        reason = f"an operation we do not prune through: {what}"
        self.pin_args(node, reason)
        if self.new_space(node, 1) is not None:
            self.pin(node, reason)

    def elementwise(self, node: fx.Node, tensors: list[fx.Node], rule: str) -> bool:
        out_shape = _shape(node)
        ref = tensors[0]
        axis = self.space[ref][2]
        if out_shape is None:
            return False
        for t in tensors:
            shape = _shape(t)
            if shape is None or len(shape) != len(out_shape) or self.space[t][2] != axis:
                return False
            if self.space[t][1] != out_shape[axis]:
                return False
        out = self.new_space(node, axis)
        if out is None:
            return False
        for k in range(out[1]):
            members = [self.space[t][0] + k for t in tensors]
            for e in members:
                self.uf.union(e, out[0] + k)
            zeros = [e not in self.nonzero for e in members]
            # with one tensor (x + 1.0, x * s), the constant decides: an addition of a constant is not zero
            constant_other = (
                len(tensors) == 1 and len([a for a in node.args if not isinstance(a, fx.Node)]) > 0
            )
            if rule == "add":
                is_zero = all(zeros) and not constant_other
            elif rule == "mul":
                is_zero = any(zeros)
            else:  # div: zero when the numerator is
                is_zero = zeros[0] and tensors[0] is node.args[0]
            if not is_zero:
                self.nonzero.add(out[0] + k)
        return True

    def cat(self, node: fx.Node) -> bool:
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(parts, (list, tuple)) or not all(
            isinstance(p, fx.Node) and p in self.space for p in parts
        ):
            return False
        out_shape = _shape(node)
        if out_shape is None:
            return False
        axis = dim % len(out_shape)
        if any(self.space[p][2] != axis for p in parts):
            return False
        out = self.new_space(node, axis)
        offset = 0
        for p in parts:
            start, count, _ = self.space[p]
            for k in range(count):
                self.uf.union(start + k, out[0] + offset + k)
                if start + k in self.nonzero:
                    self.nonzero.add(out[0] + offset + k)
            offset += count
        return offset == out[1]

    def flatten(self, node: fx.Node, source: fx.Node, start: int) -> bool:
        shape = _shape(source)
        if shape is None or source not in self.space:
            return False
        src_start, count, axis = self.space[source]
        if start % len(shape) != 1 or axis != 1:
            return False
        per_channel = 1
        for d in shape[2:]:
            per_channel *= int(d)
        out = self.new_space(node, 1)
        if out is None or out[1] != count * per_channel:
            return False
        for c in range(count):
            for j in range(per_channel):
                e = out[0] + c * per_channel + j
                self.uf.union(src_start + c, e)
                if src_start + c in self.nonzero:
                    self.nonzero.add(e)
        return True

    def reduce(self, node: fx.Node, source: fx.Node) -> bool:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        shape = _shape(source)
        if dims is None or shape is None:
            return False
        dims = [dims] if isinstance(dims, int) else list(dims)
        axis = self.space[source][2]
        dims = [d % len(shape) for d in dims]
        if axis in dims:
            return False
        new_axis = axis if keepdim else axis - sum(d < axis for d in dims)
        out = self.new_space(node, new_axis)
        if out is None or out[1] != self.space[source][1]:
            return False
        for k in range(out[1]):
            self.uf.union(self.space[source][0] + k, out[0] + k)
            if self.space[source][0] + k in self.nonzero:
                self.nonzero.add(out[0] + k)
        return True


def check_traceable(model: nn.Module) -> fx.GraphModule:
    """``model`` traced by ``torch.fx`` (no input needed), or a :class:`DependencyError` that names the model,
    the failure and the way out.

    Raises:
        DependencyError: when ``torch.fx`` cannot trace the model.
    """
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - every tracing failure means: no graph
        raise DependencyError(
            f"torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}). Data-dependent control "
            "flow (if/for on tensor values) cannot be traced: exclude that module from pruning, or leave it dense."
        ) from err


def build_dependency_graph(model: nn.Module, example_input: Tensor) -> DependencyGraph:
    """Trace ``model`` and return its removable channels (units) and their coupling groups.

    Args:
        model: the network (not modified; run once in eval mode on ``example_input``).
        example_input: a batch it accepts.

    Raises:
        DependencyError: when ``torch.fx`` cannot trace the model or the traced model fails on the input.
    """
    gm = check_traceable(model)
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as err:  # noqa: BLE001
        raise DependencyError(
            f"Running the traced {type(model).__name__} on the example input failed: {err}"
        ) from err
    finally:
        model.train(was_training)
    calls: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] += 1
    b = _Builder(model, gm)
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
        """The convolutions and linear layers that write the channel (norms only scale it)."""
        return sorted(
            {
                s.module
                for s in u.outputs
                if s.name == "weight" and s.axis == 0 and b.roles[s.module] - {"norm"}
            }
        )

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
        groups.append(
            CouplingGroup(gid, producers[0] if producers else f"group{gid}", members, producers, divisions)
        )
    pinned: dict[str, int] = defaultdict(int)
    for u in units:
        if u.pinned is not None:
            pinned[u.pinned] += 1
    return DependencyGraph(units, groups, dict(pinned), dict(b.roles))


__all__ = [
    "NONZERO_MODULES",
    "NORM_MODULES",
    "ZERO_PRESERVING_MODULES",
    "CouplingGroup",
    "DependencyError",
    "DependencyGraph",
    "ParamSlice",
    "Unit",
    "build_dependency_graph",
    "check_traceable",
]
