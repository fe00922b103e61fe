"""The PT2E backend (``"pt2e"``, engine ``"x86"``): ``torch.export`` + torchao's PT2E quantization.

The maintained int8 stack of torch (eager ``torch.ao.quantization`` is deprecated): the model is captured
whole by ``torch.export``, torchao's ``X86InductorQuantizer`` annotates the captured graph by pattern (conv,
linear, matmul, residual adds, concatenations, pooling) and ``prepare_pt2e``/``prepare_qat_pt2e`` insert
observers or fake quantization; ``convert_pt2e`` gives a graph of int8 weights between
``quantize_per_tensor``/``dequantize`` nodes, which :func:`lower` compiles into oneDNN int8 kernels
(``torch.compile``, inductor, weight prepacking by freezing). Unlike the eager backend it needs no change to
the model: residual ``+``, ``torch.cat``, squeeze-excitation, depthwise convolutions and transformer linears
quantize as they are written.

PT2E needs an **example input** to capture the model: pass it to the constructor
(``Pt2eBackend(example_input=x)``) or later with :meth:`Pt2eBackend.set_example_input`. A callback builds the
backend with ``create_backend("pt2e", engine)`` (which passes only the engine) and calls ``set_example_input``
with the input of its first training (QAT) or calibration (PTQ) batch before
:meth:`~Pt2eBackend.prepare_qat_module` or :meth:`~Pt2eBackend.prepare_ptq`; the callbacks do not do it yet.

The batch dimension is captured as dynamic (``torch.export.Dim``) where export allows it; where it does not,
the capture is static (the int8 model then runs at the example's batch size only) and the reason is in
:attr:`Pt2eCapture.note`. An example of batch size 1 is repeated to 2 for the capture (export specializes
size-1 dimensions).

What PT2E cannot do in place: a captured model is a new ``torch.fx.GraphModule``; QAT therefore returns a
new module (:meth:`Pt2eBackend.prepare_qat_module`) instead of changing the given one. It shares the
float model's ``nn.Parameter`` objects (an optimizer built on them keeps updating them), but the caller must
put it where the float model was. :meth:`Pt2eBackend.prepare_qat` (the in-place method of the interface)
refuses with that explanation.

The models this module returns are :class:`Pt2eModule` wrappers (child ``pt2e_graph``): ``train()`` and
``eval()`` switch the captured batch norms and dropouts (which ``nn.Module.train`` cannot do on a captured
graph), and they pickle and deep-copy.

The deploy file (:meth:`Pt2eBackend.export`, ``.pt2``) is a ``torch.export`` program holding int8 weights
only, loadable by ``torch.export.load`` in a process that has only torch (the quantize/dequantize nodes are
written as core aten arithmetic unless ``portable=False``), with the input preprocessing in its metadata
and a SHA-256 of every record that :meth:`Pt2eBackend.load` checks.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import io
import json
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.functional.quantization._quiet import quiet_cpu_compiler_import
from lightning_optim.functional.quantization.backend import (
    QuantizationBackend,
    QuantizationError,
    register_backend,
)
from lightning_optim.functional.quantization.fusion import FusionPlan, quantizable_layers
from lightning_optim.layers.attention import unpack_attention
from lightning_optim.paths import user_file

#: the child of :class:`Pt2eModule` that holds the captured graph (and the state-dict key part that only a
#: PT2E-prepared or converted model has)
PT2E_GRAPH = "pt2e_graph"
#: the metadata record of a ``.pt2`` deploy file (``torch.export.load(path, extra_files={METADATA_FILE: ""})``)
METADATA_FILE = "lightning_optim.json"
#: the record with the SHA-256 of every other record of the archive
INTEGRITY_FILE = "lightning_optim_integrity.json"
#: the value of ``"format"`` in the metadata
DEPLOY_FORMAT = "lightning_optim.pt2e.v1"
#: the input-preprocessing keys a caller may put in the metadata
METADATA_KEYS: tuple[str, ...] = ("mean", "std", "pixel_scale", "input_shape", "class_names", "channels_from")
#: how the quantize/dequantize nodes are written in a deploy file
REPRESENTATIONS: tuple[str, ...] = ("aten", "quantized_decomposed")
#: how to install torchao
TORCHAO_HINT = "pip install 'torchao>=0.18,<0.19' (a dependency of lightning-optim)"

_LOG = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- torchao
@contextmanager
def _quiet_torchao() -> Iterator[None]:
    """Silence the notices torchao's own import and passes emit (nothing the user can act on).

    torchao 0.18 registers an ``Enum`` as a pytree constant at import, which torch 2.14 logs as deprecated on
    the ``torch.utils._pytree`` logger; the PT2E passes warn about ``torch.ao`` internals they still use.
    """
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in (
                r".*register_constant\(\) on Enum subclasses is deprecated.*",
                r"torch\.ao\.quantization is deprecated.*",
                r".*quantized tensor creation functions.*",
                r".*is deprecated and will be removed.*torch\.ao.*",
            ):
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        pytree_log.setLevel(level)


class _Torchao:
    """The torchao PT2E names this module uses, imported once on first use."""

    def __init__(self) -> None:
        try:
            with _quiet_torchao():
                quantize_pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
                x86 = importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
                pt2e = importlib.import_module("torchao.quantization.pt2e")
        except ImportError as err:  # pragma: no cover - torchao is a dependency
            raise ImportError(f"The PT2E quantization backend needs torchao: {TORCHAO_HINT}.") from err
        self.prepare_pt2e = quantize_pt2e.prepare_pt2e
        self.prepare_qat_pt2e = quantize_pt2e.prepare_qat_pt2e
        self.convert_pt2e = quantize_pt2e.convert_pt2e
        self.X86InductorQuantizer = x86.X86InductorQuantizer
        self.default_config = x86.get_default_x86_inductor_quantization_config
        self.FakeQuantizeBase = pt2e.FakeQuantizeBase
        self.ObserverBase = pt2e.ObserverBase
        self.enable_fake_quant = pt2e.enable_fake_quant
        self.disable_fake_quant = pt2e.disable_fake_quant
        self.disable_observer = pt2e.disable_observer
        self.enable_observer = pt2e.enable_observer


_TORCHAO: _Torchao | None = None


def torchao_pt2e() -> _Torchao:
    """torchao's PT2E functions (imported on first use, quietly).

    Raises:
        ImportError: torchao is not installed, with the command that installs it.
    """
    global _TORCHAO
    if _TORCHAO is None:
        _TORCHAO = _Torchao()
    return _TORCHAO


#: aten conv op of each conv function whose conv-bn QAT patterns torchao folds at conversion
_CONV_OPS = {
    "conv1d": "conv1d",
    "conv2d": "conv2d",
    "conv_transpose1d": "conv_transpose1d",
    "conv_transpose2d": "conv_transpose2d",
}
#: torchao's aten pattern graphs, by pattern and example shapes (they do not depend on the model)
_PATTERN_CACHE: dict[Any, Any] = {}


def _pattern_key(pattern: Any, example_inputs: Any, is_cuda: bool, kwargs: dict[str, Any]) -> Any:
    def spec(value: Any) -> Any:
        return (tuple(value.shape), value.dtype) if isinstance(value, Tensor) else value

    if isinstance(pattern, nn.Module) and callable(getattr(pattern, "fn", None)):
        pattern = pattern.fn  # torchao's WrapperModule around the pattern function
    try:
        cells = tuple(c.cell_contents for c in (getattr(pattern, "__closure__", None) or ()))
        key = (
            getattr(pattern, "__code__", pattern),
            cells,
            tuple(spec(v) for v in example_inputs),
            bool(is_cuda),
            tuple(sorted((k, spec(v)) for k, v in kwargs.items())),
        )
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


@contextmanager
def _fast_conv_bn_patterns() -> Iterator[None]:
    """Make torchao's conv-bn QAT pattern passes fast: each of its ~100 pattern graphs is captured once per
    process (a strict ``torch.export``, 0.3 s each here) instead of at every prepare/convert, and preparation
    and conversion skip the conv kinds (1-d, 2-d, transposed) the model does not have.

    The results are the same graphs; where torchao's private helpers are not where torchao 0.18 has them,
    nothing is changed.
    """
    try:
        qat_utils = importlib.import_module("torchao.quantization.pt2e.qat_utils")
    except ImportError:  # pragma: no cover - torchao is a dependency
        yield
        return
    build = getattr(qat_utils, "_get_aten_graph_module_for_pattern", None)
    fold = getattr(qat_utils, "_fold_conv_bn_qat_helper", None)
    fuse = getattr(qat_utils, "_fuse_conv_bn_qat_helper", None)
    if not callable(build) or not callable(fold) or not callable(fuse):  # pragma: no cover - another layout
        yield
        return

    def cached_build(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return build(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _PATTERN_CACHE:
            _PATTERN_CACHE[key] = build(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(_PATTERN_CACHE[key])

    def present_only(helper: Any) -> Any:
        """``helper(m, conv_fn, ...)`` skipped when ``m`` has no conv of ``conv_fn``'s kind (nothing to match)."""

        def run(m: Any, conv_fn: Any, example_inputs: Any, is_cuda: bool) -> Any:
            present = {_aten_name(n) for n in m.graph.nodes}
            op = _CONV_OPS.get(getattr(conv_fn, "__name__", ""))
            has_any = bool(present & set(_CONV_OPS.values()))
            if op is not None and op not in present and (has_any or op != "conv2d"):
                return m
            return helper(m, conv_fn, example_inputs, is_cuda)

        return run

    qat_utils._get_aten_graph_module_for_pattern = cached_build
    qat_utils._fold_conv_bn_qat_helper = present_only(fold)
    qat_utils._fuse_conv_bn_qat_helper = present_only(fuse)
    try:
        yield
    finally:
        qat_utils._get_aten_graph_module_for_pattern = build
        qat_utils._fold_conv_bn_qat_helper = fold
        qat_utils._fuse_conv_bn_qat_helper = fuse


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]


