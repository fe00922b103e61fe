"""The compression report as plain functions, usable on any model without Lightning.

:func:`measure_model` measures one model (one *stage*): parameters, non-zero parameters, sparsity of the
weights, the serialized fp32-style state dict, the compact deployable artifact
(:mod:`lightning_optim.functional.artifact`), FLOPs (``torch.utils.flop_counter``) and MACs, CPU latency at
several batch sizes (median of repeated runs after warm-up, thread count stated) and, given batches, test
accuracy and loss. :func:`compression_report` measures several stages side by side;
:func:`format_markdown`, :func:`write_report` and :func:`plot_report` turn rows into a table, JSON and a
PNG. :class:`~lightning_optim.callbacks.CompressionReport` is the Lightning shell around them.

Example::

    rows = compression_report({"dense": dense, "pruned": pruned, "int8": int8}, example_input=x, batches=test_loader)
    print(format_markdown(rows))
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_optim.functional.artifact import pack_artifact
from lightning_optim.functional.compression_report.measure import (
    count_flops,
    count_layer_macs,
    count_nonzero,
    count_parameters,
    is_fake_quantized,
    is_quantized,
    measure_latency,
    state_dict_size_bytes,
    weight_sparsity,
)

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


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_classifier(
    model: nn.Module | Callable[[Tensor], Tensor],
    batches: Iterable[Any],
    prepare: Callable[[Any], tuple[Tensor, Tensor]] | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy, mean cross-entropy and error (in %) of a classifier over ``batches``.

    Args:
        model: maps inputs to logits (float or int8).
        batches: an iterable of ``(inputs, targets, ...)`` batches (a DataLoader).
        prepare: turns a raw batch into ``(inputs, targets)`` (the data module's transfer hooks); default:
            the first two elements.
        max_batches: stop after this many batches.

    Returns:
        ``test_acc`` (fraction), ``test_loss``, ``test_error_pct`` and ``test_samples``.
    """
    if isinstance(model, nn.Module):
        model.eval()
    correct = 0
    seen = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = prepare(batch) if prepare is not None else (batch[0], batch[1])
            logits = model(x)
            logits = logits.dequantize() if logits.is_quantized else logits
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == y).sum())
            seen += int(y.shape[0])
    if seen == 0:
        raise ValueError("evaluate_classifier: the test batches were empty.")
    acc = correct / seen
    return {
        "test_acc": acc,
        "test_loss": loss_sum / seen,
        "test_error_pct": 100.0 * (1.0 - acc),
        "test_samples": seen,
    }


# ------------------------------------------------------------------------------------------ measurement
def precision_of(model: nn.Module) -> str:
    """``"int8"`` (converted), ``"fake-quant"`` (prepared for QAT) or the dtype of the first float parameter."""
    if is_quantized(model):
        return "int8"
    if is_fake_quantized(model):
        return "fake-quant"
    for p in model.parameters():
        if p.is_floating_point():
            return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
                p.dtype, str(p.dtype)
            )
    return "fp32"


def batch_of(example_input: Tensor, batch_size: int) -> Tensor:
    """A batch of ``batch_size`` made by repeating the samples of ``example_input``."""
    reps = math.ceil(batch_size / example_input.shape[0])
    return example_input.repeat(reps, *([1] * (example_input.dim() - 1)))[:batch_size].contiguous()


