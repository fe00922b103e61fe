"""The compression report, pure torch, one module per job:

- :mod:`.evaluate`: top-1 accuracy and loss over batches (the one evaluation);
- :mod:`.measure`: what a model measures (parameters, sizes, FLOPs, CPU latency - the one timing path - and
  one report row, :func:`measure_model`);
- :mod:`.deploy`: the deployable compact artifact of a row (an exported program by default, the state dict
  with a warning when ``torch.export`` cannot capture the model);
- :mod:`.report`: several stages side by side, ratios, the Markdown table and the files;
- :mod:`.markdown`: the one Markdown table renderer (the quantization report uses it too);
- :mod:`.plots`: the PNG (matplotlib only).
"""

from lightning_optim.functional.compression_report.deploy import (
    ARTIFACT_FORMATS,
    deployable_program,
    pack_model_artifact,
)
from lightning_optim.functional.compression_report.evaluate import (
    accuracy,
    count_correct,
    evaluate_classifier,
)
from lightning_optim.functional.compression_report.markdown import format_cell, markdown_table
from lightning_optim.functional.compression_report.measure import (
    FP32_BEST_EFFORT,
    compare_latency,
    count_flops,
    count_layer_macs,
    count_nonzero,
    count_parameters,
    fresh_for_timing,
    is_fake_quantized,
    is_quantized,
    measure_cpu_latency,
    measure_latency,
    measure_model,
    num_threads,
    serialized_size_bytes,
    state_dict_size_bytes,
    weight_sparsity,
)
from lightning_optim.functional.compression_report.plots import draw_report, plot_report
from lightning_optim.functional.compression_report.report import (
    TABLE_COLUMNS,
    add_ratios,
    compression_report,
    format_markdown,
    format_paths,
    model_label,
    write_report,
)

__all__ = [
    "ARTIFACT_FORMATS",
    "FP32_BEST_EFFORT",
    "TABLE_COLUMNS",
    "accuracy",
    "add_ratios",
    "compare_latency",
    "compression_report",
    "count_correct",
    "count_flops",
    "count_layer_macs",
    "count_nonzero",
    "count_parameters",
    "deployable_program",
    "draw_report",
    "evaluate_classifier",
    "format_cell",
    "format_markdown",
    "format_paths",
    "fresh_for_timing",
    "is_fake_quantized",
    "is_quantized",
    "markdown_table",
    "measure_cpu_latency",
    "measure_latency",
    "measure_model",
    "model_label",
    "num_threads",
    "pack_model_artifact",
    "plot_report",
    "serialized_size_bytes",
    "state_dict_size_bytes",
    "weight_sparsity",
    "write_report",
]
