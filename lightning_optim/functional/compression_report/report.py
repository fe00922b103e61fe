"""The compression report's rows: several stages side by side, ratios to the dense model, the Markdown table
and the JSON/PNG/Markdown files.

:func:`compression_report` measures several stages of a model
(:func:`~lightning_optim.functional.compression_report.measure.measure_model` each) and sets their
compression ratios (:func:`add_ratios`); :func:`format_markdown` and :func:`write_report` turn rows into a
table (:func:`~lightning_optim.functional.compression_report.markdown.markdown_table`), JSON and a PNG
(:mod:`~lightning_optim.functional.compression_report.plots`).
:class:`~lightning_optim.callbacks.CompressionReport` is the Lightning shell around them.

Example::

    rows = compression_report({"dense": dense, "pruned": pruned, "int8": int8}, example_input=x, batches=test_loader)
    print(format_markdown(rows))
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.functional.compression_report.markdown import format_cell, markdown_table
from lightning_optim.functional.compression_report.measure import measure_model
from lightning_optim.functional.compression_report.plots import plot_report

#: columns of the Markdown table: (row key, header, formatter name)
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("stage", "Stage", "str"),
    ("epoch", "Epochs done", "int"),
    ("precision", "Precision", "str"),
    ("parameters", "Params", "int"),
    ("nonzero", "Non-zero", "int"),
    ("weight_sparsity", "Weight sparsity", "pct"),
    ("state_dict_bytes", "State dict", "bytes"),
    ("artifact_bytes", "Artifact", "bytes"),
    ("compression_ratio", "Ratio vs dense fp32", "ratio"),
    ("mflops", "MFLOPs (dense)", "float"),
    ("nonzero_mflops", "MFLOPs (non-zero)", "float"),
    ("latency_ms_b1", "Latency b=1 (ms)", "float3"),
    ("latency_ms_b256", "Latency b=256 (ms)", "float3"),
    ("test_acc", "Test acc", "pct"),
    ("test_error_pct", "Test error %", "float"),
)


def add_ratios(rows: list[dict[str, Any]], baseline_bytes: int | None = None) -> list[dict[str, Any]]:
    """Set ``compression_ratio`` = dense fp32 state-dict bytes / artifact bytes on every row.

    The baseline is ``baseline_bytes`` or the first row's ``state_dict_bytes`` (the model before compression).
    """
    if not rows:
        return rows
    base = baseline_bytes if baseline_bytes is not None else rows[0].get("state_dict_bytes")
    for row in rows:
        row["baseline_bytes"] = base
        if base and row.get("artifact_bytes"):
            row["compression_ratio"] = base / row["artifact_bytes"]
    return rows


def compression_report(
    stages: Mapping[str, nn.Module] | Sequence[tuple[str, nn.Module]],
    example_input: Tensor,
    batches: Iterable[Any] | None = None,
    baseline_bytes: int | None = None,
    **measure_kwargs: Any,
) -> list[dict[str, Any]]:
    """Measure several stages of a model side by side (same input, test batches and settings).

    Args:
        stages: ``{name: model}`` in order (the first is the baseline of the ratios unless ``baseline_bytes``).
        example_input: an input batch.
        batches: test batches (re-iterated for each stage), or ``None``.
        baseline_bytes: the dense fp32 state-dict size the ratios refer to.
        **measure_kwargs: passed to :func:`measure_model`.

    Returns:
        One row per stage with ``compression_ratio``.
    """
    items = list(stages.items()) if isinstance(stages, Mapping) else list(stages)
    rows = [
        measure_model(model, example_input, stage=name, batches=batches, **measure_kwargs)
        for name, model in items
    ]
    return add_ratios(rows, baseline_bytes)


def format_markdown(rows: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """The rows as a Markdown table (columns with no value in any row are left out), then notes on how
    the figures were measured."""
    cols = [c for c in TABLE_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    extra_latency = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith("latency_ms_b") and k not in ("latency_ms_b1", "latency_ms_b256")
        },
        key=lambda k: int(k[len("latency_ms_b") :]),
    )
    cols += [(k, f"Latency b={k[len('latency_ms_b') :]} (ms)", "float3") for k in extra_latency]
    table = markdown_table(
        [h for _, h, _ in cols], [[format_cell(r.get(k), f) for k, _, f in cols] for r in rows]
    )
    first = next((r for r in rows if r.get("threads")), rows[0] if rows else {})
    info = [
        f"Latency: CPU, median of {first.get('latency_repeats', '?')} runs after {first.get('latency_warmup', '?')} "
        f"warm-up runs, {first.get('threads', '?')} thread(s), torch {torch.__version__}, {platform.machine()}.",
        "Ratio: dense fp32 state-dict bytes of the first row / compact artifact bytes "
        "(lightning_optim.functional.artifact: sparse indices + values, LZMA).",
        "MFLOPs per sample (torch.utils.flop_counter; int8 layers counted from their shapes); "
        "non-zero MFLOPs count only non-zero weights.",
    ]
    return table + "\n\n" + "\n".join(f"- {n}" for n in [*info, *notes]) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


def write_report(
    rows: Sequence[Mapping[str, Any]],
    dirpath: str | os.PathLike,
    filename: str = "compression_report",
    history: Sequence[Mapping[str, Any]] = (),
    notes: Sequence[str] = (),
    plot: bool = True,
) -> dict[str, str]:
    """Write ``<filename>.md``, ``<filename>.json`` and (with matplotlib) ``<filename>.png`` into ``dirpath``.

    Returns:
        ``{"markdown": path, "json": path, "png": path}`` (``png`` missing when not drawn).
    """
    os.makedirs(dirpath, exist_ok=True)
    base = os.path.join(os.fspath(dirpath), filename)
    paths = {"markdown": base + ".md", "json": base + ".json"}
    with open(paths["markdown"], "w") as f:
        f.write("# Compression report\n\n" + format_markdown(rows, notes))
    with open(paths["json"], "w") as f:
        json.dump(
            _jsonable({"rows": list(rows), "history": list(history), "notes": list(notes)}), f, indent=2
        )
    if plot and plot_report(rows, history, base + ".png") is not None:
        paths["png"] = base + ".png"
    return paths


__all__ = ["TABLE_COLUMNS", "add_ratios", "compression_report", "format_markdown", "write_report"]
