"""The compression report, pure torch: what a model measures (:mod:`.measure`: parameters, sizes, FLOPs,
latency) and the rows, tables, JSON and plots of a report (:mod:`.report`)."""

from lightning_optim.functional.compression_report.measure import (
    compare_latency,
    count_flops,
    count_layer_macs,
    count_nonzero,
    count_parameters,
    is_fake_quantized,
    is_quantized,
    measure_latency,
    serialized_size_bytes,
    state_dict_size_bytes,
    weight_sparsity,
)
from lightning_optim.functional.compression_report.report import (
    TABLE_COLUMNS,
    add_ratios,
    compression_report,
    evaluate_classifier,
    format_markdown,
    measure_model,
    plot_report,
    write_report,
)

__all__ = [
    "TABLE_COLUMNS",
    "add_ratios",
    "compare_latency",
    "compression_report",
    "count_flops",
    "count_layer_macs",
    "count_nonzero",
    "count_parameters",
    "evaluate_classifier",
    "format_markdown",
    "is_fake_quantized",
    "is_quantized",
    "measure_latency",
    "measure_model",
    "plot_report",
    "serialized_size_bytes",
    "state_dict_size_bytes",
    "weight_sparsity",
    "write_report",
]
