"""int8 quantization behind a small backend interface: QAT and PTQ preparation, conversion, export, report.

The callbacks (:mod:`lightning_optim.callbacks.quantization`) only use :class:`QuantizationBackend` and
:func:`export_quantized`. The *backend* is the stack (``"eager"``: eager ``torch.ao.quantization``, exported as
TorchScript), the *engine* the kernel target (``"x86"``, ``"fbgemm"``): ``create_backend("eager", engine="x86")``.
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
    EXPORT_FORMATS,
    check_export_format,
    export_file_path,
    export_format_of,
    export_quantized,
)
from lightning_optim.functional.quantization.fusion import FusionPlan, find_fusion_groups, quantizable_layers
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
    "EXPORT_FORMATS",
    "FP32_BEST_EFFORT",
    "EagerBackend",
    "Float32FakeQuantize",
    "FusionPlan",
    "QuantizationBackend",
    "QuantizationError",
    "QuantizationReport",
    "accuracy",
    "check_backend_name",
    "check_engine",
    "check_export_format",
    "create_backend",
    "export_file_path",
    "export_format_of",
    "export_quantized",
    "find_fusion_groups",
    "format_report",
    "measure_cpu_latency",
    "quantizable_layers",
    "quantization_report",
    "quiet_quantization_warnings",
    "register_backend",
    "resolve_backend",
]
