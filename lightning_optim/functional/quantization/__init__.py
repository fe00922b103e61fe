"""int8 quantization behind a small backend interface: QAT and PTQ preparation, conversion, export, report.

The callbacks (:mod:`lightning_optim.callbacks.quantization`) only use :class:`QuantizationBackend` and
:func:`export_quantized`. The *backend* is the stack (``"eager"``: eager ``torch.ao.quantization``, exported as
TorchScript; ``"pt2e"``: ``torch.export`` + torchao PT2E, exported as a ``.pt2`` program, :mod:`.pt2e`), the
*engine* the kernel target (``"x86"``, ``"fbgemm"``): ``create_backend("eager", engine="x86")``. ONNX export
(QDQ) and ONNX Runtime's own static quantization are in :mod:`.onnx` (the ``onnx`` extra).
"""

from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings
from lightning_optim.functional.quantization.backend import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_ENGINE,
    QuantizationBackend,
    QuantizationError,
    check_backend_name,
    check_engine,
    create_backend,
    register_backend,
    resolve_backend,
)
from lightning_optim.functional.quantization.eager import EagerBackend, Float32FakeQuantize
from lightning_optim.functional.quantization.export import (
    BACKEND_FORMATS,
    EXPORT_FORMATS,
    check_export_format,
    check_export_formats,
    export_file_path,
    export_format_of,
    export_quantized,
    unused_path,
)
from lightning_optim.functional.quantization.fusion import FusionPlan, find_fusion_groups, quantizable_layers
from lightning_optim.functional.quantization.mixed_precision import (
    MixedPrecisionPlan,
    check_plan_settings,
    choose_float_layers,
)
from lightning_optim.functional.quantization.onnx import (
    OnnxRunner,
    complete_qdq,
    export_onnx,
    quantize_onnx_static,
    read_onnx_metadata,
    run_onnx,
    verify_onnx,
)
from lightning_optim.functional.quantization.pt2e import (
    LoweredInt8,
    Pt2eBackend,
    Pt2eCapture,
    Pt2eModule,
    load_pt2,
    lower,
    quantized_op_counts,
    read_pt2_metadata,
    verify_pt2,
)
from lightning_optim.functional.quantization.report import (
    FP32_BEST_EFFORT,
    QuantizationReport,
    accuracy,
    format_report,
    measure_cpu_latency,
    quantization_report,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_ENGINE",
    "BACKEND_FORMATS",
    "EXPORT_FORMATS",
    "FP32_BEST_EFFORT",
    "EagerBackend",
    "Float32FakeQuantize",
    "FusionPlan",
    "LoweredInt8",
    "OnnxRunner",
    "Pt2eBackend",
    "Pt2eCapture",
    "Pt2eModule",
    "QuantizationBackend",
    "QuantizationError",
    "QuantizationReport",
    "accuracy",
    "check_backend_name",
    "check_engine",
    "check_export_format",
    "check_export_formats",
    "create_backend",
    "export_file_path",
    "unused_path",
    "export_format_of",
    "export_onnx",
    "export_quantized",
    "find_fusion_groups",
    "format_report",
    "load_pt2",
    "lower",
    "measure_cpu_latency",
    "quantizable_layers",
    "quantization_report",
    "quantize_onnx_static",
    "complete_qdq",
    "quantized_op_counts",
    "quiet_quantization_warnings",
    "read_onnx_metadata",
    "read_pt2_metadata",
    "register_backend",
    "resolve_backend",
    "run_onnx",
    "verify_onnx",
    "verify_pt2",
    "MixedPrecisionPlan",
    "check_plan_settings",
    "choose_float_layers",
]
