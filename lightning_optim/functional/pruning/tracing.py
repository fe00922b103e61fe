"""One torch-level ``torch.fx`` graph of a network, for the dependency walker, whichever tracer can make it.

:func:`trace_graph` first tries ``torch.fx.symbolic_trace`` (and runs the graph once with ``ShapeProp``, as
:mod:`.dependency` always did). Models that symbolic tracing cannot read, such as the HuggingFace
``transformers`` 5.x models (``co_varnames is too small``, proxies in ``*args``), fall back to
``torch.export.export(model, (example_input,), strict=False)``, whose ATen graph is then *rewritten* into the
conventions of ``symbolic_trace``, so that the walker of :mod:`.dependency` reads it unchanged:

================================================  ==========================================================
ATen op of the exported graph                     node of the rewritten graph
================================================  ==========================================================
``linear`` / ``conv{1,2,3}d`` / ``convolution`` /  ``call_module`` of the owning ``nn.Linear`` / ``nn.ConvNd``
``conv_transpose{1,2,3}d``                        / ``nn.ConvTransposeNd`` (input only)
``batch_norm``, ``native_batch_norm``,            ``call_module`` of the ``nn.BatchNormNd`` (its ``getitem 0``
``_native_batch_norm_legit_no_training``          users read the module node)
``layer_norm``, ``native_layer_norm``,            ``call_module`` of the ``nn.LayerNorm`` / ``nn.GroupNorm`` /
``group_norm``, ``rms_norm``                      ``nn.RMSNorm``
``embedding(w, ids)``                             ``call_module`` of the ``nn.Embedding`` with ``(ids,)``
the same ops elsewhere (a parameter used outside  ``F.linear`` / ``F.conv{n}d`` / ``F.embedding`` /
its module's own op, other arguments)             ``F.layer_norm`` / ``F.group_norm`` / ``F.batch_norm`` on
                                                  ``get_attr`` nodes (other variants: the ATen op)
``add`` / ``sub`` / ``mul`` / ``div`` / ``rsub``  ``operator.add`` / ``sub`` / ``mul`` / ``truediv``
                                                  (``torch.add``/``torch.sub``/``torch.rsub`` with ``alpha``,
                                                  ``torch.div`` with ``rounding_mode``); ``add_``, ``sub_``,
                                                  ``mul_``, ``div_``: the in-place methods
``neg``, ``exp``, ``tanh``, ``sigmoid``           ``torch.neg`` / ``torch.exp`` / ``torch.tanh`` /
                                                  ``torch.sigmoid`` (in-place: ``tanh_``/``sigmoid_`` methods)
``relu``, ``gelu``, ``silu``, ``hardswish``,      ``F.relu`` / ``F.gelu`` / ``F.silu`` / ``F.hardswish`` /
``hardsigmoid``, ``hardtanh``, ``leaky_relu``,    ``F.hardsigmoid`` / ``F.hardtanh`` / ``F.leaky_relu`` /
``elu``, ``mish``, ``softplus`` (and ``op_``)     ``F.elu`` / ``F.mish`` / ``F.softplus`` (``inplace=True``)
``dropout``                                       ``F.dropout(x, p, training)`` (as traced: off in eval)
``softmax`` / ``_softmax`` / ``log_softmax``      ``call_method`` ``softmax`` / ``log_softmax`` ``(x, dim)``
``view`` / ``reshape`` / ``_unsafe_view``         ``call_method`` ``reshape(x, *shape)``
``permute``, ``transpose``, ``t``, ``unsqueeze``,  the ``call_method`` of the same name (``expand(x, *size)``,
``squeeze``, ``expand``, ``flatten``, ``select``,  ``permute(x, *dims)``)
``split``, ``split_with_sizes``, ``chunk``,
``unbind``, ``masked_fill``, ``type_as``
``clone`` / ``contiguous``                        ``call_method`` ``contiguous`` (contiguous format) or
                                                  ``clone``
``_to_copy``, ``to.*``                            ``call_method`` ``to`` (with ``dtype``/``device``)
``detach``                                        ``call_method`` ``detach``
``matmul`` / ``bmm`` / ``mm``                     ``torch.matmul``
``scaled_dot_product_attention``                  ``F.scaled_dot_product_attention`` (same arguments)
``mean`` / ``sum`` / ``amax``                     ``torch.mean`` / ``torch.sum`` / ``torch.amax``
                                                  ``(x, dims, keepdim)``
``cat`` / ``stack``                               ``torch.cat`` / ``torch.stack``
``slice.Tensor(x, dim, start, end, step)``        ``operator.getitem(x, (slice(None), ..., slice(...)))``
                                                  (an end of ``2**63 - 1`` becomes ``None``)
``max_pool{1,2,3}d``, ``avg_pool{1,2}d``,         ``F.max_pool{n}d`` / ``F.avg_pool{n}d`` /
``adaptive_avg_pool{1,2,3}d``                     ``F.adaptive_avg_pool{n}d``
``upsample_{nearest,linear,bilinear,bicubic,       ``F.interpolate`` (that ``mode``, ``size`` or
trilinear}*d.vec``                                ``scale_factor``, ``align_corners``)
anything else (``arange``, ``ge``, ``gather``,    kept: the ATen op as the ``call_function`` target (the
``where``, ``index``, ...)                        walker treats unknown ops conservatively); assertion ops
                                                  without users are dropped
================================================  ==========================================================

Parameters and buffers that an op reads outside its module's own op become ``get_attr`` nodes of their
qualified name (e.g. ``cls_token``); tensor constants lifted by ``torch.export`` that are no attribute of the
model become ``get_attr`` nodes named ``_lifted_<name>``. The placeholders are the user inputs only, the
output node returns the user outputs (buffer mutations are not written back as outputs; in-place ops stay in
the graph). Every node carries ``meta["tensor_meta"]`` (``TensorMetadata`` from the exported ``meta["val"]``,
a list for tuple outputs, ``None`` for non-tensors) and the exported ``meta["nn_module_stack"]`` (values are
``(qualified path, type name as a string)``, where ``symbolic_trace`` stores the type itself).

The rewritten graph runs: :attr:`TracedGraph.module` is a ``GraphModule`` over the model's own modules and
tensors that returns what the model returns (the same output structure, e.g. a ``SequenceClassifierOutput``).
``fx.GraphModule(model, graph)`` also works unless lifted constants (``_lifted_*``) are needed.
"""