# ------------------------------------------------------------------------------------------- graph helpers
#: quantize/dequantize ops of the converted graph (``torch.ops.quantized_decomposed``)
QDQ_OP_NAMES: tuple[str, ...] = (
    "quantize_per_tensor",
    "dequantize_per_tensor",
    "quantize_per_channel",
    "dequantize_per_channel",
)
#: batch-norm ops with a ``training`` flag at argument 5
_BN_TRAINING_OPS = ("batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm", "miopen_batch_norm")


def _aten_name(node: torch.fx.Node) -> str:
    """``"batch_norm"`` for ``aten.batch_norm.default``; ``""`` for anything that is not an aten op."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return ""
    return target._schema.name.split("::", 1)[1] if target._schema.name.startswith("aten::") else ""


def quantized_op_counts(model: nn.Module) -> dict[str, int]:
    """How many quantize/dequantize nodes of each kind a converted graph has (``{}`` for a float model).

    Counts ``torch.ops.quantized_decomposed.*`` nodes (the PT2E reference representation) and oneDNN int8
    ops (``torch.ops.onednn.q*``) by their op name.
    """
    counts: dict[str, int] = {}
    for module in model.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            namespace, _, name = node.target._schema.name.partition("::")
            if (namespace == "quantized_decomposed" and name in QDQ_OP_NAMES) or (
                namespace == "onednn" and name.startswith("q")
            ):
                counts[name] = counts.get(name, 0) + 1
    return counts


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    path = list(stack.values())[-1][0]
    # ``L['self'].blocks[0].conv`` (strict export) or ``blocks.0.conv`` (non-strict)
    for prefix in ("L['self'].", "L__self__.", "L['self']"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    return path.replace("[", ".").replace("]", "").replace("'", "").lstrip(".") or node.name


def float_layers(converted: torch.fx.GraphModule) -> list[str]:
    """Module paths of the conv/linear nodes of a converted graph whose weight is not int8 (kept in float)."""
    left: list[str] = []
    for node in converted.graph.nodes:
        name = _aten_name(node)
        if name not in ("conv1d", "conv2d", "conv3d", "linear", "conv_transpose2d"):
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        producer = getattr(weight, "target", None)
        schema = getattr(producer, "_schema", None)
        if schema is None or not schema.name.startswith("quantized_decomposed::dequantize"):
            left.append(_module_path(node))
    return left


def _set_graph_training(graph_module: torch.fx.GraphModule, training: bool, freeze_bn: bool) -> None:
    """Switch the captured batch norms and dropouts of ``graph_module`` between train and eval behaviour.

    ``nn.Module.train`` cannot do it: the captured graph calls ``aten.batch_norm(..., training, ...)`` and
    ``aten.dropout(x, p, train)`` with the flag as a constant. ``freeze_bn`` keeps the batch norms in eval
    behaviour (running statistics used and no longer updated) while training.
    """
    changed = False
    for node in graph_module.graph.nodes:
        name = _aten_name(node)
        if name in _BN_TRAINING_OPS and len(node.args) > 5:
            flag = training and not freeze_bn
            if node.args[5] is not flag:
                node.args = (*node.args[:5], flag, *node.args[6:])
                changed = True
        elif name in ("dropout", "feature_dropout", "alpha_dropout") and len(node.args) > 2:
            if node.args[2] is not training:
                node.args = (*node.args[:2], training, *node.args[3:])
                changed = True
    if changed:
        graph_module.recompile()


def _unobserved(graph_module: nn.Module) -> list[str]:
    """Names of the observers of a prepared graph that never saw a batch (torchao would convert them with a
    default scale of 1.0, silently: a wrong model)."""
    names = []
    for name, module in graph_module.named_modules():
        low, high = getattr(module, "min_val", None), getattr(module, "max_val", None)
        if not isinstance(low, Tensor) or not isinstance(high, Tensor):
            continue
        if low.numel() == 0 or bool(torch.isinf(low).any()) or bool(torch.isinf(high).any()):
            names.append(name.replace(".activation_post_process", "") or "model")
    return names


def _strip_unused_state(graph_module: torch.fx.GraphModule) -> None:
    """Remove the parameters and buffers no node reads (``convert_pt2e`` leaves the float weights beside the
    folded int8 ones) and stop gradients on the rest."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name in used:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
        delattr(owner, leaf)
    for parameter in graph_module.parameters():
        parameter.requires_grad_(False)


