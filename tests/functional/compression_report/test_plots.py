"""The report's PNG: drawn from rows and history alone (no model), with or without figures in them."""

from __future__ import annotations

import pytest

from lightning_optim.functional.compression_report.plots import plot_report

pytest.importorskip("matplotlib")


def test_png_from_rows_and_history(tmp_path):
    rows = [
        {
            "stage": "dense",
            "precision": "fp32",
            "state_dict_bytes": 40_000,
            "artifact_bytes": 30_000,
            "test_acc": 0.98,
            "latency_ms_b1": 0.2,
            "latency_ms_b256": 3.0,
            "threads": 1,
        },
        {
            "stage": "int8",
            "precision": "int8",
            "state_dict_bytes": 12_000,
            "artifact_bytes": 1_000,
            "compression_ratio": 40.0,
            "test_acc": 0.975,
            "latency_ms_b1": 0.1,
            "latency_ms_b256": 1.0,
        },
    ]
    history = [
        {
            "epoch": 1,
            "weight_sparsity": 0.5,
            "lr": 0.1,
            "train_loss": 1.0,
            "val_acc": 0.9,
            "phases": {"pruning": "active"},
        },
        {
            "epoch": 2,
            "weight_sparsity": 0.9,
            "lr": 0.01,
            "train_loss": 0.5,
            "val_loss": 0.6,
            "val_acc": 0.95,
            "phases": {"pruning": "done"},
        },
    ]
    path = plot_report(rows, history, tmp_path / "r.png")
    assert path == str(tmp_path / "r.png") and open(path, "rb").read(4) == b"\x89PNG"
    # nothing recorded: still a figure, each panel saying so
    empty = plot_report(
        [{"stage": "fake", "precision": "fake-quant", "state_dict_bytes": 4096}], [], tmp_path / "e.png"
    )
    assert open(empty, "rb").read(4) == b"\x89PNG"


def test_axes_fit_the_data_of_a_short_run_with_low_accuracy():
    """A short run (accuracy around 10%) once drew the accuracy axis down to -40%: every percentage axis now
    spans its data plus a margin, within [0, 100]."""
    import matplotlib.pyplot as plt

    from lightning_optim.functional.compression_report.plots import draw_report, percent_limits

    rows = [
        {
            "stage": "fit start",
            "precision": "fp32",
            "weight_sparsity": 0.0,
            "artifact_bytes": 30_000,
            "test_acc": 0.10,
        },
        {
            "stage": "fit end",
            "precision": "fp32",
            "weight_sparsity": 0.5,
            "artifact_bytes": 20_000,
            "test_acc": 0.60,
        },
    ]
    history = [
        {
            "epoch": 1,
            "weight_sparsity": 0.25,
            "val_acc": 0.08,
            "train_loss": 2.3,
            "phases": {"pruning": "active"},
        },
        {
            "epoch": 2,
            "weight_sparsity": 0.5,
            "val_acc": 0.11,
            "train_loss": 2.2,
            "phases": {"pruning": "done"},
        },
    ]
    fig = draw_report(rows, history)
    try:
        acc, _, _, sparsity, _, losses = fig.axes[:6]
        low, high = acc.get_ylim()
        assert 0.0 <= low <= 10.0 and 60.0 <= high <= 100.0, (low, high)  # was (-17.5, 72.5)
        left, right = acc.get_xlim()  # inverted log axis: the larger file on the left, both points inside
        assert left > 30_000 / 1024 > 20_000 / 1024 > right > 0
        assert any("fp32 (50% sparse)" in t.get_text() for t in acc.get_legend().get_texts())
        low, high = sparsity.get_ylim()
        assert 0.0 <= low <= 25.0 and 50.0 <= high <= 100.0, (low, high)
        twin = next(a for a in fig.axes[6:] if a.get_ylabel() == "val accuracy (%)")
        low, high = twin.get_ylim()
        assert 0.0 <= low <= 8.0 and 11.0 <= high <= 100.0, (low, high)
    finally:
        plt.close(fig)
    assert percent_limits([99.9, 100.0]) == (99.4, 100.0)
    assert percent_limits([0.0]) == (0.0, 0.5)
    assert percent_limits([50.0, 50.0]) == (49.5, 50.5)
