"""The report functions on a 2-layer MLP whose figures are computed by hand."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.report import (
    compression_report,
    evaluate_classifier,
    format_markdown,
    measure_model,
    write_report,
)
from tests.nets import IN, int8_mlp, mlp


def batches(n: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, IN, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_measure_model_figures_by_hand():
    model = mlp()
    with torch.no_grad():
        model[0].weight[:, :5] = 0
    data = batches()
    row = measure_model(
        model,
        data[0][0],
        stage="pruned",
        batches=data,
        latency_batch_sizes=(1, 4),
        latency_repeats=2,
        latency_warmup=0,
        threads=1,
    )
    assert row["stage"] == "pruned" and row["precision"] == "fp32"
    assert row["parameters"] == 283 and row["nonzero"] == 183
    assert row["flops"] == 2 * 260 and row["macs"] == 260  # per sample
    assert row["nonzero_macs"] == 260 - 100
    assert row["flops_source"] == "torch.utils.flop_counter"
    assert row["latency_ms_b1"] > 0 and row["latency_ms_b4"] > 0 and row["threads"] == 1
    assert 0 < row["artifact_bytes"] and row["state_dict_bytes"] > 283 * 4
    # test metrics equal a direct computation
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    logits = model(x)
    assert row["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert row["test_loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert row["test_samples"] == 48
    assert model.training  # the caller's model is left as it was


def test_int8_row_and_ratios(tmp_path):
    model = mlp()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            w = layer.weight
            w.mul_(w.abs() >= w.abs().flatten().kthvalue(int(0.9 * w.numel())).values)
    data = batches()
    rows = compression_report(
        {"pruned": model, "int8": int8_mlp(model)},
        data[0][0],
        batches=data,
        latency_batch_sizes=(1,),
        latency_repeats=1,
        latency_warmup=0,
        baseline_bytes=10_000,
    )
    assert [r["stage"] for r in rows] == ["pruned", "int8"]
    assert rows[1]["precision"] == "int8" and rows[1]["flops"] == 2 * 260
    assert rows[1]["flops_source"].startswith("layer hooks")
    for r in rows:
        assert r["compression_ratio"] == pytest.approx(10_000 / r["artifact_bytes"])
    assert abs(rows[1]["test_acc"] - rows[0]["test_acc"]) <= 0.1
    table = format_markdown(rows)
    assert table.splitlines()[0].startswith("| Stage |") and "| int8 |" in table and "thread" in table
    paths = write_report(rows, tmp_path, "rep", history=[{"epoch": 1, "weight_sparsity": 0.5, "lr": 0.1}])
    assert open(paths["markdown"]).read().count("\n| ") >= 3
    saved = json.load(open(paths["json"]))
    assert saved["rows"][1]["stage"] == "int8" and saved["history"][0]["lr"] == 0.1
    assert paths["png"].endswith(".png") and open(paths["png"], "rb").read(4) == b"\x89PNG"


def test_evaluate_classifier_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        evaluate_classifier(mlp(), [])