def _graph_attr(graph_module: nn.Module, target: str) -> Any:
    value: Any = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def quantize_embedding_tables(
    graph_module: torch.fx.GraphModule, min_rows: int = 2, kept: list[str] | None = None
) -> list[str]:
    """Store the graph's embedding tables as int8 with one scale per row (weight-only quantization), in place.

    Each ``aten.embedding(weight, indices)`` whose float ``weight`` is read by that lookup only (not tied to an
    output projection) becomes ``embedding(weight_int8, indices).float() * embedding(row_scale, indices)``:
    only the looked-up rows are dequantized, so a lookup costs what it did. The scale of a row is its largest
    absolute value / 127 (symmetric, zero point 0; an all-zero row keeps scale 1), so the error of each value is
    at most half a step of its row. The float table is removed.

    Args:
        graph_module: a converted PT2E graph (``convert_pt2e``'s output).
        min_rows: tables with fewer rows are left in float (a 2-row token-type table saves nothing).
        kept: if given, receives ``"<table>: <reason>"`` for each embedding table left in float.

    Returns:
        The names of the tables quantized (their ``get_attr`` targets).
    """
    aten = torch.ops.aten
    graph = graph_module.graph
    done: list[str] = []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.embedding.default:
            continue
        weight_node = node.args[0]
        if not isinstance(weight_node, torch.fx.Node) or weight_node.op != "get_attr":
            continue
        if len(weight_node.users) != 1:
            if kept is not None:
                kept.append(f"{weight_node.target}: also read elsewhere (tied to an output projection)")
            continue
        weight = _graph_attr(graph_module, weight_node.target)
        if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() != 2:
            continue
        if weight.shape[0] < min_rows:
            if kept is not None:
                kept.append(f"{weight_node.target}: {weight.shape[0]} row(s), fewer than {min_rows}")
            continue
        with torch.no_grad():
            table = weight.detach().float()
            scale = table.abs().amax(dim=1, keepdim=True) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            values = torch.clamp(torch.round(table / scale), -127, 127).to(torch.int8)
        stem = weight_node.target.replace(".", "_")
        int8_name, scale_name = f"{stem}_int8", f"{stem}_row_scale"
        graph_module.register_buffer(int8_name, values)
        graph_module.register_buffer(scale_name, scale.to(weight.dtype))
        indices = node.args[1]
        with graph.inserting_before(node):
            int8_table = graph.get_attr(int8_name)
            row_scale = graph.get_attr(scale_name)
            rows = graph.call_function(aten.embedding.default, (int8_table, *node.args[1:]))
            scales = graph.call_function(aten.embedding.default, (row_scale, indices))
            as_float = graph.call_function(aten._to_copy.default, (rows,), {"dtype": weight.dtype})
            looked_up = graph.call_function(aten.mul.Tensor, (as_float, scales))
        looked_up.meta.update({k: v for k, v in node.meta.items() if k in ("stack_trace", "nn_module_stack")})
        node.replace_all_uses_with(looked_up)
        graph.erase_node(node)
        graph.erase_node(weight_node)
        owner_name, _, leaf = weight_node.target.rpartition(".")
        owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
        delattr(owner, leaf)
        done.append(weight_node.target)
    if done:
        graph.lint()
        graph_module.recompile()
    return done


