"""ONNX export of int8 (and float) models, and ONNX Runtime's own static QDQ quantization for comparison.

- :func:`export_onnx`: a PT2E int8 model (:meth:`Pt2eBackend.convert
  <lightning_optim.functional.quantization.pt2e.Pt2eBackend.convert>`) to ONNX with ``QuantizeLinear`` /
  ``DequantizeLinear`` (QDQ) nodes, through ``torch.onnx.export(..., dynamo=True)``: the converted graph's
  ``quantized_decomposed`` nodes map one to one onto QDQ nodes (int8 per-channel weights, uint8 activations),
  which ONNX Runtime fuses into its int8 kernels. A float model exports as float ONNX.
- :func:`quantize_onnx_static`: the float model exported to ONNX and quantized by ONNX Runtime itself
  (``onnxruntime.quantization.quantize_static``, QDQ format, per-channel int8 weights, uint8 activations,
  calibrated on the batches given): the reference the issue compares our int8 against.
- :func:`complete_qdq`: the residual additions such a file leaves in float (torchao's x86 quantizer keeps them
  for inductor's conv+add fusion) quantized with calibrated ranges, so that ONNX Runtime runs the whole network
  with its int8 kernels (a torchvision resnet18 at 28 px, batch 64: 45.9 -> 12.2 ms, ONNX Runtime's own QDQ
  file 12.2 ms);
- :func:`run_onnx` / :class:`OnnxRunner`: run a file in ONNX Runtime on torch tensors.

Both export functions write the input preprocessing (``mean``, ``std``, ``input_shape``, ``class_names``) into
the model's ``metadata_props`` (key :data:`ONNX_METADATA_KEY`, JSON), read back by :func:`read_onnx_metadata`.

``onnx``, ``onnxscript`` and ``onnxruntime`` are an optional extra: ``pip install 'lightning-optim[onnx]'``.
They are imported inside the functions only.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.functional.quantization.backend import QuantizationError
from lightning_optim.functional.quantization.pt2e import (
    Pt2eModule,
    _check_metadata,
    _first_line,
    _quiet_torchao,
    _strip_unused_state,
    quantized_op_counts,
)
from lightning_optim.paths import user_file

#: the install command of the optional extra
ONNX_EXTRA = "pip install 'lightning-optim[onnx]'"
#: the ``metadata_props`` key that holds the input preprocessing (JSON)
ONNX_METADATA_KEY = "lightning_optim"
#: the metadata key of the graph's SHA-256 (checked by :func:`verify_onnx` and :class:`OnnxRunner`)
DIGEST_KEY = "graph_sha256"
#: the ONNX opset written (QDQ with per-channel axis needs 13 or later)
DEFAULT_OPSET = 18


def _require(module: str) -> Any:
    """Import ``module`` (``onnx``, ``onnxscript``, ``onnxruntime``...) or say how to install the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export and ONNX Runtime need `{module.split('.')[0]}` (with onnx, onnxscript and onnxruntime): "
            f"{ONNX_EXTRA}."
        ) from err


def _graph_of(model: nn.Module) -> tuple[nn.Module, bool, bool]:
    """``(module to export, is int8, dynamic batch possible)``."""
    if isinstance(model, Pt2eModule):
        if model.kind != "int8":
            raise QuantizationError(
                f"export_onnx() takes a converted int8 model or a float one; this PT2E model is {model.kind!r}-"
                "prepared: convert it first (Pt2eBackend.convert)."
            )
        graph = copy.deepcopy(model.graph_module).cpu()
        _strip_unused_state(graph)
        return graph, True, model.capture.dynamic_batch
    if isinstance(model, torch.fx.GraphModule) and quantized_op_counts(model):
        graph = copy.deepcopy(model).cpu()
        _strip_unused_state(graph)
        return graph, True, True
    return copy.deepcopy(model).cpu().eval(), False, True


