"""The compression report drawn as a PNG (matplotlib only; the figures come from :mod:`.report` rows).

:func:`plot_report` draws six panels: test accuracy against artifact size per stage, size and latency per
stage, and from the per-epoch history weight sparsity, learning rate and losses with the phases shaded.
It returns ``None`` when matplotlib is not installed. Every axis fits its data: accuracies and percentages
stay within [0, 100] (:func:`percent_limits`), and a stage is labelled by what it measured
(:func:`~lightning_optim.functional.compression_report.report.model_label`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

_STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def percent_limits(
    values: Sequence[float], margin: float = 0.15, min_pad: float = 0.5
) -> tuple[float, float]:
    """Axis limits for percentages: the data range plus a margin (``margin`` of the range, at least
    ``min_pad`` points), clamped to [0, 100]."""
    lo, hi = min(values), max(values)
    pad = max(min_pad, (hi - lo) * margin)
    low, high = max(0.0, lo - pad), min(100.0, hi + pad)
    if high <= low:  # a single value at a bound
        low, high = max(0.0, low - min_pad), min(100.0, high + min_pad)
    return low, high


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
    fig = draw_report(rows, history)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def draw_report(rows: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]]) -> Any:
    """The report's matplotlib figure (what :func:`plot_report` saves); close it with ``plt.close(fig)``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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
    return fig


def _what(row: Mapping[str, Any]) -> str:
    from lightning_optim.functional.compression_report.report import model_label

    return model_label(row) or str(row.get("precision", ""))


def _stage_labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{i + 1}. {r['stage']}\n({_what(r)})" for i, r in enumerate(rows)]


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
        label = f"{i + 1}. {r['stage']} ({_what(r)}): {y:.2f}%" + (f", {ratio:.1f}x" if ratio else "")
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
    ax.set_xlabel("compact artifact size (KiB, log scale; smaller to the right)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(*percent_limits(ys, margin=0.25))
    lo, hi = min(xs), max(xs)
    ax.set_xlim(hi * 1.6, lo / 1.6)  # inverted (smaller is better: the pipeline moves right), 1.6x margins
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


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
        [f"{rows.index(r) + 1}. {r['stage']}\n({_what(r)})" for r in timed],
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
    if pct:
        ax.set_ylim(*percent_limits(ys, margin=0.1, min_pad=2.0))
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
        twin.set_ylim(*percent_limits([100 * y for y in ys], margin=0.15))
        handles, labels = [*handles, line], [*labels, "val_acc (%)"]
    ax.legend(handles, labels, fontsize=8, loc="best")


__all__ = ["plot_report"]
