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
    pytest.importorskip("onnxruntime")
    from benchmarks.quantization_coverage import main

    rows = main(
        [
            "--models",
            "convnet3",
            "--batch-size",
            "4",
            "--calibration-batches",
            "2",
            "--eval-samples",
            "16",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--rounds",
            "1",
        ]
    )
    assert len(rows) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(
        r"^int8 coverage: 1/1 models; resnet18 b4 vs best fp32 .*; b1 vs ORT QDQ .*; pruned\+int8 resnet18",
        last,
    ), last