def measure_model(
    model: nn.Module,
    example_input: Tensor,
    stage: str = "model",
    batches: Iterable[Any] | None = None,
    prepare: Callable[[Any], tuple[Tensor, Tensor]] | None = None,
    max_batches: int | None = None,
    latency_batch_sizes: Sequence[int] = (1, 256),
    latency_repeats: int = 20,
    latency_warmup: int = 3,
    threads: int | None = None,
    artifact: bool = True,
    artifact_torchscript: bool = False,
    copy_model: bool = True,
) -> dict[str, Any]:
    """Measure one model; see the module docstring. The model is measured on the CPU, on a copy.

    Args:
        model: the model (float, pruned, fake-quantized or int8).
        example_input: an input batch (the first sample is repeated for the latency batches).
        stage: the row's label.
        batches: test batches for :func:`evaluate_classifier` (``None`` skips the test metrics).
        prepare: see :func:`evaluate_classifier`.
        max_batches: at most this many test batches.
        latency_batch_sizes: batch sizes timed (median of ``latency_repeats`` runs after
            ``latency_warmup``); a fake-quantized model is not timed (its latency means nothing).
        latency_repeats: timed runs per batch size.
        latency_warmup: untimed runs first.
        threads: intra-op threads for the latency (``None``: torch's current setting, stated in the row).
        artifact: also pack the compact artifact and report its size.
        artifact_torchscript: the artifact holds a TorchScript module (self-contained) instead of the state dict.
        copy_model: measure a deep copy (observers, BN statistics and train/eval mode of ``model`` untouched).

    Returns:
        A row: ``stage``, ``precision``, ``parameters``, ``nonzero``, ``weight_sparsity``,
        ``state_dict_bytes``, ``artifact_bytes``, ``flops`` (+ ``flops_source``), ``macs``, ``nonzero_macs``,
        ``mflops``, ``nonzero_mflops``, ``latency_ms_b<N>`` per batch size, ``threads``, ``latency_repeats``,
        ``latency_warmup`` and, with ``batches``, the test metrics.
    """
    if copy_model:
        try:
            model = copy.deepcopy(model)
        except Exception:  # noqa: BLE001 - measure the model itself, restoring its mode afterwards
            pass
    was_training = model.training
    model = model.cpu().eval()
    example_input = example_input.detach().cpu()
    x1 = example_input[:1]
    precision = precision_of(model)
    row: dict[str, Any] = {"stage": stage, "precision": precision}
    try:
        row["parameters"] = count_parameters(model)
        row["nonzero"] = count_nonzero(model)
        row["sparsity"] = 1.0 - row["nonzero"] / row["parameters"] if row["parameters"] else 0.0
        row["weight_sparsity"] = weight_sparsity(model)
        row["state_dict_bytes"] = state_dict_size_bytes(model)
        if artifact and precision != "fake-quant":
            row["artifact_bytes"] = len(
                pack_artifact(model, torchscript=artifact_torchscript, example_input=x1)
            )
            row["artifact_format"] = "torchscript" if artifact_torchscript else "state_dict"
        flops = count_flops(model, x1)
        macs = count_layer_macs(model, x1)
        if flops == 0 and macs > 0:  # int8 kernels are invisible to the flop counter
            flops, row["flops_source"] = 2 * macs, "layer hooks (int8 kernels)"
        else:
            row["flops_source"] = "torch.utils.flop_counter"
        row["flops"] = flops
        row["macs"] = flops // 2
        row["nonzero_macs"] = count_layer_macs(model, x1, nonzero=True)
        row["mflops"] = flops / 1e6
        row["nonzero_mflops"] = 2 * row["nonzero_macs"] / 1e6
        if precision != "fake-quant":
            for bs in latency_batch_sizes:
                result = measure_latency(
                    model,
                    batch_of(example_input, bs),
                    repeats=latency_repeats,
                    warmup=latency_warmup,
                    threads=threads,
                )
                row[f"latency_ms_b{bs}"] = result["median_ms"]
                row[f"latency_min_ms_b{bs}"] = result["min_ms"]  # less sensitive to a shared CPU
                row["threads"] = int(result["threads"])
        row["latency_repeats"] = latency_repeats
        row["latency_warmup"] = latency_warmup
        if batches is not None:
            row.update(evaluate_classifier(model, batches, prepare=prepare, max_batches=max_batches))
    finally:
        model.train(was_training)
    return row


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


