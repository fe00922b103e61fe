"""The quantization report: fp32 vs int8 accuracy, state-dict/artifact size, CPU latency side by side.

The columns are labelled by what they measure (``fp32_label``/``int8_label``: "fp32 after QAT", "int8 after
QAT"), and where the two accuracies differ by more than :data:`ACCURACY_NOTE_POINTS` a line under the table
says what they are (``accuracy_note``: the same weights after a short QAT run, the calibration...), so that a
reader does not have to guess why int8 beats fp32 by 20 points on a two-epoch run.

Pure torch (no Lightning): the callbacks and ``benchmarks/quantization.py`` both call
:func:`quantization_report` and print :func:`format_report`. The figures come from the compression report's
one implementation of each: :func:`accuracy` is
:func:`lightning_optim.functional.compression_report.evaluate.accuracy`, the latency is
:func:`lightning_optim.functional.compression_report.measure.measure_cpu_latency` (here with torch's
quantization notices silenced) and the table is drawn by
:func:`lightning_optim.functional.compression_report.markdown.markdown_table`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_optim.functional.compression_report import measure as _measure
from lightning_optim.functional.compression_report.evaluate import accuracy
from lightning_optim.functional.compression_report.markdown import markdown_table
from lightning_optim.functional.compression_report.measure import FP32_BEST_EFFORT, state_dict_size_bytes
from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings
from lightning_optim.functional.quantization.export import export_format_of

#: percentage points between the fp32 and int8 accuracies beyond which the report says what they measure
ACCURACY_NOTE_POINTS = 3.0

#: export format (:data:`~lightning_optim.functional.quantization.export.EXPORT_FORMATS`) -> its name in the table
ARTIFACT_KINDS: dict[str, str] = {
    "torchscript": "TorchScript file",
    "artifact": "compact artifact (.lopt)",
    "pt2": "torch.export program (.pt2)",
    "onnx": "QDQ ONNX file",
}


@dataclass
class QuantizationReport:
    """Figures of one fp32 -> int8 conversion (``None`` where not measured)."""

    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    fp32_state_dict_bytes: int = 0
    int8_state_dict_bytes: int = 0
    artifact_bytes: int | None = None
    #: what the exported file is (for the table): "TorchScript file" or "compact artifact (.lopt)"
    artifact_kind: str = "TorchScript file"
    #: batch size -> {"fp32_eager": ms, "fp32_best": ms, "fp32_best_method": str, "int8": ms}
    latency_ms: dict[int, dict[str, Any]] = field(default_factory=dict)
    threads: int = 0
    #: the column headers: what model and moment each column measures ("fp32 after QAT", "int8 after QAT")
    fp32_label: str = "fp32"
    int8_label: str = "int8"
    #: the validation samples the accuracies were counted on
    accuracy_samples: int | None = None
    #: what the two accuracies measure, said under the table when they differ by more than
    #: :data:`ACCURACY_NOTE_POINTS` (:func:`accuracy_gap_note`)
    accuracy_note: str = ""

    @property
    def size_ratio(self) -> float:
        """fp32 state dict bytes / int8 artifact bytes (the state dict's when no artifact was written)."""
        denominator = self.artifact_bytes or self.int8_state_dict_bytes
        return self.fp32_state_dict_bytes / denominator if denominator else float("nan")

    def metrics(self, prefix: str = "quantization/") -> dict[str, float]:
        """Flat metrics for a logger."""
        out: dict[str, float] = {
            f"{prefix}fp32_state_dict_bytes": float(self.fp32_state_dict_bytes),
            f"{prefix}int8_state_dict_bytes": float(self.int8_state_dict_bytes),
            f"{prefix}size_ratio": float(self.size_ratio),
        }
        if self.artifact_bytes is not None:
            out[f"{prefix}artifact_bytes"] = float(self.artifact_bytes)
        if self.fp32_accuracy is not None:
            out[f"{prefix}fp32_acc"] = float(self.fp32_accuracy)
        if self.int8_accuracy is not None:
            out[f"{prefix}int8_acc"] = float(self.int8_accuracy)
        for bs, row in self.latency_ms.items():
            for key in ("fp32_eager", "fp32_best", "int8"):
                out[f"{prefix}latency_ms/{key}/bs{bs}"] = float(row[key])
            out[f"{prefix}speedup_vs_eager/bs{bs}"] = row["fp32_eager"] / row["int8"]
            out[f"{prefix}speedup_vs_best/bs{bs}"] = row["fp32_best"] / row["int8"]
        return out


def accuracy_gap_note(report: QuantizationReport) -> str | None:
    """One line on what the accuracies measure when int8 and fp32 differ by more than
    :data:`ACCURACY_NOTE_POINTS` points (``None`` otherwise, or when either was not measured)."""
    if report.fp32_accuracy is None or report.int8_accuracy is None:
        return None
    diff = 100 * (report.int8_accuracy - report.fp32_accuracy)
    if round(abs(diff), 2) <= ACCURACY_NOTE_POINTS:  # as the table shows it
        return None
    on = f" on {report.accuracy_samples:,} validation samples" if report.accuracy_samples else ""
    what = report.accuracy_note or (
        "both columns are the same weights; a run too short to converge, or a small evaluation set, moves them "
        "apart"
    )
    return f"Note: int8 is {abs(diff):.1f} points {'above' if diff > 0 else 'below'} fp32{on}: {what}."


def format_report(report: QuantizationReport, title: str = "Quantization report") -> str:
    """A Markdown table of the report (:func:`markdown_table`) under a ``###`` title, its columns headed by
    ``fp32_label``/``int8_label``; under it :func:`accuracy_gap_note` where the accuracies differ by more than
    :data:`ACCURACY_NOTE_POINTS` points."""
    rows: list[list[str]] = []
    if report.fp32_accuracy is not None and report.int8_accuracy is not None:
        diff = 100 * (report.int8_accuracy - report.fp32_accuracy)
        rows.append(
            [
                "accuracy (%)",
                f"{100 * report.fp32_accuracy:.2f}",
                f"{100 * report.int8_accuracy:.2f}",
                f"{diff:+.2f} pt",
            ]
        )
    fp32_bytes = report.fp32_state_dict_bytes
    sd_ratio = fp32_bytes / max(report.int8_state_dict_bytes, 1)
    rows.append(
        [
            "state dict (bytes)",
            f"{fp32_bytes:,}",
            f"{report.int8_state_dict_bytes:,}",
            f"{sd_ratio:.2f}x smaller",
        ]
    )
    if report.artifact_bytes:
        rows.append(
            [
                f"fp32 state dict vs int8 {report.artifact_kind} (bytes)",
                f"{fp32_bytes:,}",
                f"{report.artifact_bytes:,}",
                f"{report.size_ratio:.2f}x smaller",
            ]
        )
    for bs, row in sorted(report.latency_ms.items()):
        rows.append(
            [
                f"latency batch {bs} (ms, median)",
                f"eager {row['fp32_eager']:.3f} / {row['fp32_best_method']} {row['fp32_best']:.3f}",
                f"{row['int8']:.3f}",
                f"{row['fp32_eager'] / row['int8']:.2f}x vs eager, {row['fp32_best'] / row['int8']:.2f}x vs best",
            ]
        )
        for key in sorted(k for k in row if k.startswith(DEPLOY_PREFIX)):
            rows.append(
                [
                    f"latency batch {bs}, {key.removeprefix(DEPLOY_PREFIX)} (ms)",
                    "",
                    f"{row[key]:.3f}",
                    f"{row['fp32_eager'] / row[key]:.2f}x vs eager, {row['fp32_best'] / row[key]:.2f}x vs best",
                ]
            )
    lines = [
        f"### {title}",
        "",
        markdown_table(
            ["", report.fp32_label, report.int8_label, "ratio"], rows, [None, "right", "right", "right"]
        ),
    ]
    note = accuracy_gap_note(report)
    if note:
        lines += ["", note]
    if report.latency_ms:
        lines.append("")
        lines.append(
            f"CPU threads: {report.threads}; load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
    return "\n".join(lines)


@functools.wraps(_measure.measure_cpu_latency)
def measure_cpu_latency(*args: Any, **kwargs: Any) -> dict[int, dict[str, Any]]:
    with quiet_quantization_warnings():
        return _measure.measure_cpu_latency(*args, **kwargs)


def artifact_kind(path: str | Path) -> str:
    """What the exported file ``path`` is, for the table: by its suffix
    (:func:`~lightning_optim.functional.quantization.export.export_format_of`); a suffix of no export format
    (a user's own file name) reads as a TorchScript file, the default export."""
    try:
        return ARTIFACT_KINDS[export_format_of(path)]
    except ValueError:
        return ARTIFACT_KINDS["torchscript"]


#: the latency keys of the deploy files timed beside the models (:func:`quantization_report`'s ``deploy_runners``)
DEPLOY_PREFIX = "deploy: "


def quantization_report(
    fp32_model: nn.Module,
    int8_model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    fp32_accuracy: float | None = None,
    int8_accuracy: float | None = None,
    artifact_path: str | Path | None = None,
    batch_sizes: Iterable[int] = (1, 256),
    repeats: int = 20,
    rounds: int = 3,
    best_effort: tuple[str, ...] = FP32_BEST_EFFORT,
    threads: int | None = None,
    int8_runner: nn.Module | None = None,
    fp32_label: str = "fp32",
    int8_label: str = "int8",
    accuracy_samples: int | None = None,
    accuracy_note: str = "",
    deploy_runners: dict[str, Any] | None = None,
) -> QuantizationReport:
    """Sizes, given accuracies, and (when ``input_shape`` and ``batch_sizes`` are given) CPU latency.

    ``deploy_runners``: deploy files to time beside them, by label (e.g. ``{"ONNX file in ONNX Runtime":
    OnnxRunner(path)}``): each gets a latency row of its own (the int8 network as the file runs it).

    ``int8_runner``: what to time for int8 when it is not ``int8_model`` itself (the PT2E model lowered with
    ``torch.compile``, the way it is meant to run); sizes are always those of ``int8_model``.
    ``fp32_label``, ``int8_label``, ``accuracy_samples``, ``accuracy_note``: see :class:`QuantizationReport`.
    """
    with quiet_quantization_warnings():
        report = QuantizationReport(
            fp32_accuracy=fp32_accuracy,
            int8_accuracy=int8_accuracy,
            fp32_state_dict_bytes=state_dict_size_bytes(fp32_model),
            int8_state_dict_bytes=state_dict_size_bytes(int8_model),
            artifact_bytes=os.path.getsize(artifact_path) if artifact_path is not None else None,
            artifact_kind=artifact_kind(artifact_path)
            if artifact_path is not None
            else ARTIFACT_KINDS["torchscript"],
            threads=threads or torch.get_num_threads(),
            fp32_label=fp32_label,
            int8_label=int8_label,
            accuracy_samples=accuracy_samples,
            accuracy_note=accuracy_note,
        )
    batch_sizes = tuple(batch_sizes)
    if input_shape is not None and batch_sizes:
        report.latency_ms = measure_cpu_latency(
            fp32_model,
            int8_runner if int8_runner is not None else int8_model,
            tuple(input_shape),
            batch_sizes,
            repeats,
            rounds,
            best_effort,
            threads,
            extra={DEPLOY_PREFIX + k: v for k, v in (deploy_runners or {}).items()},
        )
    return report


__all__ = [
    "ACCURACY_NOTE_POINTS",
    "ARTIFACT_KINDS",
    "FP32_BEST_EFFORT",
    "QuantizationReport",
    "accuracy",
    "accuracy_gap_note",
    "artifact_kind",
    "format_report",
    "measure_cpu_latency",
    "quantization_report",
]