def graph_digest(model: Any) -> str:
    """SHA-256 of an ONNX model's graph (nodes, weights, inputs and outputs; not the metadata)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def _set_metadata(model: Any, info: dict[str, Any]) -> None:
    """Write ``info`` (with the graph's digest, :data:`DIGEST_KEY`) as the model's metadata record."""
    info = {**info, DIGEST_KEY: graph_digest(model)}
    kept = [(e.key, e.value) for e in model.metadata_props if e.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (ONNX_METADATA_KEY, json.dumps(info))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _add_metadata(path: Path, info: dict[str, Any]) -> None:
    onnx = _require("onnx")
    model = onnx.load(str(path))
    _set_metadata(model, info)
    onnx.save(model, str(path))


def verify_onnx(path: str | Path) -> dict[str, Any]:
    """Check an ONNX file written here against the graph digest in its metadata; returns the metadata.

    Raises:
        QuantizationError: the file cannot be parsed (truncated), or its graph (a weight, a node) differs from
            the one written (altered); files without a digest (not written by this package) pass unchecked.
    """
    onnx = _require("onnx")
    path = user_file(path, "path", what="an ONNX file")  # a FIFO would block onnx.load
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise QuantizationError(f"{path}: not a readable ONNX file ({_first_line(err)}).") from err
    info: dict[str, Any] = {}
    for entry in model.metadata_props:
        if entry.key == ONNX_METADATA_KEY:
            info = json.loads(entry.value)
    expected = info.get(DIGEST_KEY)
    if expected is not None and graph_digest(model) != expected:
        raise QuantizationError(
            f"{path}: the ONNX graph differs from the one written (SHA-256 mismatch): the file was altered or "
            "damaged; export it again."
        )
    return info


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: Tensor,
    dynamic_batch: bool = True,
    metadata: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` as ONNX: with QDQ nodes for a PT2E int8 model, as float ONNX for a float model.

    ``torch.onnx.export(model, (example_input,), dynamo=True)`` (the maintained exporter, onnxscript), then
    the metadata; the file is checked by ``onnx.checker``.

    Args:
        model: the int8 model from ``Pt2eBackend.convert`` (or its ``graph_module``), or a float model.
        path: the ``.onnx`` file to write (its folder is created; an existing file is replaced).
        example_input: an input batch.
        dynamic_batch: make the batch dimension dynamic (ignored, with a warning, for an int8 model captured
            with a static batch).
        metadata: the input preprocessing: any of ``mean``, ``std``, ``input_shape``, ``class_names``
            (``input_shape`` defaults to the example's shape without the batch).
        opset: the ONNX opset (QDQ per-channel weights need 13 or later).

    Returns:
        the path written.

    Raises:
        ImportError: onnx/onnxscript missing (with the extra to install).
        QuantizationError: the exporter fails (with the cause) or an int8 model exports without QDQ nodes.
        ValueError: a bad metadata key.
    """
    _require("onnx")
    _require("onnxscript")
    x = example_input.detach().cpu()
    info = _check_metadata(metadata, x)
    graph, is_int8, can_be_dynamic = _graph_of(model)
    if dynamic_batch and not can_be_dynamic:
        warnings.warn(
            "export_onnx: the int8 model was captured with a static batch; the ONNX file has that batch size.",
            UserWarning,
            stacklevel=2,
        )
    dynamic = dynamic_batch and can_be_dynamic and x.dim() > 0
    capture_x = torch.cat([x, x]) if dynamic and x.shape[0] == 1 else x
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_torchao(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*dynamic_axes.*|.*dynamo=True.*|.*onnxscript.*")
            program = torch.onnx.export(
                graph,
                (capture_x,),
                dynamo=True,
                dynamic_shapes=shapes,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001 - reported with the cause
        raise QuantizationError(
            f"torch.onnx.export (dynamo) of {'the int8' if is_int8 else 'the float'} model failed: "
            f"{_first_line(err)}"
        ) from err
    program.save(str(path))
    onnx = _require("onnx")
    proto = onnx.load(str(path))
    kinds = {node.op_type for node in proto.graph.node}
    if is_int8 and not {"QuantizeLinear", "DequantizeLinear"} <= kinds:
        raise QuantizationError(f"the ONNX export of the int8 model has no QDQ nodes (ops: {sorted(kinds)}).")
    info.update({"int8": is_int8, "format": "qdq" if is_int8 else "float", "dynamic_batch": bool(dynamic)})
    _add_metadata(path, info)
    onnx.checker.check_model(str(path))
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The input preprocessing and format written by :func:`export_onnx` or :func:`quantize_onnx_static`."""
    onnx = _require("onnx")
    path = user_file(path, "path", what="an ONNX file")
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == ONNX_METADATA_KEY:
            return json.loads(entry.value)
    return {}


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader`` over torch batches (its base class is added when
    the reader is built: it lives in onnxruntime)."""

    def __init__(self, input_name: str, batches: Iterable[Tensor]) -> None:
        self.input_name = input_name
        self.batches = [batch.detach().cpu().float().numpy() for batch in batches]
        self.position = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def quantize_onnx_static(
    model: nn.Module,
    path: str | Path,
    example_input: Tensor,
    calibration_batches: Iterable[Tensor],
    per_channel: bool = True,
    dynamic_batch: bool = True,
    metadata: dict[str, Any] | None = None,
    preprocess: bool = True,
) -> Path:
    """ONNX Runtime's own static QDQ quantization of the float ``model``.

    The float model is exported (:func:`export_onnx`), pre-processed (``quant_pre_process``: shape inference
    and graph optimization, as ONNX Runtime recommends; skipped when it fails) and quantized by
    ``onnxruntime.quantization.quantize_static`` in the QDQ format with int8 (per-channel) weights and uint8
    activations, calibrated (MinMax) on ``calibration_batches``.

    Args:
        model: the float model.
        path: the ``.onnx`` file to write.
        example_input: an input batch (for the export).
        calibration_batches: input batches for the activation ranges.
        per_channel: per-channel weight scales.
        dynamic_batch: dynamic batch dimension.
        metadata: the input preprocessing (as :func:`export_onnx`).
        preprocess: run ``quant_pre_process`` first.

    Returns:
        the path written.

    Raises:
        ImportError: the onnx extra is missing.
        QuantizationError: no calibration batch, or ONNX Runtime fails (with the cause).
    """
    quantization = _require("onnxruntime.quantization")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(
            model, Path(tmp) / "float.onnx", example_input, dynamic_batch=dynamic_batch, metadata=metadata
        )
        info = read_onnx_metadata(float_path)
        source = float_path
        if preprocess:
            prepared = Path(tmp) / "float_pre.onnx"
            try:
                shape_inference = _require("onnxruntime.quantization.shape_inference")
                shape_inference.quant_pre_process(str(float_path), str(prepared))
                source = prepared
            except Exception:  # noqa: BLE001 - pre-processing is an optimization only
                source = float_path
        onnxruntime = _require("onnxruntime")
        input_name = (
            onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        )
        reader_type = type(
            "TorchBatches", (_Batches, quantization.CalibrationDataReader), {}
        )  # onnxruntime checks the base class
        reader = reader_type(input_name, calibration_batches)
        if not reader.batches:
            raise QuantizationError("quantize_onnx_static: `calibration_batches` is empty.")
        try:
            quantization.quantize_static(
                str(source),
                str(path),
                reader,
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
            )
        except Exception as err:  # noqa: BLE001 - reported with the cause
            raise QuantizationError(f"onnxruntime quantize_static failed: {_first_line(err)}") from err
    info.update({"int8": True, "format": "qdq (onnxruntime quantize_static)"})
    _add_metadata(path, info)
    return path


def _float_inputs_of_adds(graph: Any) -> tuple[list[str], list[str]]:
    """``(tensors, adds)``: the float inputs of ``Add`` nodes that come from a ``Conv`` (the residual branch a
    PT2E x86 graph leaves unquantized for inductor's conv+add fusion), and the outputs of those adds that no
    ``QuantizeLinear`` reads (directly or after a ``Relu``)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def quantized_after(name: str) -> bool:
        users = consumers.get(name, [])
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            return True
        return len(users) == 1 and users[0].op_type == "Relu" and quantized_after(users[0].output[0])

    tensors: list[str] = []
    adds: list[str] = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        sources = [producers.get(name) for name in node.input]
        if not any(src is not None and src.op_type == "Conv" for src in sources):
            continue
        for name, src in zip(node.input, sources):
            if src is not None and src.op_type != "DequantizeLinear" and name not in tensors:
                tensors.append(name)
        if not quantized_after(node.output[0]):
            adds.append(node.output[0])
    return tensors, adds


def complete_qdq(
    path: str | Path, calibration_batches: Iterable[Tensor], out_path: str | Path | None = None
) -> list[str]:
    """Quantize the residual additions of a PT2E int8 CNN's ONNX file, calibrated, so that ONNX Runtime runs
    them (and the convolutions before them) with its int8 kernels.

    torchao's x86 quantizer leaves the output of a convolution that feeds a residual ``add`` in float (inductor
    fuses the add into the int8 convolution); ONNX Runtime cannot, so such a file runs those convolutions and
    adds in float (``FusedConv``), with layout changes around each: 2-3x slower than ONNX Runtime's own QDQ file
    of the same network. This pass inserts a ``QuantizeLinear``/``DequantizeLinear`` pair (uint8, per tensor,
    as the graph's other activations) on each float input of those adds (and on an add's output that nothing
    quantizes), with ranges measured (min/max) on ``calibration_batches`` run through the file; every range the
    PT2E graph already has (calibrated or learned in QAT) is kept as it is.

    Args:
        path: the ONNX file from :func:`export_onnx` of a PT2E int8 model.
        calibration_batches: input batches (as the model takes them).
        out_path: where to write the result (default: ``path``, replaced).

    Returns:
        The names of the tensors that got a quantize/dequantize pair (empty: nothing to do, file unchanged).

    Raises:
        QuantizationError: no calibration batch.
    """
    onnx = _require("onnx")
    numpy_helper = _require("onnx.numpy_helper")
    path = user_file(path, "path", what="an ONNX file")
    model = onnx.load(str(path))
    tensors, adds = _float_inputs_of_adds(model.graph)
    targets = tensors + [t for t in adds if t not in tensors]
    out_path = Path(out_path) if out_path is not None else path
    if not targets:
        if out_path != path:
            onnx.save(model, str(out_path))
        return []
    batches = [b.detach().cpu() for b in calibration_batches]
    if not batches:
        raise QuantizationError("complete_qdq: `calibration_batches` is empty.")
    probe = copy.deepcopy(model)
    for name in targets:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnxruntime = _require("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    low = {name: 0.0 for name in targets}
    high = {name: 0.0 for name in targets}
    for x in batches:
        values = session.run(targets, {input_name: x.numpy()})
        for name, value in zip(targets, values):
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    import numpy as np

    renamed: dict[str, str] = {}
    new_nodes = []
    for i, name in enumerate(targets):
        scale = max(high[name] - low[name], 1e-8) / 255.0
        zero_point = int(min(255, max(0, round(-low[name] / scale))))
        stem = f"lopt_qdq_{i}"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{stem}_scale"),
                numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), f"{stem}_zero_point"),
            ]
        )
        new_nodes.append(
            onnx.helper.make_node(
                "QuantizeLinear",
                [name, f"{stem}_scale", f"{stem}_zero_point"],
                [f"{stem}_q"],
                name=f"{stem}_quantize",
            )
        )
        new_nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{stem}_q", f"{stem}_scale", f"{stem}_zero_point"],
                [f"{stem}_dq"],
                name=f"{stem}_dequantize",
            )
        )
        renamed[name] = f"{stem}_dq"
    # every reader of a target reads its dequantized copy (an add's output: the nodes after the add)
    for node in model.graph.node:
        for j, name in enumerate(node.input):
            if name in renamed:
                node.input[j] = renamed[name]
    for output in model.graph.output:
        if output.name in renamed:  # a graph output stays the float tensor
            for node in model.graph.node:
                for j, name in enumerate(node.input):
                    if name == renamed[output.name] and node.name.endswith("_quantize"):
                        node.input[j] = output.name
    # insert each pair right after the node that produces its tensor (the graph stays topologically sorted)
    producer_index = {out: k for k, node in enumerate(model.graph.node) for out in node.output}
    nodes = list(model.graph.node)
    pairs = {targets[k]: new_nodes[2 * k : 2 * k + 2] for k in range(len(targets))}
    ordered = []
    for k, node in enumerate(nodes):
        ordered.append(node)
        for out in node.output:
            if out in pairs and producer_index.get(out) == k:
                ordered.extend(pairs[out])
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    info = next((json.loads(e.value) for e in model.metadata_props if e.key == ONNX_METADATA_KEY), {})
    info["format"] = f"qdq (PT2E int8 graph; {len(targets)} residual-add input(s) calibrated)"
    _set_metadata(model, info)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return targets


class OnnxRunner:
    """An ONNX Runtime session (CPU) called on torch tensors: ``OnnxRunner(path)(x) -> Tensor``.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: ONNX Runtime's default); inter-op runs sequentially.
        optimization: ONNX Runtime's graph optimization level: ``"all"`` (default), ``"extended"``,
            ``"basic"`` or ``"disabled"``.
        verify: check the file against the graph digest written with it (:func:`verify_onnx`) first.
    """

    OPTIMIZATIONS: tuple[str, ...] = ("all", "extended", "basic", "disabled")

    def __init__(
        self, path: str | Path, threads: int | None = None, optimization: str = "all", verify: bool = True
    ) -> None:
        from lightning_optim.checks import check_choice

        check_choice("optimization", optimization, self.OPTIMIZATIONS, kind="ONNX Runtime")
        onnxruntime = _require("onnxruntime")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        path = user_file(path, "path", what="an ONNX file")
        if verify:
            verify_onnx(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def run_onnx(path: str | Path, x: Tensor, threads: int | None = None) -> Tensor:
    """The output of the ONNX file at ``path`` on ``x`` in ONNX Runtime (CPU); one session per call (use
    :class:`OnnxRunner` for repeated calls)."""
    return OnnxRunner(path, threads=threads)(x)


def onnx_file_size(path: str | Path) -> int:
    """Bytes of an ONNX file and its external data files, if any."""
    path = Path(path)
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return total + (data.stat().st_size if data.is_file() else 0)


__all__ = [
    "DEFAULT_OPSET",
    "ONNX_EXTRA",
    "ONNX_METADATA_KEY",
    "OnnxRunner",
    "complete_qdq",
    "export_onnx",
    "onnx_file_size",
    "quantize_onnx_static",
    "read_onnx_metadata",
    "run_onnx",
    "verify_onnx",
]
