"""The one Markdown table: its exact text, the cell formats, and both reports drawn with it."""

from __future__ import annotations

import pytest

from lightning_optim.functional.compression_report import markdown
from lightning_optim.functional.compression_report.markdown import format_cell, markdown_table
from lightning_optim.functional.quantization.report import QuantizationReport, format_report


def test_table_text():
    assert markdown_table(["a", "b"], [[1, "x"], ["", 2.5]]) == "| a | b |\n|---|---|\n| 1 | x |\n| | 2.5 |"
    assert markdown_table(["", "n"], [], ["left", "right"]) == "| | n |\n|:---|---:|"
    assert markdown_table(["c"], [["v"]], ["center"]).splitlines()[1] == "|:---:|"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rows": [[1]]}, "a row of 1 cells for 2 columns"),
        ({"rows": [], "align": ["left"]}, "1 alignments for 2 columns"),
        ({"rows": [], "align": ["left", "up"]}, "Unknown `align` 'up'"),
    ],
)
def test_table_refuses_mismatches(kwargs, match):
    with pytest.raises(ValueError, match=match):
        markdown_table(["a", "b"], **kwargs)


@pytest.mark.parametrize(
    "value, kind, text",
    [
        (None, "int", "-"),
        (float("nan"), "float", "-"),
        (1234567, "int", "1,234,567"),
        (0.95512, "pct", "95.51%"),
        (2048, "bytes", "2.0 KiB"),
        (3 * 1024**2, "bytes", "3.00 MiB"),
        (41.26, "ratio", "41.3x"),
        (1234.5678, "float", "1,234.57"),
        (0.12345, "float3", "0.123"),
        ("int8", "str", "int8"),
    ],
)
def test_cells(value, kind, text):
    assert format_cell(value, kind) == text


def test_quantization_report_is_drawn_by_the_same_table(monkeypatch):
    report = QuantizationReport(
        fp32_accuracy=0.99,
        int8_accuracy=0.9885,
        fp32_state_dict_bytes=1_000_000,
        int8_state_dict_bytes=260_000,
        artifact_bytes=100_000,
        artifact_kind="compact artifact (.lopt)",
        latency_ms={4: {"fp32_eager": 2.0, "fp32_best": 1.0, "fp32_best_method": "compile", "int8": 0.5}},
        threads=2,
    )
    text = format_report(report, "QAT: fp32 vs int8")
    lines = text.splitlines()
    assert lines[:8] == [
        "### QAT: fp32 vs int8",
        "",
        "| | fp32 | int8 | ratio |",
        "|---|---:|---:|---:|",
        "| accuracy (%) | 99.00 | 98.85 | -0.15 pt |",
        "| state dict (bytes) | 1,000,000 | 260,000 | 3.85x smaller |",
        "| fp32 state dict vs int8 compact artifact (.lopt) (bytes) | 1,000,000 | 100,000 | 10.00x smaller |",
        "| latency batch 4 (ms, median) | eager 2.000 / compile 1.000 | 0.500 | 4.00x vs eager, 2.00x vs best |",
    ]
    assert lines[8] == "" and lines[9].startswith("CPU threads: 2; load average: ")
    drawn = []
    original = markdown.markdown_table

    def spy(*args, **kwargs):
        drawn.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr("lightning_optim.functional.quantization.report.markdown_table", spy)
    assert format_report(report, "QAT: fp32 vs int8") == text and drawn == [["", "fp32", "int8", "ratio"]]