from __future__ import annotations

import contextlib
import operator
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata

aten = torch.ops.aten
_INT64_MAX = 2**63 - 1
METHODS = ("auto", "fx", "export")


@dataclass
class TracedGraph:
    """A torch-level ``torch.fx`` graph of a model, with ``meta["tensor_meta"]`` on its nodes.

    Attributes:
        graph: the graph (``call_module`` nodes name the model's leaf modules).
        module: a ``GraphModule`` that runs ``graph`` over the model's modules and tensors (``None`` when it
            could not be built; :attr:`notes` says why).
        how: ``"fx"`` (``torch.fx.symbolic_trace``) or ``"export"`` (``torch.export``, rewritten).
        notes: what the caller should know: why ``torch.fx`` failed, which ATen ops were kept, which
            parameters are read outside their module, what was dropped.
    """

    graph: fx.Graph
    module: fx.GraphModule | None
    how: str
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode; every submodule gets its own training flag back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _describe(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensor_meta(val: Any) -> Any:
    """``TensorMetadata`` of a (fake) tensor, a list for a tuple or list, ``None`` for anything else."""
    if isinstance(val, Tensor):
        try:
            return _extract_tensor_metadata(val)
        except Exception:  # noqa: BLE001 - exotic tensors: the shape is what the walker needs
            return _ShapeOnly(val.shape, val.dtype)
    if isinstance(val, (list, tuple)):
        return [_tensor_meta(v) for v in val]
    return None


@dataclass(frozen=True)
class _ShapeOnly:
    shape: torch.Size
    dtype: torch.dtype


def _shape_prop(model: nn.Module, gm: fx.GraphModule, args: tuple[Any, ...]) -> None:
    with _eval_mode(model), _eval_mode(gm), torch.no_grad():
        ShapeProp(gm).propagate(*args)


def trace_graph(
    model: nn.Module, example_input: Tensor, *, method: str = "auto", tracer: fx.Tracer | None = None
) -> TracedGraph:
    """Trace ``model`` into a torch-level ``torch.fx`` graph whose nodes carry ``meta["tensor_meta"]``.

    ``torch.fx.symbolic_trace`` first (run once with ``ShapeProp`` in eval mode, without gradients); when it
    fails, ``torch.export.export(model, (example_input,), strict=False)`` in eval mode, its ATen graph
    rewritten into ``symbolic_trace``'s conventions (see the module docstring). The model's training flags
    are restored (module by module).

    Args:
        model: the network (not modified).
        example_input: a batch it accepts (a tuple is passed as several positional inputs).
        method: ``"auto"`` (fx, then export), ``"fx"`` or ``"export"`` (that tracer only).
        tracer: the ``torch.fx`` tracer of the fx path (for instance one with more leaf modules); default
            ``fx.Tracer()``, as ``fx.symbolic_trace``. The export path has no leaf modules: it maps single
            ATen ops back to their modules (see the module docstring).

    Returns:
        The graph, a ``GraphModule`` that runs it, which tracer made it, and notes.

    Raises:
        DependencyError: when no tracer can make a graph of ``model`` on ``example_input``.
        ValueError: for an unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    name = type(model).__name__
    failures: list[str] = []
    last: BaseException | None = None
    if method in ("auto", "fx"):
        try:
            gm = fx.GraphModule(model, (tracer or fx.Tracer()).trace(model), type(model).__name__)
        except Exception as err:  # noqa: BLE001 - every tracing failure means: no graph
            failures.append(f"torch.fx could not trace {name} ({_describe(err)})")
            last = err
        else:
            try:
                _shape_prop(model, gm, args)
            except Exception as err:  # noqa: BLE001
                failures.append(f"the torch.fx graph failed on the example input ({_describe(err)})")
                last = err
            else:
                return TracedGraph(gm.graph, gm, "fx", [])
    if method in ("auto", "export"):
        try:
            with _eval_mode(model):
                ep = torch.export.export(model, args, strict=False)
        except Exception as err:  # noqa: BLE001
            failures.append(f"torch.export could not export it ({_describe(err)})")
            last = err
        else:
            try:
                graph, module, notes = _Rewriter(model, ep).run()
            except Exception as err:  # noqa: BLE001
                failures.append(f"its exported ATen graph could not be rewritten ({_describe(err)})")
                last = err
            else:
                return TracedGraph(graph, module, "export", [*failures, *notes])
    # imported here: dependency.py calls trace_graph, so a module-level import would be circular
    from lightning_optim.functional.pruning.dependency import DependencyError

    raise DependencyError(
        f"No graph of {name}: " + "; ".join(failures) + ". Data-dependent control flow (if/for on tensor "
        "values) cannot be traced: exclude that module from pruning, or leave it dense."
    ) from last


# ------------------------------------------------------------------------------------------ rewriting
def _bind(node: fx.Node) -> dict[str, Any]:
    """The arguments of an ATen call by their schema names, defaults filled in."""
    schema = node.target._schema
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def _ntuple(value: Any, n: int) -> Any:
    """``value`` as an ``n``-tuple (strings such as ``"same"`` unchanged)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    return value * n if len(value) == 1 else value


def _module_forward_is(module: nn.Module, base: type[nn.Module]) -> bool:
    """``module`` runs ``base.forward`` unchanged, without forward hooks (then one op is the whole call)."""
    return (
        type(module).forward is base.forward and not module._forward_hooks and not module._forward_pre_hooks
    )


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TUPLE_NORMS = {"native_batch_norm", "_native_batch_norm_legit_no_training", "native_layer_norm"}
_ASSERTS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range_for_size"}
#: op name -> (function, the names of its arguments after the input, in order; in-place variant supported)
_ACTIVATIONS: dict[str, tuple[Any, tuple[str, ...], bool]] = {
    "relu": (F.relu, (), True),
    "silu": (F.silu, (), True),
    "hardswish": (F.hardswish, (), True),
    "hardsigmoid": (F.hardsigmoid, (), True),
    "mish": (F.mish, (), True),
    "hardtanh": (F.hardtanh, ("min_val", "max_val"), True),
    "leaky_relu": (F.leaky_relu, ("negative_slope",), True),
    "softplus": (F.softplus, ("beta", "threshold"), False),
    "tanh": (torch.tanh, (), False),
    "sigmoid": (torch.sigmoid, (), False),
    "exp": (torch.exp, (), False),
    "neg": (torch.neg, (), False),
}
_ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
#: op name -> tensor method of the same arguments
_SAME_METHODS = {
    "transpose": "transpose",
    "t": "t",
    "unsqueeze": "unsqueeze",
    "flatten": "flatten",
    "select": "select",
    "split": "split",
    "split_with_sizes": "split",
    "chunk": "chunk",
    "unbind": "unbind",
    "masked_fill": "masked_fill",
    "type_as": "type_as",
    "detach": "detach",
}
_POOLS = {
    "max_pool1d": F.max_pool1d,
    "max_pool2d": F.max_pool2d,
    "max_pool3d": F.max_pool3d,
    "avg_pool1d": F.avg_pool1d,
    "avg_pool2d": F.avg_pool2d,
    "adaptive_avg_pool1d": F.adaptive_avg_pool1d,
    "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "adaptive_avg_pool3d": F.adaptive_avg_pool3d,
}

_UPSAMPLES = {
    "upsample_nearest1d": "nearest",
    "upsample_nearest2d": "nearest",
    "upsample_nearest3d": "nearest",
    "upsample_linear1d": "linear",
    "upsample_bilinear2d": "bilinear",
    "upsample_bicubic2d": "bicubic",
    "upsample_trilinear3d": "trilinear",
}


class _First:
    """The value of a tuple-returning op mapped to a module: ``getitem 0`` of it is ``node``."""

    def __init__(self, node: fx.Node) -> None:
        self.node = node


_Call = tuple[str, Any, tuple[Any, ...], dict[str, Any]]


class _Rewriter:
    """Rewrites an ``ExportedProgram``'s ATen graph into ``symbolic_trace``'s torch-level conventions."""

    def __init__(self, model: nn.Module, ep: torch.export.ExportedProgram) -> None:
        self.model = model
        self.ep = ep
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.lifted: dict[fx.Node, tuple[str, Any]] = {}  # placeholder -> (get_attr target, object)
        self.attr_nodes: dict[str, fx.Node] = {}
        self.root: dict[str, Any] = {}
        self.reserved: set[str] = set()
        self.modules_by_id = {id(m): n for n, m in model.named_modules()}
        self.tensor_names: dict[int, str] = {}
        for n, t in (*model.named_parameters(), *model.named_buffers()):
            self.tensor_names.setdefault(id(t), n)
        self.kept: Counter[str] = Counter()
        self.higher_order: Counter[str] = Counter()
        self.read_outside: set[str] = set()
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------- the walk
    def run(self) -> tuple[fx.Graph, fx.GraphModule | None, list[str]]:
        self.placeholders()
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "get_attr":  # the body of a higher-order op (cond, set_grad_enabled, ...)
                target = self.fresh_name("_export_" + node.target.replace(".", "_"))
                self.root[target] = getattr(self.ep.graph_module, node.target)
                self.env[node] = self.emit(node, ("get_attr", target, (), {}))
            elif node.op == "call_function":
                self.call_function(node)
            elif node.op == "output":
                self.output(node)
            else:  # pragma: no cover - exported graphs have no call_module / call_method
                raise NotImplementedError(f"node {node.format_node()}")
        if self.kept:
            kept = ", ".join(f"{k} x{n}" for k, n in sorted(self.kept.items()))
            self.notes.append(f"ATen ops kept as they are (the walker treats them as unknown): {kept}")
        if self.higher_order:
            ops = ", ".join(f"{k} x{n}" for k, n in sorted(self.higher_order.items()))
            self.notes.append(
                f"higher-order ops whose bodies stay ATen subgraphs (opaque to the walker): {ops}"
            )
        if self.read_outside:
            self.notes.append(
                "get_attr nodes (tensors read outside their module's own op, constants): "
                + ", ".join(sorted(self.read_outside))
            )
        module = None
        try:
            module = fx.GraphModule(self.root, self.graph, class_name=f"{type(self.model).__name__}Traced")
        except Exception as err:  # noqa: BLE001
            self.notes.append(f"the rewritten graph does not run as a GraphModule ({_describe(err)})")
        self.graph.lint()
        return self.graph, module, self.notes

    def placeholders(self) -> None:
        from torch.export.graph_signature import InputKind

        specs = {
            spec.arg.name: spec for spec in self.ep.graph_signature.input_specs if hasattr(spec.arg, "name")
        }
        for node in self.ep.graph.nodes:
            if node.op != "placeholder":
                continue
            spec = specs.get(node.name)
            if spec is None or spec.kind == InputKind.USER_INPUT:
                new = self.graph.placeholder(node.name)
                new.meta["tensor_meta"] = _tensor_meta(node.meta.get("val"))
                self.env[node] = new
            elif spec.kind in (
                InputKind.PARAMETER,
                InputKind.BUFFER,
                InputKind.CONSTANT_TENSOR,
                InputKind.CUSTOM_OBJ,
            ):
                value = self.lifted_value(spec.target, spec.kind)
                self.lifted[node] = (self.attr_target(spec.target, value), value)
            else:
                raise NotImplementedError(f"exported input {node.name} of kind {spec.kind.name}")

    def lifted_value(self, target: str, kind: Any) -> Any:
        """The model's own object for a lifted input (so that identity checks against modules work)."""
        try:
            return self.model.get_parameter(target)
        except AttributeError:
            pass
        try:
            return self.model.get_buffer(target)
        except AttributeError:
            pass
        if target in self.ep.constants:
            return self.ep.constants[target]
        return self.ep.state_dict[target]

    def attr_target(self, target: str, value: Any) -> str:
        """The ``get_attr`` target of a lifted tensor: its qualified name, or ``_lifted_<name>``."""
        if id(value) in self.tensor_names:
            return self.tensor_names[id(value)]
        owner_path, _, attr = target.rpartition(".")
        try:
            if getattr(self.model.get_submodule(owner_path), attr) is value:
                return target
        except AttributeError:
            pass
        base = target.replace(".", "_")
        return self.fresh_name("_" + base if base.startswith("lifted_") else "_lifted_" + base)

    def fresh_name(self, base: str) -> str:
        name, k = base, 0
        while name in self.reserved or hasattr(self.model, name):
            k += 1
            name = f"{base}_{k}"
        self.reserved.add(name)
        return name

    # ------------------------------------------------------------------------------- values
    def attr(self, node: fx.Node) -> fx.Node:
        target, value = self.lifted[node]
        if target not in self.attr_nodes:
            new = self.graph.get_attr(target)
            new.meta["tensor_meta"] = _tensor_meta(value)
            self.attr_nodes[target] = new
            self.root[target] = value
            self.read_outside.add(target)
        return self.attr_nodes[target]

    def value(self, x: Any) -> Any:
        """``x`` (args of an exported node) with the exported nodes replaced by the rewritten ones."""

        def one(n: fx.Node) -> Any:
            if n in self.lifted:
                return self.attr(n)
            new = self.env[n]
            if isinstance(new, _First) or new is None:
                raise NotImplementedError(f"`{n.name}` is a dropped or tuple value used directly")
            return new

        return fx.node.map_arg(x, one)

    def tensor_of(self, x: Any) -> Any:
        """The lifted tensor an argument is (``None`` for ``None``, a sentinel for anything else)."""
        if x is None:
            return None
        if isinstance(x, fx.Node) and x in self.lifted:
            return self.lifted[x][1]
        return _NOT_LIFTED

    def emit(self, old: fx.Node, call: _Call, first: bool = False) -> fx.Node:
        op, target, args, kwargs = call
        name = None if op == "call_module" else old.name
        new = self.graph.create_node(op, target, args, kwargs, name=name)
        val = old.meta.get("val")
        if first and isinstance(val, (list, tuple)):
            val = val[0]
        new.meta["tensor_meta"] = _tensor_meta(val)
        if "nn_module_stack" in old.meta:
            new.meta["nn_module_stack"] = old.meta["nn_module_stack"]
        return new

    # ------------------------------------------------------------------------------- nodes
    def call_function(self, node: fx.Node) -> None:
        target = node.target
        if target is operator.getitem and isinstance(self.env.get(node.args[0]), _First):
            self.env[node] = self.env[node.args[0]].node if node.args[1] == 0 else None
            return
        if not isinstance(target, torch._ops.OpOverload):  # getitem, higher-order ops, symbolic ints
            if isinstance(target, torch._ops.HigherOrderOperator):
                self.higher_order[target.name()] += 1
            self.env[node] = self.emit(
                node, ("call_function", target, self.value(node.args), self.value(node.kwargs))
            )
            return
        name = target._schema.name.split("::")[-1]
        if name in _ASSERTS and not node.users:
            return
        bound = _bind(node)
        module_call = self.module_op(node, name, bound)
        if module_call is not None:
            new = self.emit(node, module_call, first=name in _TUPLE_NORMS)
            self.env[node] = _First(new) if name in _TUPLE_NORMS else new
            return
        call = self.torch_op(node, name, bound)
        if call is None:
            self.kept[str(target)] += 1
            call = ("call_function", target, self.value(node.args), self.value(node.kwargs))
        self.env[node] = self.emit(node, call)

    def output(self, node: fx.Node) -> None:
        from torch.export.graph_signature import OutputKind

        flat = node.args[0]
        specs = self.ep.graph_signature.output_specs
        user = [v for v, spec in zip(flat, specs) if spec.kind == OutputKind.USER_OUTPUT]
        dropped = [spec.target for spec in specs if spec.kind != OutputKind.USER_OUTPUT]
        if dropped:
            self.notes.append(
                f"mutated buffers/inputs not returned as outputs: {', '.join(map(str, dropped))}"
            )
        values = [self.value(v) if isinstance(v, fx.Node) else v for v in user]
        out_spec = self.ep.call_spec.out_spec
        in_spec = self.ep.call_spec.in_spec
        try:
            from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

            names = [n.name for n in self.graph.nodes if n.op == "placeholder"]
            self.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(names, in_spec, out_spec))
            new = self.graph.output(tuple(values))
        except Exception as err:  # noqa: BLE001 - private API: fall back to a plain return
            self.graph._codegen = fx.graph.CodeGen()
            self.notes.append(f"returns a flat tuple, not the model's output structure ({_describe(err)})")
            new = self.graph.output(values[0] if len(values) == 1 else tuple(values))
        new.meta["tensor_meta"] = _tensor_meta(
            [v.meta.get("val") if isinstance(v, fx.Node) else v for v in user]
        )

    # ------------------------------------------------------------------------------- module ops
    def owner(
        self, node: fx.Node, kind: type[nn.Module] | tuple[type[nn.Module], ...]
    ) -> tuple[str, Any] | None:
        """The innermost module that issued ``node``, if it is a ``kind`` running its own ``forward``."""
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return None
        path = list(stack.values())[-1][0]
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        base = next((k for k in kinds if isinstance(module, k)), None)
        if base is None or not _module_forward_is(module, base) or id(module) not in self.modules_by_id:
            return None
        return self.modules_by_id[id(module)], module

    def same(self, arg: Any, tensor: Any) -> bool:
        """The exported argument ``arg`` is the module's tensor ``tensor`` (both ``None`` counts)."""
        return self.tensor_of(arg) is tensor

    def tuple_users_ok(self, node: fx.Node) -> bool:
        """Every user of a tuple-returning op reads output 0 (the others are unused)."""
        return all(u.target is operator.getitem and (u.args[1] == 0 or not u.users) for u in node.users)

    def module_op(self, node: fx.Node, name: str, b: dict[str, Any]) -> _Call | None:
        """``call_module`` of the module whose one op ``node`` is, or ``None``."""
        found: tuple[str, Any] | None = None
        source = b.get("input")
        if name == "linear":
            found = self.owner(node, nn.Linear)
            ok = found and self.same(b["weight"], found[1].weight) and self.same(b["bias"], found[1].bias)
        elif name in ("conv1d", "conv2d", "conv3d") or (name == "convolution" and not b["transposed"]):
            n = int(name[4]) if name != "convolution" else len(self.shape_of(b["weight"])) - 2
            found = self.owner(node, _CONVS.get(n, ()))
            ok = found and self.conv_matches(found[1], b, n, transposed=False)
        elif name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d") or (
            name == "convolution" and b["transposed"]
        ):
            n = int(name[14]) if name != "convolution" else len(self.shape_of(b["weight"])) - 2
            found = self.owner(node, _CONV_TRANSPOSES.get(n, ()))
            ok = found and self.conv_matches(found[1], b, n, transposed=True)
        elif name in ("batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training"):
            found = self.owner(node, nn.modules.batchnorm._BatchNorm)
            m = found[1] if found else None
            training = b.get("training", False)
            ok = (
                m is not None
                and self.same(b["weight"], m.weight)
                and self.same(b["bias"], m.bias)
                and self.same(b["running_mean"], m.running_mean)
                and self.same(b["running_var"], m.running_var)
                and training == (m.running_mean is None and m.running_var is None)
                and b["eps"] == m.eps
            )
        elif name in ("layer_norm", "native_layer_norm"):
            found = self.owner(node, nn.LayerNorm)
            m = found[1] if found else None
            ok = (
                m is not None
                and tuple(b["normalized_shape"]) == tuple(m.normalized_shape)
                and self.same(b["weight"], m.weight)
                and self.same(b["bias"], m.bias)
                and b["eps"] == m.eps
            )
        elif name == "group_norm":
            found = self.owner(node, nn.GroupNorm)
            m = found[1] if found else None
            ok = (
                m is not None
                and b["num_groups"] == m.num_groups
                and self.same(b["weight"], m.weight)
                and self.same(b["bias"], m.bias)
                and b["eps"] == m.eps
            )
        elif name == "rms_norm" and hasattr(nn, "RMSNorm"):
            found = self.owner(node, nn.RMSNorm)
            m = found[1] if found else None
            ok = (
                m is not None
                and tuple(b["normalized_shape"]) == tuple(m.normalized_shape)
                and self.same(b["weight"], m.weight)
                and b["eps"] == m.eps
            )
        elif name == "embedding":
            found = self.owner(node, nn.Embedding)
            m = found[1] if found else None
            source = b["indices"]
            ok = (
                m is not None
                and m.max_norm is None
                and self.same(b["weight"], m.weight)
                and b["padding_idx"] == (-1 if m.padding_idx is None else m.padding_idx)
                and bool(b["scale_grad_by_freq"]) == m.scale_grad_by_freq
                and bool(b["sparse"]) == m.sparse
            )
        else:
            return None
        if not ok or not isinstance(source, fx.Node):
            return None
        if name in _TUPLE_NORMS and not self.tuple_users_ok(node):
            return None
        self.root[found[0]] = found[1]
        return ("call_module", found[0], (self.value(source),), {})

    def shape_of(self, arg: Any) -> tuple[int, ...]:
        val = self.tensor_of(arg)
        if isinstance(val, Tensor):
            return tuple(val.shape)
        meta = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        return tuple(meta.shape) if isinstance(meta, Tensor) else ()

    def conv_matches(self, m: nn.Module, b: dict[str, Any], n: int, transposed: bool) -> bool:
        if (
            m.padding_mode != "zeros"
            or not self.same(b["weight"], m.weight)
            or not self.same(b["bias"], m.bias)
        ):
            return False
        if _ntuple(b["stride"], n) != tuple(m.stride) or _ntuple(b["dilation"], n) != tuple(m.dilation):
            return False
        if b["groups"] != m.groups:
            return False
        padding = _ntuple(b["padding"], n)
        if padding != (m.padding if isinstance(m.padding, str) else tuple(m.padding)):
            return False
        if transposed or "output_padding" in b:
            return _ntuple(b.get("output_padding", 0), n) == tuple(m.output_padding)
        return True

    # ------------------------------------------------------------------------------- torch ops
    def torch_op(self, node: fx.Node, name: str, b: dict[str, Any]) -> _Call | None:
        """The torch-level call for an ATen op (see the module docstring), or ``None`` to keep it."""
        v = self.value
        fn, method = "call_function", "call_method"
        overload = node.target._overloadname
        base = name[:-1] if name.endswith("_") and not name.startswith("_") else name
        inplace = base != name
        x = b.get("self", b.get("input"))
        # ---- module ops outside their module: functional forms on get_attr nodes
        if name == "linear":
            return fn, F.linear, (v(x), v(b["weight"]), v(b["bias"])), {}
        if name in ("conv1d", "conv2d", "conv3d"):
            args = (b["weight"], b["bias"], b["stride"], b["padding"], b["dilation"], b["groups"])
            return fn, _CONV_FUNCTIONS[int(name[4])], (v(x), *v(args)), {}
        if name == "embedding":
            pad = None if b["padding_idx"] == -1 else b["padding_idx"]
            kwargs = {"scale_grad_by_freq": True} if b["scale_grad_by_freq"] else {}
            if b["sparse"]:
                kwargs["sparse"] = True
            return fn, F.embedding, (v(b["indices"]), v(b["weight"]), pad), kwargs
        if name == "layer_norm":
            return (
                fn,
                F.layer_norm,
                (v(x), tuple(b["normalized_shape"]), *v((b["weight"], b["bias"])), b["eps"]),
                {},
            )
        if name == "group_norm":
            return fn, F.group_norm, (v(x), b["num_groups"], *v((b["weight"], b["bias"])), b["eps"]), {}
        if name == "batch_norm":
            args = (b["running_mean"], b["running_var"], b["weight"], b["bias"])
            return fn, F.batch_norm, (v(x), *v(args), b["training"], b["momentum"], b["eps"]), {}
        # ---- elementwise arithmetic
        if base in _ARITHMETIC:
            other = b["other"]
            if inplace:
                kwargs = {"alpha": b["alpha"]} if b.get("alpha", 1) != 1 else {}
                if b.get("rounding_mode") is not None:
                    kwargs["rounding_mode"] = b["rounding_mode"]
                return method, name, (v(x), v(other)), kwargs
            if base in ("add", "sub") and b.get("alpha", 1) != 1:
                return fn, getattr(torch, base), (v(x), v(other)), {"alpha": b["alpha"]}
            if base == "div" and b.get("rounding_mode") is not None:
                return fn, torch.div, (v(x), v(other)), {"rounding_mode": b["rounding_mode"]}
            return fn, _ARITHMETIC[base], (v(x), v(other)), {}
        if name == "rsub":
            if b.get("alpha", 1) != 1:
                return fn, torch.rsub, (v(x), v(b["other"])), {"alpha": b["alpha"]}
            return fn, operator.sub, (v(b["other"]), v(x)), {}
        # ---- activations
        if base == "gelu" and not inplace:
            kwargs = {} if b["approximate"] == "none" else {"approximate": b["approximate"]}
            return fn, F.gelu, (v(x),), kwargs
        if base == "elu" and b["scale"] == 1 and b["input_scale"] == 1:
            return fn, F.elu, (v(x), b["alpha"]), {"inplace": True} if inplace else {}
        if base in _ACTIVATIONS:
            function, extra, has_inplace = _ACTIVATIONS[base]
            args = (v(x), *(b[k] for k in extra))
            if not inplace:
                return fn, function, args, {}
            if has_inplace:
                return fn, function, args, {"inplace": True}
            if hasattr(Tensor, name):
                return method, name, args, {}
            return None
        if base == "dropout":
            return fn, F.dropout, (v(x), b["p"], b["train"]), {"inplace": True} if inplace else {}
        if name in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
            kind = "log_softmax" if "log" in name else "softmax"
            kwargs = {}
            if name.startswith("_") and b["half_to_float"]:
                kwargs = {"dtype": torch.float32}
            elif not name.startswith("_") and b.get("dtype") is not None:
                kwargs = {"dtype": b["dtype"]}
            return method, kind, (v(x), b["dim"]), kwargs
        # ---- shapes
        if name in ("view", "reshape", "_unsafe_view") and overload in ("default", ""):
            shape = b.get("size", b.get("shape"))
            return method, "reshape", (v(x), *v(list(shape))), {}
        if name == "permute":
            return method, "permute", (v(x), *b["dims"]), {}
        if name == "expand":
            return method, "expand", (v(x), *v(list(b["size"]))), {}
        if name == "squeeze":
            if overload == "dim":
                return method, "squeeze", (v(x), b["dim"]), {}
            if overload == "dims":
                return method, "squeeze", (v(x), tuple(b["dim"])), {}
            return method, "squeeze", (v(x),), {}
        if name in _SAME_METHODS and not inplace:
            schema = node.target._schema
            rest = [b[a.name] for a in schema.arguments[1:] if not a.kwarg_only]
            return method, _SAME_METHODS[name], (v(x), *v(rest)), {}
        if name == "contiguous":
            return method, "contiguous", (v(x),), {}
        if name == "clone":
            fmt = b.get("memory_format")
            if fmt == torch.contiguous_format:
                return method, "contiguous", (v(x),), {}
            return method, "clone", (v(x),), {} if fmt is None else {"memory_format": fmt}
        if name == "_to_copy" or (name == "to" and overload in ("dtype", "device", "dtype_layout", "other")):
            if overload == "other":
                return method, "to", (v(x), v(b["other"])), {}
            kwargs = {k: b[k] for k in ("device", "dtype") if b.get(k) is not None}
            fmt = b.get("memory_format")
            if fmt is not None and fmt != torch.preserve_format:
                kwargs["memory_format"] = fmt
            return method, "to", (v(x),), kwargs
        if name in ("matmul", "bmm", "mm"):
            return fn, torch.matmul, (v(x), v(b.get("other", b.get("mat2")))), {}
        if name == "scaled_dot_product_attention":
            defaults = {
                "attn_mask": None,
                "dropout_p": 0.0,
                "is_causal": False,
                "scale": None,
                "enable_gqa": False,
            }
            kwargs = {k: v(b[k]) for k, d in defaults.items() if k in b and b[k] != d}
            return fn, F.scaled_dot_product_attention, (v(b["query"]), v(b["key"]), v(b["value"])), kwargs
        if name in ("mean", "sum") and overload in ("dim", "dim_IntList"):
            kwargs = {} if b.get("dtype") is None else {"dtype": b["dtype"]}
            if b["dim"] is None:
                return (fn, getattr(torch, name), (v(x),), kwargs) if not b["keepdim"] else None
            return fn, getattr(torch, name), (v(x), list(b["dim"]), b["keepdim"]), kwargs
        if name in ("mean", "sum") and overload == "default":
            return fn, getattr(torch, name), (v(x),), {} if b.get("dtype") is None else {"dtype": b["dtype"]}
        if name == "amax":
            return fn, torch.amax, (v(x), list(b["dim"]), b["keepdim"]), {}
        if name in ("cat", "stack"):
            return fn, getattr(torch, name), (v(list(b["tensors"])), b["dim"]), {}
        if name == "slice" and overload == "Tensor":
            val = x.meta.get("val") if isinstance(x, fx.Node) else None
            if not isinstance(val, Tensor):
                return None
            dim = b["dim"] % val.dim()
            start, end, step = b["start"], b["end"], b["step"]
            if isinstance(end, int) and end >= _INT64_MAX:
                end = None
            if start == 0:
                start = None
            if step == 1:
                step = None
            index = (slice(None),) * dim + (slice(v(start), v(end), v(step)),)
            return fn, operator.getitem, (v(x), index), {}
        # ---- pooling, resizing
        if name in _POOLS:
            schema = node.target._schema
            rest = [b[a.name] for a in schema.arguments[1:]]
            if name.startswith(("max_pool", "avg_pool")) and not rest[1]:
                rest[1] = None  # stride [] means: the kernel size
            return fn, _POOLS[name], (v(x), *rest), {}
        if name in _UPSAMPLES and overload == "vec":
            mode = _UPSAMPLES[name]
            kwargs = {"size": b["output_size"], "scale_factor": b["scale_factors"], "mode": mode}
            if mode != "nearest":
                kwargs["align_corners"] = b["align_corners"]
            return fn, F.interpolate, (v(x),), kwargs
        return None


_NOT_LIFTED = object()

__all__ = ["METHODS", "TracedGraph", "trace_graph"]