# ------------------------------------------------------------------------------------------ output
def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "bytes":
        return f"{value / 1024:,.1f} KiB" if value < 1024**2 else f"{value / 1024**2:,.2f} MiB"
    if kind == "ratio":
        return f"{value:.1f}x"
    if kind == "float":
        return f"{value:,.2f}"
    if kind == "float3":
        return f"{value:,.3f}"
    return str(value)


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
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), f) for k, _, f in cols) + " |")
    first = next((r for r in rows if r.get("threads")), rows[0] if rows else {})
    info = [
        f"Latency: CPU, median of {first.get('latency_repeats', '?')} runs after {first.get('latency_warmup', '?')} "
        f"warm-up runs, {first.get('threads', '?')} thread(s), torch {torch.__version__}, {platform.machine()}.",
        "Ratio: dense fp32 state-dict bytes of the first row / compact artifact bytes "
        "(lightning_optim.functional.artifact: sparse indices + values, LZMA).",
        "MFLOPs per sample (torch.utils.flop_counter; int8 layers counted from their shapes); "
        "non-zero MFLOPs count only non-zero weights.",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in [*info, *notes]) + "\n"


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


# ------------------------------------------------------------------------------------------ plot
_STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def plot_report(
    rows: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> str | None:
    """Draw the report as a PNG: accuracy against artifact size per stage, size and latency per stage, and
    (from ``history``, one entry per epoch) weight sparsity, learning rate and losses over training with the
    phases shaded. Returns the path, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle("Compression report", fontsize=15, fontweight="bold")
    _plot_acc_vs_size(axes[0, 0], rows)
    _plot_size_bars(axes[0, 1], rows)
    _plot_latency_bars(axes[0, 2], rows)
    _plot_history(
        axes[1, 0], history, "weight_sparsity", "Weight sparsity over training (phases shaded)", pct=True
    )
    _plot_history(axes[1, 1], history, "lr", "Learning rate", log=True)
    _plot_losses(axes[1, 2], history)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def _stage_labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{i + 1}. {r['stage']}\n({r.get('precision', '')})" for i, r in enumerate(rows)]


def _set_stage_ticks(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.set_xticks(list(range(len(rows))), _stage_labels(rows), fontsize=7, rotation=30, ha="right")


def _plot_acc_vs_size(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.set_title("Test accuracy against deployable size (per stage)")
    pts = [(i, r) for i, r in enumerate(rows) if r.get("artifact_bytes") and r.get("test_acc") is not None]
    if not pts:
        ax.text(0.5, 0.5, "no test metrics recorded", ha="center", va="center", transform=ax.transAxes)
        return
    xs = [r["artifact_bytes"] / 1024 for _, r in pts]
    ys = [100 * r["test_acc"] for _, r in pts]
    ax.plot(xs, ys, "-", color="0.75", zorder=1)
    for k, ((i, r), x, y) in enumerate(zip(pts, xs, ys)):
        ratio = r.get("compression_ratio")
        label = f"{i + 1}. {r['stage']} ({r.get('precision', '')}): {y:.2f}%" + (
            f", {ratio:.1f}x" if ratio else ""
        )
        ax.scatter(
            [x], [y], s=110, color=_STAGE_COLORS[k % len(_STAGE_COLORS)], zorder=2, edgecolor="k", label=label
        )
        ax.annotate(
            str(i + 1),
            (x, y),
            ha="center",
            va="center",
            fontsize=7,
            fontweight="bold",
            color="white",
            zorder=3,
        )
    ax.set_xscale("log")
    ax.invert_xaxis()  # smaller is better: the pipeline moves right
    ax.set_xlabel("compact artifact size (KiB, log scale; smaller to the right)")
    ax.set_ylabel("test accuracy (%)")
    lo, hi = min(ys), max(ys)
    pad = max(0.5, (hi - lo) * 0.25)
    ax.set_ylim(lo - 2.2 * pad, min(100.0, hi + pad))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def _plot_size_bars(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    ax.set_title("Size per stage")
    idx = list(range(len(rows)))
    sd = [(r.get("state_dict_bytes") or 0) / 1024 for r in rows]
    art = [(r.get("artifact_bytes") or 0) / 1024 for r in rows]
    ax.bar([i - 0.2 for i in idx], sd, width=0.4, label="torch.save state dict", color="#9ecae1")
    ax.bar([i + 0.2 for i in idx], art, width=0.4, label="compact artifact", color="#3182bd")
    for i, r in enumerate(rows):
        if r.get("compression_ratio"):
            ax.text(i + 0.2, art[i], f"{r['compression_ratio']:.1f}x", ha="center", va="bottom", fontsize=8)
        elif not r.get("artifact_bytes"):
            ax.text(
                i + 0.2,
                sd[i] * 0.5,
                "fake-quant:\nno artifact",
                ha="center",
                va="top",
                fontsize=6,
                rotation=90,
            )
    ax.set_yscale("log")
    _set_stage_ticks(ax, rows)
    ax.set_ylabel("KiB (log scale)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _plot_latency_bars(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    keys = sorted(
        {k for r in rows for k in r if k.startswith("latency_ms_b")}, key=lambda k: int(k[12:])
    )  # medians
    threads = next((r.get("threads") for r in rows if r.get("threads")), "?")
    ax.set_title(f"CPU latency per stage (median, {threads} thread(s))")
    timed = [r for r in rows if any(r.get(k) for k in keys)]
    if not keys or not timed:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
        return
    idx = list(range(len(timed)))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        vals = [r.get(key) or 0.0 for r in timed]
        pos = [i - 0.4 + width * (j + 0.5) for i in idx]
        ax.bar(pos, vals, width=width, label=f"batch {key[12:]}")
        for p, v in zip(pos, vals):
            if v:
                ax.text(p, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(
        idx,
        [f"{rows.index(r) + 1}. {r['stage']}\n({r.get('precision', '')})" for r in timed],
        fontsize=7,
        rotation=30,
        ha="right",
    )
    ax.set_ylabel("ms (log scale)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _shade_phases(ax: Any, history: Sequence[Mapping[str, Any]], label: bool = True) -> None:
    """Shade where each phase was active (between the epoch ends at which it was reported active and done)
    and mark where it became done."""
    names = sorted({n for h in history for n in (h.get("phases") or {})})
    for k, name in enumerate(names):
        color = _STAGE_COLORS[(k + 1) % len(_STAGE_COLORS)]
        active = [h["epoch"] for h in history if (h.get("phases") or {}).get(name) == "active"]
        done = [h["epoch"] for h in history if (h.get("phases") or {}).get(name) == "done"]
        if active:
            end = min(done) if done else max(active)
            ax.axvspan(min(active), end, color=color, alpha=0.12, label=f"{name} active" if label else None)
        if done:
            ax.axvline(
                min(done), color=color, linestyle="--", linewidth=1, label=f"{name} done" if label else None
            )


def _plot_history(
    ax: Any, history: Sequence[Mapping[str, Any]], key: str, title: str, pct: bool = False, log: bool = False
) -> None:
    ax.set_title(title)
    pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    if not pts:
        ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=ax.transAxes)
        return
    xs, ys = zip(*pts)
    ys = [100 * y for y in ys] if pct else list(ys)
    ax.plot(xs, ys, "o-", color="#3182bd", markersize=4)
    _shade_phases(ax, history, label=pct)
    if log and all(y > 0 for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel("epochs completed")
    ax.set_ylabel("%" if pct else key)
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8)


def _plot_losses(ax: Any, history: Sequence[Mapping[str, Any]]) -> None:
    ax.set_title("Loss and validation accuracy")
    drawn = False
    for key, color in (("train_loss", "#3182bd"), ("val_loss", "#e6550d")):
        pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", markersize=4, label=key, color=color)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax.transAxes)
        return
    _shade_phases(ax, history, label=False)
    ax.set_xlabel("epochs completed")
    ax.set_ylabel("loss (train: total, with added terms such as KD)")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    acc = [(h["epoch"], h["val_acc"]) for h in history if h.get("val_acc") is not None]
    if acc:
        twin = ax.twinx()
        xs, ys = zip(*acc)
        (line,) = twin.plot(
            xs, [100 * y for y in ys], "s--", markersize=3, color="#31a354", label="val_acc (%)"
        )
        twin.set_ylabel("val accuracy (%)", color="#31a354")
        handles, labels = [*handles, line], [*labels, "val_acc (%)"]
    ax.legend(handles, labels, fontsize=8, loc="best")
