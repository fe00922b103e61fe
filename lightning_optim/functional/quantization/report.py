"""The quantization report: fp32 vs int8 accuracy, state-dict/artifact size, CPU latency side by side.

Pure torch (no Lightning): the callbacks and ``benchmarks/quantization.py`` both call
:func:`quantization_report` and print :func:`format_report`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.functional.compression_report.measure import compare_latency, state_dict_size_bytes
from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings

#: ways to make the fp32 model faster on the CPU that the report tries ("best effort")
FP32_BEST_EFFORT: tuple[str, ...] = ("channels_last", "compile")


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


def format_report(report: QuantizationReport, title: str = "Quantization report") -> str:
    """A Markdown table of the report."""
    lines = [f"### {title}", "", "| | fp32 | int8 | ratio |", "|---|---:|---:|---:|"]
    if report.fp32_accuracy is not None and report.int8_accuracy is not None:
        diff = 100 * (report.int8_accuracy - report.fp32_accuracy)
        lines.append(
            f"| accuracy (%) | {100 * report.fp32_accuracy:.2f} | {100 * report.int8_accuracy:.2f} | {diff:+.2f} pt |"
        )
    fp32_bytes = report.fp32_state_dict_bytes
    sd_ratio = fp32_bytes / max(report.int8_state_dict_bytes, 1)
    lines.append(
        f"| state dict (bytes) | {fp32_bytes:,} | {report.int8_state_dict_bytes:,} | {sd_ratio:.2f}x smaller |"
    )
    if report.artifact_bytes:
        lines.append(
            f"| fp32 state dict vs int8 {report.artifact_kind} (bytes) | {fp32_bytes:,} | {report.artifact_bytes:,} | "
            f"{report.size_ratio:.2f}x smaller |"
        )
    for bs, row in sorted(report.latency_ms.items()):
        lines.append(
            f"| latency batch {bs} (ms, median) | eager {row['fp32_eager']:.3f} / {row['fp32_best_method']} "
            f"{row['fp32_best']:.3f} | {row['int8']:.3f} | {row['fp32_eager'] / row['int8']:.2f}x vs eager, "
            f"{row['fp32_best'] / row['int8']:.2f}x vs best |"
        )
    if report.latency_ms:
        lines.append("")
        lines.append(
            f"CPU threads: {report.threads}; load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
    return "\n".join(lines)


@torch.no_grad()
def accuracy(model: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``(inputs, targets)`` batches (CPU float inputs for int8 models)."""
    correct, total = 0, 0
    for x, y in batches:
        logits = model(x)
        correct += int((logits.argmax(-1) == y.to(logits.device)).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def _fp32_variants(
    model: nn.Module, example: Tensor, methods: tuple[str, ...]
) -> dict[str, Callable[[Tensor], Any]]:
    variants: dict[str, Callable[[Tensor], Any]] = {}
    if "channels_last" in methods and example.dim() == 4:
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
        variants["channels_last"] = lambda x, m=cl: m(x.contiguous(memory_format=torch.channels_last))
    if "compile" in methods:
        compiled = torch.compile(copy.deepcopy(model).eval())
        try:
            with torch.inference_mode():
                compiled(example)  # compile outside the timing
            variants["compile"] = compiled
        except Exception:  # noqa: BLE001 - torch.compile unavailable (no compiler): best effort only
            pass
    return variants


def measure_cpu_latency(
    fp32_model: nn.Module,
    int8_model: Callable[[Tensor], Any],
    input_shape: tuple[int, ...],
    batch_sizes: Iterable[int] = (1, 256),
    repeats: int = 20,
    rounds: int = 3,
    best_effort: tuple[str, ...] = FP32_BEST_EFFORT,
    threads: int | None = None,
    extra: dict[str, Callable[[Tensor], Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Median CPU latency (ms) of fp32 eager, the fastest fp32 ``best_effort`` variant and int8, interleaved.

    Args:
        fp32_model: the float model (copied; moved to the CPU).
        int8_model: the converted model.
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``.
        batch_sizes: batch sizes to time.
        repeats: timed runs per round; rounds: interleaved rounds (median over rounds).
        best_effort: fp32 variants to try (``"channels_last"``, ``"compile"``); the fastest is reported.
        threads: intra-op threads (``None`` keeps torch's setting).
        extra: more callables to time side by side (reported under their names).
    """
    fp32 = copy.deepcopy(fp32_model).cpu().eval()
    results: dict[int, dict[str, Any]] = {}
    for bs in batch_sizes:
        x = torch.randn(bs, *input_shape)
        models: dict[str, Callable[[Tensor], Any]] = {"fp32_eager": fp32}
        models.update({f"fp32_{k}": v for k, v in _fp32_variants(fp32, x, best_effort).items()})
        models["int8"] = int8_model
        models.update(extra or {})
        with quiet_quantization_warnings():
            timed = compare_latency(models, x, repeats=repeats, warmup=3, rounds=rounds, threads=threads)
        row: dict[str, Any] = {name: r["median_ms"] for name, r in timed.items()}
        candidates = {k: v for k, v in row.items() if k.startswith("fp32_")}
        best = min(candidates, key=candidates.get)
        row["fp32_best"] = candidates[best]
        row["fp32_best_method"] = best.removeprefix("fp32_")
        results[bs] = row
    return results


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
) -> QuantizationReport:
    """Sizes, given accuracies, and (when ``input_shape`` and ``batch_sizes`` are given) CPU latency."""
    with quiet_quantization_warnings():
        report = QuantizationReport(
            fp32_accuracy=fp32_accuracy,
            int8_accuracy=int8_accuracy,
            fp32_state_dict_bytes=state_dict_size_bytes(fp32_model),
            int8_state_dict_bytes=state_dict_size_bytes(int8_model),
            artifact_bytes=os.path.getsize(artifact_path) if artifact_path is not None else None,
            artifact_kind="compact artifact (.lopt)"
            if artifact_path is not None and str(artifact_path).endswith(".lopt")
            else "TorchScript file",
            threads=threads or torch.get_num_threads(),
        )
    batch_sizes = tuple(batch_sizes)
    if input_shape is not None and batch_sizes:
        report.latency_ms = measure_cpu_latency(
            fp32_model, int8_model, tuple(input_shape), batch_sizes, repeats, rounds, best_effort, threads
        )
    return report