def _allow_pickle(graph_module: nn.Module) -> None:
    """Make a captured graph picklable: drop the ``train``/``eval`` traps torchao binds on it (instance
    methods cannot be pickled; :class:`Pt2eModule` switches the graph itself) and export's tracer class."""
    for module in graph_module.modules():
        module.__dict__.pop("train", None)
        module.__dict__.pop("eval", None)
        if isinstance(module, torch.fx.GraphModule):
            # unpickling re-traces the generated code: export's module-stack tracer cannot be rebuilt there,
            # the plain fx tracer can
            module.__dict__.pop("_tracer_cls", None)
            module.__dict__.pop("_tracer_extras", None)


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class Pt2eCapture(FusionPlan):
    """How :meth:`Pt2eBackend.prepare_ptq`/:meth:`~Pt2eBackend.prepare_qat_module` captured the model.

    A :class:`~lightning_optim.functional.quantization.fusion.FusionPlan` (``summary()`` for the log): PT2E
    folds batch norms and fuses activations by pattern, so :attr:`groups` stays empty.

    Attributes:
        strict: whether ``torch.export`` ran in strict mode (TorchDynamo); non-strict is tried first.
        dynamic_batch: whether the batch dimension was captured as dynamic.
        batch_size: the captured batch size when it is static (``None`` when dynamic).
        note: what was tried and why the capture is what it is.
        excluded: module names kept in float (``exclude``).
    """

    strict: bool = False
    dynamic_batch: bool = True
    batch_size: int | None = None
    note: str = ""
    excluded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        mode = "strict" if self.strict else "non-strict"
        batch = "dynamic batch" if self.dynamic_batch else f"static batch {self.batch_size}"
        lines = [
            f"PT2E capture: torch.export ({mode}), {batch}; X86InductorQuantizer folds batch norms and fuses "
            "by pattern."
        ]
        if self.note:
            lines.append(f"  {self.note}")
        if self.excluded:
            lines.append(f"  kept in float: {', '.join(self.excluded)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the module
def _device_type(args: tuple[Any, ...]) -> str:
    return next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")


class Pt2eModule(nn.Module):
    """A captured (PT2E) model behind a plain ``nn.Module``: prepared for QAT (``kind="qat"``), observed for
    PTQ (``"ptq"``) or converted to int8 (``"int8"``).

    ``train(mode)`` also switches the captured batch norms and dropouts (of a QAT model; the others always
    compute in eval behaviour), keeping frozen batch norms frozen; the model deep-copies and pickles.

    Args:
        graph_module: the captured graph (from ``torch.export``, prepared or converted by torchao).
        kind: ``"qat"``, ``"ptq"`` or ``"int8"``.
        capture: how the model was captured.
        metadata: the deploy metadata (a model loaded from a ``.pt2`` file).
    """

    KINDS: tuple[str, ...] = ("qat", "ptq", "int8")
    #: the prefix of the captured network's parameter names (``pt2e_graph.conv1.weight``): callbacks that
    #: address parameters by their float-model names (pruning masks) strip it
    parameter_prefix: str = f"{PT2E_GRAPH}."

    def __init__(
        self,
        graph_module: nn.Module,
        kind: str,
        capture: Pt2eCapture | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("kind", kind, self.KINDS, kind="PT2E module")
        _allow_pickle(graph_module)
        self.add_module(PT2E_GRAPH, graph_module)
        self.kind = kind
        self.capture = capture if capture is not None else Pt2eCapture()
        self.metadata = dict(metadata or {})
        self.bn_frozen = False
        self.train(kind == "qat" and graph_module.training)

    def __getstate__(self) -> dict[str, Any]:
        # pickling a GraphModule re-traces its code and keeps neither its ``meta`` (where torchao marks an
        # observed graph) nor the nodes' metadata; the graph-level ``meta`` is carried here
        state = dict(self.__dict__)
        graph = self._modules.get(PT2E_GRAPH)
        state["_pt2e_graph_meta"] = dict(graph.meta) if isinstance(graph, torch.fx.GraphModule) else {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        meta = state.pop("_pt2e_graph_meta", {})
        super().__setstate__(state)
        graph = self._modules.get(PT2E_GRAPH)
        if isinstance(graph, torch.fx.GraphModule):
            graph.meta.update(meta)
            _allow_pickle(graph)

    @property
    def graph_module(self) -> nn.Module:
        """The captured graph (``torch.fx.GraphModule``)."""
        return getattr(self, PT2E_GRAPH)

    def _sync_graph_mode(self) -> None:
        # Lightning restores the modes of submodules after validation by setting ``module.training`` directly,
        # without ``train()``: the graph's batch-norm/dropout flags follow ``self.training`` here, at each call
        mode = (self.training and self.kind == "qat", self.bn_frozen)
        if self.__dict__.get("_graph_mode") != mode:
            graph = self.graph_module
            if isinstance(graph, torch.fx.GraphModule):
                _set_graph_training(graph, mode[0], freeze_bn=mode[1])
            self.__dict__["_graph_mode"] = mode

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._sync_graph_mode()
        if self.kind == "int8" or not torch.is_autocast_enabled(_device_type(args)):
            return self.graph_module(*args, **kwargs)
        # under bf16-mixed/16-mixed the fake quantization (and the captured float ops around it) runs in
        # float32, as the eager backend's Float32FakeQuantize does: the observers need float32 ranges
        with torch.autocast(_device_type(args), enabled=False):
            floats = [a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
            return self.graph_module(*floats, **kwargs)

    def train(self, mode: bool = True) -> Pt2eModule:
        super().train(mode)
        self._sync_graph_mode()
        return self

    def freeze_bn_stats(self) -> None:
        """Batch norms in eval behaviour from now on, also in training (running statistics frozen)."""
        self.bn_frozen = True
        self.train(self.training)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, {'dynamic batch' if self.capture.dynamic_batch else f'static batch {self.capture.batch_size}'}"


# ------------------------------------------------------------------------------------------- portable q/dq
def _quantize_per_tensor(
    x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: Any
):
    # as torch.ops.quantized_decomposed.quantize_per_tensor (round half to even, multiply by 1/scale)
    return torch.clamp(torch.round(x.float() * (1.0 / scale)) + zero_point, quant_min, quant_max).to(dtype)


def _quantize_per_tensor_tensor(x, scale, zero_point, quant_min, quant_max, dtype):
    inv = 1.0 / scale.reshape(())
    return torch.clamp(torch.round(x.float() * inv) + zero_point.reshape(()), quant_min, quant_max).to(dtype)


def _dequantize_per_tensor(q, scale, zero_point, quant_min, quant_max, dtype, *, out_dtype=None):
    return (q.to(out_dtype or torch.float32) - zero_point) * scale


def _dequantize_per_tensor_tensor(q, scale, zero_point, quant_min, quant_max, dtype, *, out_dtype=None):
    return (q.to(out_dtype or torch.float32) - zero_point.reshape(())) * scale.reshape(())


def _dequantize_per_channel(q, scales, zero_points, axis, quant_min, quant_max, dtype, *, out_dtype=None):
    shape = [1] * q.dim()
    shape[axis] = -1
    values = q - zero_points.view(shape) if zero_points is not None else q
    return (values * scales.view(shape)).to(out_dtype or torch.float32)


def _portable_decompositions() -> dict[Any, Any]:
    """``torch.ops.quantized_decomposed`` -> the same arithmetic in core aten ops (what ``torch`` alone loads)."""
    with _quiet_torchao():
        torchao_pt2e()  # registers the quantized_decomposed ops when torch no longer does
    ops = torch.ops.quantized_decomposed
    return {
        ops.quantize_per_tensor.default: _quantize_per_tensor,
        ops.quantize_per_tensor.tensor: _quantize_per_tensor_tensor,
        ops.dequantize_per_tensor.default: _dequantize_per_tensor,
        ops.dequantize_per_tensor.tensor: _dequantize_per_tensor_tensor,
        ops.dequantize_per_channel.default: _dequantize_per_channel,
    }


def _retarget_portable(graph_module: torch.fx.GraphModule) -> None:
    """Point the graph's ``quantized_decomposed`` calls at :func:`_portable_decompositions`' functions, in place:
    the one ``torch.export`` of the graph then records their core aten ops directly (the same program as
    ``run_decompositions`` of an export with those ops, without its second trace of the whole graph)."""
    table = _portable_decompositions()
    changed = False
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target in table:
            node.target = table[node.target]
            changed = True
    if changed:
        graph_module.recompile()


# ------------------------------------------------------------------------------------------- lowering
class LoweredInt8(nn.Module):
    """A converted int8 model compiled by inductor (:func:`lower`): call it like the model.

    The first call at each new input shape runs under ``torch._inductor.config.freezing=True`` (needed to
    prepack the int8 weights into oneDNN kernels; the setting is restored after the call); every call runs
    without autograd.

    Attributes:
        dynamic: whether one compile serves every batch size (``False``: one compile per input shape).
        note: why the compile is static, when it is.
    """

    def __init__(self, compiled: Any, source: nn.Module, dynamic: bool, note: str = "") -> None:
        super().__init__()
        self.compiled = compiled
        self.source = source
        self.dynamic = dynamic
        self.note = note
        self._seen: set[tuple[Any, ...]] = set()

    def forward(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, x.device.type, torch.is_inference_mode_enabled())
        with torch.no_grad():
            if key in self._seen:
                return self.compiled(x)
            with torch._inductor.config.patch(freezing=True), warnings.catch_warnings():
                # inductor's oneDNN lowering copies the weight zero points with torch.tensor(tensor)
                warnings.filterwarnings("ignore", message=r"To copy construct from a tensor")
                out = self.compiled(x)
            self._seen.add(key)
            return out


def _compile(module: nn.Module, dynamic: bool) -> Any:
    quiet_cpu_compiler_import()
    return torch.compile(module, dynamic=dynamic)


#: graphs whose dynamic-batch compile failed in this process: (their ops, the input's per-sample shape and dtype) ->
#: the failure's first line; :func:`lower` compiles such a graph per input shape at once (a failed dynamic compile
#: of a convolutional int8 model costs seconds, paid again at every call otherwise)
_DYNAMIC_FAILURES: dict[tuple[Any, ...], str] = {}


def _graph_key(graph: nn.Module, example: Tensor) -> tuple[Any, ...] | None:
    """What a failed dynamic compile is remembered by: the graph's call targets in order and the input's
    per-sample shape and dtype (``None`` for a module that is not a ``torch.fx`` graph)."""
    nodes = getattr(getattr(graph, "graph", None), "nodes", None)
    if nodes is None:
        return None
    ops = tuple(str(n.target) for n in nodes if n.op in ("call_function", "call_module", "call_method"))
    return ops, tuple(example.shape[1:]), str(example.dtype)


def lower(
    quantized: nn.Module, example: Tensor, dynamic: bool | None = None, tolerance: float = 0.05
) -> LoweredInt8:
    """Compile a converted PT2E int8 model with ``torch.compile`` (inductor, CPU) for speed.

    One compile with a dynamic batch is tried first (for a model captured with a dynamic batch) and checked
    at the example's batch size and at another one against the uncompiled model; when it fails or
    disagrees (torch 2.14's inductor fails some models above batch 1 with a stride assertion), the model is
    compiled per input shape instead (``dynamic=False``: one compile for each new batch size, up to
    ``torch._dynamo.config.recompile_limit`` shapes) with a :class:`UserWarning` that says why. A graph of the
    same ops and input shape whose dynamic compile failed before in this process is compiled per input shape at
    once (the warning says so).

    Args:
        quantized: the int8 model from :meth:`Pt2eBackend.convert` (or its ``graph_module``).
        example: an input batch (compiles and checks on it, outside any timing).
        dynamic: ``True``/``False`` to force one mode (no fallback for ``True``); ``None`` (default) as above.
        tolerance: the largest relative difference (``|compiled - uncompiled| / |uncompiled|``, L2 norms)
            allowed: oneDNN's int8 kernels requantize in integers and round differently from the converted
            graph's float reference arithmetic (about 1e-3 after a few layers); a broken compile is off by ~1.

    Returns:
        the compiled model (:class:`LoweredInt8`).

    Raises:
        QuantizationError: the per-shape compile fails too (or ``dynamic=True`` fails); the message has the
            compiler's error.
    """
    graph = quantized.graph_module if isinstance(quantized, Pt2eModule) else quantized
    captured_dynamic = quantized.capture.dynamic_batch if isinstance(quantized, Pt2eModule) else True
    x = example.detach().cpu()
    probes = [x]
    if captured_dynamic and x.dim() > 0:
        other = x.shape[0] + 1
        probes.append(torch.cat([x] * 2)[:other] if x.shape[0] > 0 else x)

    def check(lowered: LoweredInt8) -> None:
        for probe in probes:
            with torch.no_grad():
                expected = graph(probe)
                got = lowered(probe)
            scale = float(expected.norm()) or 1.0
            diff = float((got - expected).norm()) / scale
            if not diff <= tolerance:  # NaN fails too
                raise QuantizationError(
                    f"the compiled int8 model differs from the uncompiled one by {diff:.2e} (relative) at "
                    f"input shape {tuple(probe.shape)}"
                )

    note = ""
    key = _graph_key(graph, x)
    known = _DYNAMIC_FAILURES.get(key) if key is not None and dynamic is None else None
    if known is not None and captured_dynamic:
        note = (
            f"torch.compile(dynamic=True) of an int8 model of the same ops failed before in this process "
            f"({known}); compiled per input shape instead: one compile for each new batch size (up to "
            "torch._dynamo.config.recompile_limit shapes, then eager)."
        )
        warnings.warn(note, UserWarning, stacklevel=2)
    elif dynamic is not False and captured_dynamic:
        try:
            lowered = LoweredInt8(_compile(graph, dynamic=True), graph, dynamic=True)
            check(lowered)
            return lowered
        except Exception as err:  # noqa: BLE001 - the per-shape compile is the fallback
            if dynamic is True:
                raise QuantizationError(
                    f"torch.compile(dynamic=True) of the int8 model failed: {_first_line(err)}"
                ) from err
            if key is not None:
                _DYNAMIC_FAILURES[key] = _first_line(err, 200)
            note = (
                f"torch.compile(dynamic=True) of the int8 model failed ({_first_line(err, 200)}); compiled per "
                "input shape instead: one compile for each new batch size (up to "
                "torch._dynamo.config.recompile_limit shapes, then eager)."
            )
            warnings.warn(note, UserWarning, stacklevel=2)
            graph = copy.deepcopy(graph)  # a fresh code object: no cache entry of the failed compile
    elif not captured_dynamic:
        note = (
            f"the model was captured with a static batch of {quantized.capture.batch_size}: compiled for that "
            "input shape only."
        )
    try:
        lowered = LoweredInt8(_compile(graph, dynamic=False), graph, dynamic=False, note=note)
        probes = probes[:1] if not captured_dynamic else probes
        check(lowered)
    except QuantizationError:
        raise
    except Exception as err:  # noqa: BLE001 - reported with the cause
        raise QuantizationError(
            f"torch.compile of the int8 model failed ({_first_line(err)}); run the converted model uncompiled "
            "(it computes the same int8 arithmetic, slower) or export it (Pt2eBackend.export / export_onnx)."
        ) from err
    return lowered


# ------------------------------------------------------------------------------------------- the backend
class Pt2eBackend(QuantizationBackend):
    """PT2E quantization (``torch.export`` + torchao ``X86InductorQuantizer``), exported as a ``.pt2`` program.

    Args:
        engine: the kernel target, ``"x86"`` (oneDNN int8 kernels through inductor).
        example_input: an input batch to capture the model with (or :meth:`set_example_input` later).
        strict: ``torch.export`` strict mode: ``None`` (default) tries non-strict first, then strict (some
            graphs, torchvision's resnets among them, only annotate from a strict capture); ``True``/``False``
            forces one.
        dynamic_batch: capture the batch dimension as dynamic where export allows (``False``: static).
        exclude: module names (``model.named_modules()``) kept in float, e.g. a layer that loses too much
            accuracy in int8 or whose ops the quantizer cannot handle.
        reduce_range: 7-bit activations, for CPUs without VNNI (see torchao's x86 config).
        portable_export: write the deploy file's quantize/dequantize nodes as core aten arithmetic (loads with
            ``torch`` alone; ``False`` keeps ``torch.ops.quantized_decomposed``, which needs torchao or
            ``torch.ao.quantization.fx._decomposed`` imported before ``torch.export.load`` but compiles to
            int8 kernels after loading).
        compress_export: deflate the deploy file's records (``torch.export.load`` reads them as they are).
        quantize_embeddings: store embedding tables (``nn.Embedding``, e.g. a transformer's token and position
            embeddings, which the x86 quantizer leaves in float) as int8 with one scale per row after
            :meth:`convert` (weight-only: the looked-up rows are dequantized, ``int8 row * row scale``; see
            :func:`quantize_embedding_tables`). ``False`` keeps them in float.
    """

    name = "pt2e"
    engines = ("x86",)
    file_format = "pt2"
    prepared_marker = PT2E_GRAPH
    #: PT2E cannot prepare a model in place for QAT (:meth:`prepare_qat_module` returns a new module)
    qat_in_place = False

    def __init__(
        self,
        engine: str = "x86",
        example_input: Tensor | None = None,
        strict: bool | None = None,
        dynamic_batch: bool = True,
        exclude: Sequence[str] = (),
        reduce_range: bool = False,
        portable_export: bool = True,
        compress_export: bool = True,
        quantize_embeddings: bool = True,
    ) -> None:
        self.engine = check_choice("engine", engine, self.engines, kind="PT2E")
        check_choice("strict", strict, (None, True, False), kind="PT2E")
        self.strict = strict
        self.dynamic_batch = bool(dynamic_batch)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        self.reduce_range = bool(reduce_range)
        self.portable_export = bool(portable_export)
        self.compress_export = bool(compress_export)
        self.quantize_embeddings = bool(quantize_embeddings)
        self.example_input: Tensor | None = None
        if example_input is not None:
            self.set_example_input(example_input)

    def set_example_input(self, example_input: Tensor) -> None:
        """The input batch the model is captured with (a tensor; its first dimension is the batch).

        Raises:
            TypeError: not a tensor.
        """
        if not isinstance(example_input, Tensor):
            raise TypeError(
                f"PT2E `example_input` must be a tensor (the model's input batch), got {type(example_input).__name__}."
            )
        self.example_input = example_input.detach()

    def describe(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, engine={self.engine!r}, file_format={self.file_format!r}, "
            f"strict={self.strict!r}, dynamic_batch={self.dynamic_batch})"
        )

    # ----------------------------------------------------------------------------------- capture
    def _example_for(self, model: nn.Module) -> Tensor:
        if self.example_input is None:
            raise QuantizationError(
                "The PT2E backend captures the model with torch.export and needs an example input: "
                "Pt2eBackend(example_input=x) or backend.set_example_input(x) with an input batch."
            )
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        return self.example_input.to(device)

    def _quantizer(self, is_qat: bool) -> Any:
        ao = torchao_pt2e()
        config = ao.default_config(is_qat=is_qat, reduce_range=self.reduce_range)
        quantizer = ao.X86InductorQuantizer().set_global(config)
        for name in self.exclude:
            quantizer.set_module_name_qconfig(name, None)
        return quantizer

    def _check_model(self, model: nn.Module) -> None:
        if self.is_prepared(model):
            raise QuantizationError(f"{type(model).__name__} is already prepared for quantization.")
        if not quantizable_layers(model):
            raise QuantizationError(
                f"{type(model).__name__} has no quantizable layer (nn.Conv1d/2d/3d or nn.Linear): nothing to quantize."
            )
        names = {n for n, _ in model.named_modules()}
        for name in self.exclude:
            check_choice("exclude", name, sorted(n for n in names if n), kind="PT2E")
        for name, module in model.named_modules():
            if hasattr(module, "weight_orig") or hasattr(module, "parametrizations"):
                raise QuantizationError(
                    f"Module {name or type(model).__name__!r} has a weight reparametrization (torch.nn.utils.prune "
                    "or parametrize). Make it permanent first (torch.nn.utils.prune.remove / "
                    "torch.nn.utils.parametrize.remove_parametrizations)."
                )

    def _export(self, model: nn.Module, x: Tensor, strict: bool) -> tuple[Any, bool, list[str], str]:
        """``torch.export`` of ``model`` in one mode: ``(program, dynamic batch, notes, error)``. With a capture
        cache set (``_capture_cache``, a dict: the mixed-precision planner's, for many preparations of one
        model), each mode's program is made once and a deep copy returned."""
        cache = self.__dict__.get("_capture_cache")
        key = (strict, bool(self.dynamic_batch), tuple(x.shape), x.dtype)
        if cache is not None and key in cache:
            program, dynamic, notes, error = cache[key]
            return copy.deepcopy(program), dynamic, list(notes), error
        mode = "strict" if strict else "non-strict"
        dynamic = self.dynamic_batch and x.dim() > 0
        exported, notes, error = None, [], ""
        if dynamic:
            batch = torch.export.Dim("batch", min=1)
            wide = torch.cat([x, x]) if x.shape[0] == 1 else x  # export specializes size-1 dimensions
            try:
                with _quiet_torchao():
                    exported = torch.export.export(
                        model, (wide,), dynamic_shapes=({0: batch},), strict=strict
                    )
            except Exception as err:  # noqa: BLE001 - static capture is the fallback
                dynamic = False
                notes.append(
                    f"the batch dimension cannot be dynamic ({mode} export: {_first_line(err, 200)}); "
                    f"captured with a static batch of {x.shape[0]}: the int8 model runs at that batch size"
                )
        if exported is None:
            try:
                with _quiet_torchao():
                    exported = torch.export.export(model, (x,), strict=strict)
            except Exception as err:  # noqa: BLE001 - the next mode, else the refusal
                error = f"torch.export ({mode}): {_first_line(err)}"
        if cache is not None:
            cache[key] = (exported, dynamic, list(notes), error)
            exported = copy.deepcopy(exported)
        return exported, dynamic, notes, error

    def _capture(self, model: nn.Module, x: Tensor, is_qat: bool) -> tuple[torch.fx.GraphModule, Pt2eCapture]:
        """Export ``model`` and prepare it (observers or fake quantization); tries the export modes in turn."""
        ao = torchao_pt2e()
        modes = [self.strict] if self.strict is not None else [False, True]
        errors: list[str] = []
        notes: list[str] = []
        for strict in modes:
            mode = "strict" if strict else "non-strict"
            exported, dynamic, mode_notes, error = self._export(model, x, strict)
            notes.extend(mode_notes)
            if error:
                errors.append(error)
                continue
            try:
                with _quiet_torchao(), _fast_conv_bn_patterns():
                    # no `_guards_fn` submodule: it cannot be pickled
                    graph = exported.module(check_guards=False)
                    prepare = ao.prepare_qat_pt2e if is_qat else ao.prepare_pt2e
                    prepared = prepare(graph, self._quantizer(is_qat))
            except Exception as err:  # noqa: BLE001 - the next mode, else the refusal below
                errors.append(f"X86InductorQuantizer on the {mode} capture: {_first_line(err)}")
                continue
            if errors:
                notes.insert(0, f"after: {'; '.join(errors)}")
            capture = Pt2eCapture(
                traced=True,
                strict=bool(strict),
                dynamic_batch=dynamic,
                batch_size=None if dynamic else (int(x.shape[0]) if x.dim() > 0 else None),
                note="; ".join(notes),
                excluded=list(self.exclude),
            )
            if notes:
                _LOG.info("PT2E: %s", capture.note)
            return prepared, capture
        raise QuantizationError(
            f"The PT2E backend cannot capture {type(model).__name__}: {' | '.join(errors)}. "
            "Ways out: make the forward exportable (torch.export; data-dependent Python control flow and "
            "non-tensor outputs are the usual causes), keep the failing module out of quantization with "
            "`exclude=[...]`, or use `backend='eager'`."
        )

    # ----------------------------------------------------------------------------------- QAT
    def prepare_qat(self, model: nn.Module, fuse: bool = True) -> FusionPlan:
        """Not available: PT2E cannot prepare a model in place.

        Raises:
            NotImplementedError: always; use :meth:`prepare_qat_module`.
        """
        raise NotImplementedError(
            "The PT2E backend cannot prepare a model for QAT in place (torch.export captures a new graph "
            "module): use `prepared = backend.prepare_qat_module(model)`, put `prepared` where the model was and "
            "train it (its parameters are the model's own nn.Parameter objects)."
        )

    def prepare_qat_module(self, model: nn.Module) -> Pt2eModule:
        """A fake-quantized copy of the float ``model`` for QAT (``prepare_qat_pt2e`` on ``torch.export`` of
        the model in train mode), on the model's device, in train mode.

        PT2E cannot work in place, so the caller (the QAT callback) must:

        1. put the returned module where ``model`` was (``pl_module.model = prepared``); its state-dict keys are
           ``pt2e_graph.<the model's keys>`` plus the fake-quantization buffers
           (``pt2e_graph.activation_post_process_<i>.*``), so a checkpoint of it needs this preparation before
           ``load_state_dict`` (:attr:`prepared_marker` is ``"pt2e_graph"``);
        2. keep or rebuild the optimizers: the prepared module trains the model's own ``nn.Parameter`` objects
           (no new parameter), so an optimizer built on the float model keeps working; rebuild it when the
           parameter sets differ;
        3. not wrap it for DDP before this call (prepare before the strategy sets up the model).

        Args:
            model: the float model (left unchanged apart from sharing its parameters).

        Returns:
            the prepared :class:`Pt2eModule` (``kind="qat"``); its ``capture`` says how it was captured.

        Raises:
            QuantizationError: no example input, no quantizable layer, or a model that cannot be captured.
        """
        self._check_model(model)
        x = self._example_for(model)
        was_training = model.training
        model.train()
        try:
            prepared, capture = self._capture(model, x, is_qat=True)
        finally:
            model.train(was_training)
        packed = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
        if packed:  # QAT trains the network's own packed weight: its q/k/v slices are not annotated
            capture.note = "; ".join(
                filter(
                    None,
                    [
                        capture.note,
                        f"attention q/k/v projections stay float in QAT (packed in_proj_weight): {', '.join(packed)}; "
                        "PTQ quantizes them",
                    ],
                )
            )
            _LOG.warning("PT2E QAT: %s", capture.note)
        module = Pt2eModule(prepared, "qat", capture)
        return module.train()

    def is_prepared(self, model: nn.Module) -> bool:
        if isinstance(model, Pt2eModule):
            return model.kind in ("qat", "ptq")
        if not isinstance(model, torch.fx.GraphModule):
            return False
        ao = torchao_pt2e()
        return any(isinstance(m, (ao.FakeQuantizeBase, ao.ObserverBase)) for m in model.modules())

    def freeze_observers(self, model: nn.Module) -> None:
        ao = torchao_pt2e()
        model.apply(ao.disable_observer)

    def freeze_bn_stats(self, model: nn.Module) -> None:
        """Batch norms of a QAT model in eval behaviour from now on (also after ``train()``)."""
        for module in model.modules():
            if isinstance(module, Pt2eModule):
                module.freeze_bn_stats()

    def set_fake_quant(self, model: nn.Module, enabled: bool) -> None:
        ao = torchao_pt2e()
        model.apply(ao.enable_fake_quant if enabled else ao.disable_fake_quant)

    def observers_enabled(self, model: nn.Module) -> bool:
        """Whether any fake-quant module of ``model`` still updates its range."""
        ao = torchao_pt2e()
        return any(bool(m.observer_enabled[0]) for m in model.modules() if isinstance(m, ao.FakeQuantizeBase))

    # ----------------------------------------------------------------------------------- PTQ
    def prepare_ptq(self, model: nn.Module, fuse: bool = True) -> tuple[nn.Module, FusionPlan]:
        """A copy of the float ``model`` with observers (``prepare_pt2e`` on ``torch.export`` of the model in
        eval mode, on the CPU), ready for :meth:`calibrate`; ``model`` is left alone.

        Args:
            model: the float model.
            fuse: ignored: PT2E folds batch norms and fuses activations by pattern, always.

        Returns:
            ``(observed, capture)``: the :class:`Pt2eModule` (``kind="ptq"``) and the :class:`Pt2eCapture`.

        Raises:
            QuantizationError: no example input, no quantizable layer, or a model that cannot be captured.
        """
        self._check_model(model)
        copied = copy.deepcopy(model).cpu().eval()
        # nn.MultiheadAttention projects q/k/v with F.linear on slices of one packed weight, which the x86
        # quantizer leaves in float: the copy gets three nn.Linear layers instead (the same outputs)
        unpacked = unpack_attention(copied)
        x = self._example_for(copied)
        observed, capture = self._capture(copied, x, is_qat=False)
        if unpacked:
            capture.note = "; ".join(
                filter(
                    None,
                    [capture.note, f"q/k/v projections unpacked into Linear layers: {', '.join(unpacked)}"],
                )
            )
        return Pt2eModule(observed, "ptq", capture).eval(), capture

    # ----------------------------------------------------------------------------------- convert
    def convert(self, prepared: nn.Module) -> Pt2eModule:
        """The int8 model (CPU, eval mode): ``convert_pt2e(fold_quantize=True)`` of a copy of ``prepared``,
        without the float weights ``convert_pt2e`` leaves beside the int8 ones; ``prepared`` is left as it is.

        Raises:
            QuantizationError: ``prepared`` does not come from :meth:`prepare_ptq`/:meth:`prepare_qat_module`,
                or nothing was quantized.
        """
        if not isinstance(prepared, Pt2eModule) or not self.is_prepared(prepared):
            raise QuantizationError(
                "convert() needs a model prepared by Pt2eBackend.prepare_ptq() or prepare_qat_module(), got "
                f"{type(prepared).__name__}."
            )
        ao = torchao_pt2e()
        unobserved = _unobserved(prepared.graph_module)
        if unobserved:
            raise QuantizationError(
                f"convert: {len(unobserved)} quantization range(s) were never observed ({', '.join(unobserved[:3])}"
                f"{', ...' if len(unobserved) > 3 else ''}): run calibration batches (PTQ) or training batches "
                "(QAT) through the prepared model, with its observers on, before convert()."
            )
        graph = copy.deepcopy(prepared.graph_module).cpu()
        _set_graph_training(graph, False, freeze_bn=False)
        try:
            with _quiet_torchao(), _fast_conv_bn_patterns():
                converted = ao.convert_pt2e(graph, fold_quantize=True)
        except Exception as err:  # noqa: BLE001 - reported with the cause
            raise QuantizationError(f"convert_pt2e failed: {_first_line(err)}") from err
        _strip_unused_state(converted)
        capture = prepared.capture
        if getattr(self, "quantize_embeddings", True):  # backends pickled before the option: on
            kept: list[str] = []
            done = quantize_embedding_tables(converted, kept=kept)
            said = [f"embedding tables int8 (one scale per row): {', '.join(done)}"] if done else []
            said += [f"embedding tables kept float: {'; '.join(kept)}"] if kept else []
            if said:
                capture = copy.copy(capture)
                capture.note = "; ".join(filter(None, [capture.note, *said]))
        if not quantized_op_counts(converted):
            raise QuantizationError(
                "X86InductorQuantizer quantized nothing in this model (no conv/linear/matmul it supports, or all "
                f"of them excluded: {self.exclude}); use backend='eager' or leave it in float."
            )
        quantized = Pt2eModule(converted, "int8", capture)
        return quantized.eval()

    def check_int8_forward(self, prepared: nn.Module, example_input: Tensor) -> None:
        """Run ``example_input`` through a copy of ``prepared``, convert it and run the int8 model.

        Raises:
            QuantizationError: naming the failing stage, with the cause.
        """
        probe = copy.deepcopy(prepared).cpu().eval()
        x = example_input.detach().cpu()
        try:
            with torch.no_grad():
                probe(x)
        except Exception as err:  # noqa: BLE001 - reported with the cause
            raise QuantizationError(
                f"The PT2E-prepared model fails on the example input ({_first_line(err)}); a static capture "
                f"runs at its captured batch size only ({probe.capture.summary() if isinstance(probe, Pt2eModule) else ''})."
            ) from err
        quantized = self.convert(probe)
        try:
            with torch.no_grad():
                quantized(x)
        except Exception as err:  # noqa: BLE001 - reported with the cause
            raise QuantizationError(f"The converted PT2E int8 model fails ({_first_line(err)}).") from err

    def lower(self, quantized: nn.Module, example: Tensor | None = None) -> LoweredInt8:
        """:func:`lower` with this backend's example input by default."""
        x = example if example is not None else self.example_input
        if x is None:
            raise QuantizationError("lower() needs an example input (or Pt2eBackend(example_input=...)).")
        return lower(quantized, x)

    # ----------------------------------------------------------------------------------- export / load
    def export(
        self,
        quantized: nn.Module,
        path: str | Path,
        example_input: Tensor | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write the int8 model as a ``torch.export`` program (``.pt2``) that runs with torch alone.

        The file holds the int8 weights only (the float weights ``convert_pt2e`` keeps are dropped), the
        metadata record :data:`METADATA_FILE` (the caller's input preprocessing, see ``metadata``, plus the
        format, the batch mode, how to load it) and :data:`INTEGRITY_FILE` (the SHA-256 of every record,
        checked by :meth:`load`). Load it without this package::

            import torch
            meta = {"lightning_optim.json": ""}
            model = torch.export.load("model_int8.pt2", extra_files=meta).module()

        (``torch.export.load`` alone does not check the records' checksums: ``zipfile.ZipFile(path).testzip()``
        of the standard library does, or use :meth:`load`.)

        Args:
            quantized: the int8 model from :meth:`convert`.
            path: the file to write (its folder is created; an existing file is replaced).
            example_input: an input batch (default: the backend's example input); the program is checked
                against ``quantized`` on it.
            metadata: the input preprocessing, any of ``{"pixel_scale": 255.0, "mean": [...], "std": [...],
                "input_shape": [...], "class_names": [...]}``: the model input is ``(raw / pixel_scale - mean) /
                std`` per channel (``input_shape`` defaults to the example's shape without the batch);
                ``"channels_from"`` (e.g. ``"grey repeated to 3"``) says how raw images get the model's channels
                first.

        Raises:
            QuantizationError: not a converted PT2E model, or the saved program disagrees with it.
            ValueError: an unknown metadata key or inconsistent ``mean``/``std``.
        """
        if not isinstance(quantized, Pt2eModule) or quantized.kind != "int8":
            raise QuantizationError(
                f"export() needs the int8 model from Pt2eBackend.convert(), got {type(quantized).__name__}."
            )
        x = example_input if example_input is not None else self.example_input
        if x is None:
            raise QuantizationError("export() needs an example input (or Pt2eBackend(example_input=...)).")
        x = x.detach().cpu()
        info = _check_metadata(metadata, x)
        graph = copy.deepcopy(quantized.graph_module).cpu()
        _strip_unused_state(graph)
        if self.portable_export:
            _retarget_portable(graph)
        dynamic = quantized.capture.dynamic_batch
        capture_x = torch.cat([x, x]) if dynamic and x.dim() > 0 and x.shape[0] == 1 else x
        shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
        try:
            with _quiet_torchao():
                program = torch.export.export(graph, (capture_x,), dynamic_shapes=shapes, strict=False)
        except Exception as err:  # noqa: BLE001 - reported with the cause
            raise QuantizationError(f"torch.export of the int8 model failed: {_first_line(err)}") from err
        representation = "aten" if self.portable_export else "quantized_decomposed"
        left = [str(n.target) for n in program.graph.nodes if "quantized_decomposed" in str(n.target)]
        if self.portable_export and left:
            raise QuantizationError(
                f"quantize/dequantize ops left in the portable program: {sorted(set(left))}."
            )
        tensors = {**program.state_dict, **program.constants}
        int8 = sum(t.numel() for t in tensors.values() if isinstance(t, Tensor) and t.dtype == torch.int8)
        float_matrices = sorted(
            k
            for k, t in tensors.items()
            if isinstance(t, Tensor) and t.is_floating_point() and sum(d > 1 for d in t.shape) >= 2
        )  # matrices, not vectors stored as (n, 1) columns (the embeddings' row scales)
        with torch.no_grad():
            expected = quantized(x)
            got = program.module(check_guards=False)(x)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * (float(expected.abs().max()) or 1.0)):
            raise QuantizationError(
                f"the exported program disagrees with the int8 model (max difference "
                f"{float((got - expected).abs().max()):.3e}); not written."
            )
        info.update(
            {
                "format": DEPLOY_FORMAT,
                "backend": self.name,
                "engine": self.engine,
                "representation": representation,
                "dynamic_batch": dynamic,
                "batch_size": None if dynamic else int(x.shape[0]),
                "int8_values": int(int8),
                "float_matrices": float_matrices,
                "torch": torch.__version__.split("+")[0],
                "load": "torch.export.load(path).module()"
                if self.portable_export
                else "import torch.ao.quantization.fx._decomposed; torch.export.load(path).module()",
            }
        )
        program.example_inputs = (
            None  # torch.export.save would store the example batch (50 KB for 16 MNIST images)
        )
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(info, indent=1)})
        data = _seal_archive(buffer.getvalue(), compress=self.compress_export)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def load(self, path: str | Path, verify: bool = True) -> Pt2eModule:
        """Load what :meth:`export` wrote: the int8 model (:class:`Pt2eModule`, its ``metadata`` attribute
        holding the file's metadata).

        Args:
            path: the ``.pt2`` file.
            verify: check every record against its CRC-32 and the SHA-256 written by :meth:`export`.

        Raises:
            QuantizationError: a truncated, altered or foreign file (naming the record that differs), or one
                ``torch.export.load`` cannot read.
        """
        return load_pt2(path, verify=verify)


# ------------------------------------------------------------------------------------------- file helpers
def _check_metadata(metadata: dict[str, Any] | None, x: Tensor) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        check_choice("metadata key", key, METADATA_KEYS, kind="PT2E export")
        info[key] = list(value) if isinstance(value, (tuple, list)) else value
    if x.dim() > 0:
        info.setdefault("input_shape", [int(s) for s in x.shape[1:]])
    for key in ("mean", "std"):
        if key in info:
            info[key] = [float(v) for v in info[key]]
    if "pixel_scale" in info:
        info["pixel_scale"] = float(info["pixel_scale"])
        if not info["pixel_scale"] > 0:
            raise ValueError(f"PT2E export metadata: `pixel_scale` must be > 0, got {info['pixel_scale']}.")
    if "mean" in info and "std" in info and len(info["mean"]) != len(info["std"]):
        raise ValueError(
            f"PT2E export metadata: `mean` ({len(info['mean'])} values) and `std` ({len(info['std'])} values) "
            "must have one value per input channel each."
        )
    if any(v <= 0 for v in info.get("std", [])):
        raise ValueError(f"PT2E export metadata: every `std` value must be > 0, got {info['std']}.")
    if "class_names" in info:
        info["class_names"] = [str(c) for c in info["class_names"]]
    if "channels_from" in info:
        info["channels_from"] = str(info["channels_from"])
    return info


def _record_digests(archive: zipfile.ZipFile, skip: str | None = None) -> dict[str, str]:
    return {
        name: hashlib.sha256(archive.read(name)).hexdigest()
        for name in sorted(archive.namelist())
        if name != skip
    }


def _seal_archive(data: bytes, compress: bool) -> bytes:
    """The archive ``data`` rewritten (deflated when ``compress``) with :data:`INTEGRITY_FILE` added."""
    source = zipfile.ZipFile(io.BytesIO(data))
    names = source.namelist()
    metadata_name = next(n for n in names if n.endswith(f"/extra/{METADATA_FILE}"))
    integrity_name = metadata_name[: -len(METADATA_FILE)] + INTEGRITY_FILE
    digests = _record_digests(source)
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method, compresslevel=9 if compress else None) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
        target.writestr(integrity_name, json.dumps({"sha256": digests}, indent=0))
    return out.getvalue()


def read_pt2_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record of a ``.pt2`` deploy file (without loading the program).

    Raises:
        QuantizationError: not a complete zip archive, or no metadata record.
    """
    path = user_file(path, "path", what="a .pt2 deploy file")  # a FIFO would block the zip reader
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            if name is None:
                raise QuantizationError(
                    f"{path} has no {METADATA_FILE} record: not written by Pt2eBackend.export."
                )
            return json.loads(archive.read(name))
    except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError) as err:
        raise QuantizationError(
            f"{path} is not a complete .pt2 archive (truncated or altered?): {err}"
        ) from err


def verify_pt2(path: str | Path) -> dict[str, Any]:
    """Check every record of a ``.pt2`` deploy file (CRC-32 and the SHA-256 written at export); returns its
    metadata.

    Raises:
        QuantizationError: truncated, altered (naming the record), or written by something else.
    """
    path = user_file(path, "path", what="a .pt2 deploy file")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise QuantizationError(
                    f"{path}: record {bad!r} fails its CRC-32 check (the file was altered)."
                )
            names = archive.namelist()
            integrity = next((n for n in names if n.endswith(f"/extra/{INTEGRITY_FILE}")), None)
            if integrity is None:
                raise QuantizationError(
                    f"{path} has no {INTEGRITY_FILE} record: not written by Pt2eBackend.export (load it with "
                    "torch.export.load, or verify=False)."
                )
            expected = json.loads(archive.read(integrity))["sha256"]
            actual = _record_digests(archive, skip=integrity)
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        KeyError,
        json.JSONDecodeError,
        zipfile.LargeZipFile,
    ) as err:
        raise QuantizationError(
            f"{path} is not a complete .pt2 archive (truncated or altered?): {err}"
        ) from err
    except Exception as err:  # zlib.error and friends from a damaged record
        if isinstance(err, QuantizationError):
            raise
        raise QuantizationError(
            f"{path}: a record cannot be read ({_first_line(err)}): altered file."
        ) from err
    changed = sorted(n for n in set(expected) | set(actual) if expected.get(n) != actual.get(n))
    if changed:
        raise QuantizationError(
            f"{path}: records {changed} differ from those written at export (altered file)."
        )
    return read_pt2_metadata(path)


def load_pt2(path: str | Path, verify: bool = True) -> Pt2eModule:
    """Load a ``.pt2`` deploy file written by :meth:`Pt2eBackend.export` (see :meth:`Pt2eBackend.load`)."""
    path = user_file(path, "path", what="a .pt2 deploy file")
    metadata = verify_pt2(path) if verify else read_pt2_metadata(path)
    if metadata.get("representation") == "quantized_decomposed":
        torchao_pt2e()  # registers torch.ops.quantized_decomposed
    try:
        with _quiet_torchao():
            module = torch.export.load(str(path)).module(check_guards=False)
    except Exception as err:  # noqa: BLE001 - reported with the cause
        raise QuantizationError(f"torch.export.load cannot read {path}: {_first_line(err)}") from err
    capture = Pt2eCapture(
        traced=True,
        dynamic_batch=bool(metadata.get("dynamic_batch", True)),
        batch_size=metadata.get("batch_size"),
        note=f"loaded from {path.name}",
    )
    return Pt2eModule(module, "int8", capture, metadata=metadata).eval()


register_backend(Pt2eBackend.name, Pt2eBackend)

__all__ = [
    "DEPLOY_FORMAT",
    "INTEGRITY_FILE",
    "METADATA_FILE",
    "METADATA_KEYS",
    "PT2E_GRAPH",
    "LoweredInt8",
    "Pt2eBackend",
    "Pt2eCapture",
    "Pt2eModule",
    "float_layers",
    "load_pt2",
    "lower",
    "quantized_op_counts",
    "read_pt2_metadata",
    "torchao_pt2e",
    "verify_pt2",
]
