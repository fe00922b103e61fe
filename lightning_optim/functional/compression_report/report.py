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

#: columns of the Markdown table: (row key, header, formatter name); ``"model"`` is derived from the row
#: (:func:`model_label`: what was measured, e.g. ``fp32 (dense)``, ``int8 (90% sparse)``)
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("stage", "Stage", "str"),
    ("epoch", "Epochs done", "int"),
    ("model", "Model", "str"),
    ("parameters", "Parameters", "int"),
    ("nonzero", "Non-zero parameters", "int"),
    ("weight_sparsity", "Weight sparsity", "pct"),
    ("state_dict_bytes", "State dict (torch.save)", "bytes"),
    ("artifact_bytes", "Compact .lopt", "bytes"),
    ("compression_ratio", "Ratio vs dense fp32", "ratio"),
    ("mflops", "MFLOPs (all weights)", "float"),
    ("nonzero_mflops", "MFLOPs (non-zero weights)", "float"),
    ("latency_ms_b1", "Latency b=1 (ms)", "float3"),
    ("latency_ms_b256", "Latency b=256 (ms)", "float3"),
    ("test_acc", "Test accuracy", "pct"),
    ("test_error_pct", "Test error %", "float"),
)
#: what each ``artifact_format`` of a row means, for the notes under the table
ARTIFACT_FORMAT_NOTES: dict[str, str] = {
    "exported_program": "exported program (self-contained: torch alone loads and runs it, load_artifact(path))",
    "state_dict": "state dict (rebuilding a model needs its code: load_artifact(path, model=...))",
    "torchscript": "TorchScript module (self-contained; TorchScript is deprecated by torch 2.14)",
}


def model_label(row: Mapping[str, Any]) -> str | None:
    """What a row measured, in words: the precision and how sparse its weights are, e.g. ``"fp32 (dense)"``,
    ``"fp32 (80% sparse)"``, ``"int8 (95.5% sparse)"``, ``"fp32 + fake-quant (QAT)"``; ``None`` without a
    precision."""
    precision = row.get("precision")
    if precision is None:
        return None
    if precision == "fake-quant":
        return "fp32 + fake-quant (QAT)"
    sparsity = row.get("weight_sparsity")
    if sparsity is None:
        return str(precision)
    if sparsity < 0.0005:
        return f"{precision} (dense)"
    return f"{precision} ({100 * sparsity:.3g}% sparse)"


def _value(row: Mapping[str, Any], key: str) -> Any:
    return model_label(row) if key == "model" else row.get(key)


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
    cols = [c for c in TABLE_COLUMNS if any(_value(r, c[0]) is not None for r in rows)]
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
        [h for _, h, _ in cols], [[format_cell(_value(r, k), f) for k, _, f in cols] for r in rows]
    )
    first = next((r for r in rows if r.get("threads")), rows[0] if rows else {})
    info = [
        f"Latency: CPU, median of {first.get('latency_repeats', '?')} runs after {first.get('latency_warmup', '?')} "
        f"warm-up runs, {first.get('threads', '?')} thread(s), torch {torch.__version__}, {platform.machine()}.",
        "Ratio: dense fp32 state-dict bytes of the first row / compact .lopt bytes "
        "(lightning_optim.functional.artifact: sparse indices + values, LZMA).",
        "MFLOPs per sample (torch.utils.flop_counter; int8 layers counted from their shapes); "
        "the non-zero-weights column counts only non-zero weights.",
    ]
    formats: dict[str, list[str]] = {}
    for r in rows:
        if r.get("artifact_format"):
            formats.setdefault(r["artifact_format"], []).append(str(r.get("stage", "?")))
    if len(formats) == 1:
        info.append(f"Compact .lopt: {ARTIFACT_FORMAT_NOTES.get(next(iter(formats)), next(iter(formats)))}.")
    elif formats:
        info.append(
            "Compact .lopt: "
            + "; ".join(f"{ARTIFACT_FORMAT_NOTES.get(k, k)} for {', '.join(v)}" for k, v in formats.items())
            + "."
        )
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


def display_path(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the current directory) when it lies under it, else absolute."""
    absolute = os.path.abspath(os.fspath(path))
    base = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
    try:
        inside = os.path.commonpath([absolute, base]) == base
    except ValueError:  # another drive
        inside = False
    return os.path.relpath(absolute, base) if inside else absolute


#: the label of each file of :func:`write_report` (and of the callback's artifact) in :func:`format_paths`
PATH_LABELS: dict[str, str] = {"json": "data", "png": "plot", "artifact": "artifact"}


def format_paths(
    paths: Mapping[str, str | os.PathLike],
    artifact_format: str | None = None,
    cwd: str | os.PathLike | None = None,
) -> str:
    """The files of a report, one per line, as a user reads them::

        Compression report: logs/compression_report.md
          data: logs/compression_report.json
          plot: logs/compression_report.png
          artifact: logs/compression_report.lopt (exported program ...)

    Paths are relative to the current directory when they lie under it (:func:`display_path`).
    """
    lines = []
    if "markdown" in paths:
        lines.append(f"Compression report: {display_path(paths['markdown'], cwd)}")
    for key, path in paths.items():
        if key == "markdown":
            continue
        line = f"  {PATH_LABELS.get(key, key)}: {display_path(path, cwd)}"
        if key == "artifact" and artifact_format:
            line += f" ({ARTIFACT_FORMAT_NOTES.get(artifact_format, artifact_format)})"
        lines.append(line)
    return "\n".join(lines)


__all__ = [
    "ARTIFACT_FORMAT_NOTES",
    "PATH_LABELS",
    "display_path",
    "format_paths",
    "TABLE_COLUMNS",
    "add_ratios",
    "compression_report",
    "format_markdown",
    "model_label",
    "write_report",
]
