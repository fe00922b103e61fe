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
