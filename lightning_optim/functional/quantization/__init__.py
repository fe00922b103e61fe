"""int8 quantization behind a small backend interface: QAT and PTQ preparation, conversion, export, report.

The callbacks (:mod:`lightning_optim.callbacks.quantization`) only use :class:`QuantizationBackend`;
``create_backend("x86")`` gives the eager ``torch.ao.quantization`` backend exported as TorchScript.
"""

from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings
from lightning_optim.functional.quantization.backend import (
    BACKENDS,
    QuantizationBackend,
    QuantizationError,
    check_backend_name,
    create_backend,
    register_backend,
)
from lightning_optim.functional.quantization.eager import EagerBackend, Float32FakeQuantize
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
    "FP32_BEST_EFFORT",
    "EagerBackend",
    "Float32FakeQuantize",
    "FusionPlan",
    "QuantizationBackend",
    "QuantizationError",
    "QuantizationReport",
    "accuracy",
    "check_backend_name",
    "create_backend",
    "find_fusion_groups",
    "format_report",
    "measure_cpu_latency",
    "quantizable_layers",
    "quantization_report",
    "quiet_quantization_warnings",
    "register_backend",
]
