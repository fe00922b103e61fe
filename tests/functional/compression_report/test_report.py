"""The report's rows, ratios, table and files on a 2-layer MLP whose figures are computed by hand."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lightning_optim.functional.compression_report.report import (
    TABLE_COLUMNS,
    add_ratios,
    compression_report,
    display_path,
    format_markdown,
    format_paths,
    model_label,
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
    with pytest.warns(UserWarning, match="needs the model's code"):  # eager int8: no exported program
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
    assert [r["artifact_format"] for r in rows] == ["exported_program", "state_dict"]
    table = format_markdown(rows)
    assert table.splitlines()[0].startswith("| Stage |") and "| int8 |" in table and "thread" in table
    # rows say what they measured; the notes say what each .lopt holds
    assert "| fp32 (89.2% sparse) |" in table and "| int8 (" in table
    assert (
        "exported program (self-contained" in table
        and "state dict (rebuilding a model needs its code" in table
    )
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
        "| Stage | Parameters | Weight sparsity | State dict (torch.save) | Latency b=8 (ms) |",
        "|---|---|---|---|---|",
        "| dense | 1,234,567 | 0.00% | 2.0 KiB | - |",
        "| pruned | 1,234,567 | 95.50% | - | 1.235 |",
    ]
    assert (
        lines[4] == "" and lines[-1] == "- a note" and lines[5].startswith("- Latency: CPU, median of ? runs")
    )
    assert {h for _, h, _ in TABLE_COLUMNS} >= {"Stage", "Model", "Parameters", "Weight sparsity"}


def test_rows_are_labelled_by_what_they_measured():
    rows = [
        {
            "stage": "fit start",
            "precision": "fp32",
            "weight_sparsity": 0.0,
            "artifact_format": "exported_program",
        },
        {
            "stage": "pruning done",
            "precision": "fp32",
            "weight_sparsity": 0.8,
            "artifact_format": "exported_program",
        },
        {"stage": "quantization starts", "precision": "fake-quant", "weight_sparsity": 0.8},
        {"stage": "int8", "precision": "int8", "weight_sparsity": 0.955, "artifact_format": "state_dict"},
    ]
    assert [model_label(r) for r in rows] == [
        "fp32 (dense)",
        "fp32 (80% sparse)",
        "fp32 + fake-quant (QAT)",
        "int8 (95.5% sparse)",
    ]
    lines = format_markdown(rows).splitlines()
    assert lines[0] == "| Stage | Model | Weight sparsity |"
    assert (
        lines[2] == "| fit start | fp32 (dense) | 0.00% |"
        and lines[5] == "| int8 | int8 (95.5% sparse) | 95.50% |"
    )
    # no internal keys in the table: every header is words, and no cell shows a row key such as "fake-quant"
    table = "\n".join(lines[:6])
    assert "precision" not in table and "weight_sparsity" not in table and "| fake-quant |" not in table
    note = next(line for line in lines if line.startswith("- Compact .lopt"))
    assert "exported program" in note and "for fit start, pruning done" in note and "state dict" in note
    assert "for int8" in note


def test_paths_are_printed_one_per_line_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {
        "markdown": str(tmp_path / "logs" / "r.md"),
        "json": str(tmp_path / "logs" / "r.json"),
        "png": str(tmp_path / "logs" / "r.png"),
        "artifact": str(tmp_path / "logs" / "r.lopt"),
    }
    text = format_paths(paths, artifact_format="exported_program")
    assert text.splitlines() == [
        f"Compression report: {os.path.join('logs', 'r.md')}",
        f"  data: {os.path.join('logs', 'r.json')}",
        f"  plot: {os.path.join('logs', 'r.png')}",
        f"  artifact: {os.path.join('logs', 'r.lopt')} (exported program (self-contained: torch alone loads and "
        "runs it, load_artifact(path)))",
    ]
    elsewhere = tmp_path.parent / "elsewhere.md"
    assert (
        format_paths({"markdown": str(elsewhere)}, cwd=tmp_path / "logs")
        == f"Compression report: {elsewhere}"
    )
    assert display_path(tmp_path / "logs", cwd=tmp_path) == "logs"
