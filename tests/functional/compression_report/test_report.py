"""The report's rows, ratios, table and files on a 2-layer MLP whose figures are computed by hand."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_optim.functional.compression_report.report import (
    TABLE_COLUMNS,
    add_ratios,
    compression_report,
    format_markdown,
    write_report,
)
from tests.functional.compression_report import batches
from tests.nets import int8_mlp, mlp


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


def test_ratios_refer_to_the_first_row_or_the_given_baseline():
    rows = add_ratios([{"state_dict_bytes": 4000, "artifact_bytes": 1000}, {"artifact_bytes": 250}, {}])
    assert [r.get("compression_ratio") for r in rows] == [4.0, 16.0, None]
    assert all(r["baseline_bytes"] == 4000 for r in rows)
    assert add_ratios([{"artifact_bytes": 100}], baseline_bytes=1000)[0]["compression_ratio"] == 10.0
    assert add_ratios([]) == []


def test_markdown_table_of_rows_exactly():
    rows = [
        {"stage": "dense", "parameters": 1234567, "weight_sparsity": 0.0, "state_dict_bytes": 2048},
        {"stage": "pruned", "parameters": 1234567, "weight_sparsity": 0.955, "latency_ms_b8": 1.23456},
    ]
    lines = format_markdown(rows, notes=["a note"]).splitlines()
    assert lines[:4] == [
        "| Stage | Params | Weight sparsity | State dict | Latency b=8 (ms) |",
        "|---|---|---|---|---|",
        "| dense | 1,234,567 | 0.00% | 2.0 KiB | - |",
        "| pruned | 1,234,567 | 95.50% | - | 1.235 |",
    ]
    assert (
        lines[4] == "" and lines[-1] == "- a note" and lines[5].startswith("- Latency: CPU, median of ? runs")
    )
    assert {h for _, h, _ in TABLE_COLUMNS} >= {"Stage", "Params", "Weight sparsity", "State dict"}
