"""The block-pruning and int8-coverage benchmarks, run in-process on tiny settings: what they choose, count and
print (the issue's last lines). No assertion on wall times."""

from __future__ import annotations

import re

import pytest


def test_block_pruning_removes_the_requested_blocks_and_reports():
    from benchmarks.pruning_blocks import report, run_block_pruning

    result = run_block_pruning(
        "resnet50",
        image_size=32,
        batch_size=2,
        importance_batches=1,
        repeats=1,
        warmup=0,
        rounds=1,
        ranking="loss_per_latency",
        shortcuts=True,
        log=lambda _: None,
    )
    assert len(result["candidates"]) == 16 and len(result["removed"]) == 4
    assert set(result["removed"]) <= set(result["candidates"])
    assert (
        result["macs"]["pruned"] < result["macs"]["dense"]
        and result["params"]["pruned"] < result["params"]["dense"]
    )
    last = report(result, [])[-1]
    assert re.match(
        r"^block pruning: resnet50 4/16 blocks removed \(25%\), params -\d+%, MACs -\d+%, speedup \d+\.\d\dx",
        last,
    )


def test_int8_coverage_runs_on_the_zoo_and_prints_its_last_line(capsys):
    """Every path of the benchmark on one zoo model. Batch 1 only (``--batch-size 1``, calibrated and compiled at
    batch 1): each compiled model (fp32 compile, the lowered int8 one) compiles for one input shape instead of
    two (``lower`` still tries its dynamic compile first, checked at batch 1 and 2, as at the default sizes)."""
    pytest.importorskip("onnxruntime")
    from benchmarks.quantization_coverage import main

    rows = main(
        [
            "--models", "convnet3", "--batch-size", "1", "--calibration-batch-size", "1",
            "--calibration-batches", "2", "--eval-samples", "16", "--repeats", "1", "--warmup", "1", "--rounds", "1",
        ]
    )  # fmt: skip
    assert len(rows) == 1
    assert rows[0].status == "ok", rows[0].failures  # every stage ran, latency included
    # our ONNX file is ONNX Runtime's QDQ of the float network here: quantized and timed once, reported for both
    assert any("the same file as ours ONNX" in n for n in rows[0].notes), rows[0].notes
    assert rows[0].sizes["ORT QDQ"] == rows[0].sizes["ours ONNX"]
    assert rows[0].latency[1]["ORT QDQ"] == rows[0].latency[1]["ours ONNX"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(
        r"^int8 coverage: 1/1 models; resnet18 b1 vs best fp32 .*; b1 vs ORT QDQ .*; pruned\+int8 resnet18",
        last,
    ), last


def test_quantization_accuracy_report_gives_mean_and_worst():
    """The accuracy benchmark's table from recorded seeds (the fits are the benchmark's, not the suite's)."""
    from benchmarks.quantization_accuracy import report_dense

    rows = [
        {
            "seed": seed,
            "fp32_error": fp32,
            "ptq_error": fp32 + 0.02 * seed,
            "ptq_agreement": 0.999,
            "qat_error": fp32 + 0.04,
            "qat_agreement": 0.995 - 0.001 * seed,
            "pruned_int8_error": fp32 + 0.3,
            "latency_ms": {"dense fp32 eager": 44.0, "dense fp32 compile": 40.0, "pruned int8": 8.0},
            "fp32_state_dict_bytes": 44_000_000,
            "pt2_bytes": 10_000_000,
        }
        for seed, fp32 in enumerate([0.7, 0.8, 0.9])
    ]
    text = report_dense(rows)
    assert (
        "| 1 | 0.80 | 0.82 (0.9990) | 0.84 (0.9940) | 1.10 | 44.0 / 40.0 / 8.0 | 5.50x / 5.00x | 4.40x |"
        in text
    )
    assert "PTQ - fp32 (pt): mean +0.02, worst +0.04" in text
    assert "QAT agreement: mean 0.9940, worst 0.9930" in text
