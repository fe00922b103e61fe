"""The flagship benchmark (benchmarks/flagship.py): the recipes it runs parse and instantiate through the CLI,
the no-distillation variant differs from the flagship by distillation only, and the report computes its last line
from the recorded results. The fits themselves are the benchmark's (minutes each), not the suite's."""

from __future__ import annotations

import json
import re

import yaml

from benchmarks import flagship


def _names(config):
    return [flagship._class_name(c) for c in config["trainer"]["callbacks"]]


def test_recipes_are_rewritten_per_seed_and_the_no_kd_variant_drops_distillation_only(tmp_path):
    teacher = flagship.recipe_for("teacher", 3, tmp_path, "/data")
    student = flagship.recipe_for("flagship", 3, tmp_path, "/data", limit_train_batches=0.01)
    no_kd = flagship.recipe_for("no_kd", 3, tmp_path, "/data")
    text = yaml.safe_dump([teacher, student, no_kd])
    assert flagship.RECIPE_DIR not in text and str(tmp_path) in text
    assert teacher["seed_everything"] == student["seed_everything"] == 3
    assert student["trainer"]["limit_train_batches"] == 0.01
    assert "KnowledgeDistillation" in _names(student) and "KnowledgeDistillation" not in _names(no_kd)
    assert [n for n in _names(student) if n != "KnowledgeDistillation"] == _names(no_kd)
    pipeline = next(
        c for c in no_kd["trainer"]["callbacks"] if flagship._class_name(c) == "CompressionPipeline"
    )
    assert pipeline["init_args"]["distill"] is False
    assert student["model"] == no_kd["model"] and student["data"] == no_kd["data"]


def test_the_recipes_instantiate_through_the_cli(tmp_path):
    """Both recipe files, as the benchmark writes them, build the Trainer, the module and the data module."""
    import torch
    import torchvision

    from lightning_optim.cli import build_cli

    network = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in network.items()}}, tmp_path / "teacher.ckpt")
    for step in flagship.STEPS:
        config = flagship.recipe_for(step, 0, tmp_path, str(tmp_path / "data"))
        path = tmp_path / f"{step}.yaml"
        path.write_text(yaml.safe_dump(config))
        cli = build_cli(["--config", str(path)], run=False)
        assert type(cli.model.model).__name__ == "ResNet"
        assert cli.datamodule.channels == 3
        names = [type(c).__name__ for c in cli.trainer.callbacks]
        assert ("KnowledgeDistillation" in names) == (step == "flagship")


def test_report_gives_the_issue_last_line(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = []
    for seed, (dense, flag, nokd) in enumerate([(0.6, 0.8, 1.0), (0.7, 0.8, 1.1)]):
        rows += [
            {"seed": seed, "step": "teacher", "fp32_error": dense, "fp32_state_dict_bytes": 45_000_000},
            {
                "seed": seed,
                "step": "flagship",
                "onnx_error": flag,
                "pt2_error": flag,
                "bytes": {"onnx": 3_000_000, "pt2": 2_800_000},
                "latency_ms": {
                    "dense fp32 eager": 60.0,
                    "dense fp32 compile": 45.0,
                    "int8 ONNX Runtime": 7.5,
                    "int8 .pt2 compile": 20.0,
                },
                "load": 1.0,
            },
            {"seed": seed, "step": "no_kd", "onnx_error": nokd, "pt2_error": nokd, "bytes": {}},
        ]
    results.write_text("\n".join(json.dumps(r) for r in rows))
    text = flagship.report(results, [0, 1])
    last = text.splitlines()[-1]
    # means: dense 0.65, flagship 0.80, no KD 1.05: KD closes (1.05 - 0.80) / (1.05 - 0.65) = 62%
    assert last == (
        "flagship resnet18: 8.0x faster (vs eager), 6.0x (vs compiled), 15.0x smaller, error 0.80% (dense 0.65%), "
        "KD closes 62% of the gap"
    ), last
    assert re.search(r"\| 0 \| 0\.60 \| 0\.80 / 0\.80 \| 1\.00 \| 50% \|", text)


def test_a_quiet_remeasurement_replaces_the_latency_of_the_run(tmp_path):
    results = tmp_path / "results.jsonl"
    latency = {
        "dense fp32 eager": 60.0,
        "dense fp32 compile": 45.0,
        "int8 ONNX Runtime": 7.5,
        "int8 .pt2 compile": 20.0,
    }
    rows = [
        {"seed": 0, "step": "teacher", "fp32_error": 0.6, "fp32_state_dict_bytes": 45_000_000},
        {
            "seed": 0,
            "step": "flagship",
            "onnx_error": 0.8,
            "pt2_error": 0.8,
            "bytes": {"onnx": 3_000_000, "pt2": 2_800_000},
            "latency_ms": latency,
            "load": 3.0,
        },
        {"seed": 0, "step": "no_kd", "onnx_error": 1.0, "pt2_error": 1.0, "bytes": {}},
        {"seed": 0, "step": "latency", "latency_ms": {**latency, "int8 ONNX Runtime": 6.0}, "load": 0.4},
    ]
    results.write_text("\n".join(json.dumps(r) for r in rows))
    text = flagship.report(results, [0])
    assert "| 10.00x / 7.50x |" in text and "| 0.40 |" in text
    assert text.splitlines()[-1].startswith("flagship resnet18: 10.0x faster (vs eager), 7.5x (vs compiled)")
