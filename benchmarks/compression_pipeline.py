"""The compression pipeline on real MNIST against Deep Compression (Han et al. 2016).

Runs, through the ``lightning-optim`` CLI and the recipes in ``examples/``, the dense teacher
(``compress_<model>_teacher.yaml``, skipped when its checkpoint exists) and then the one-fit pipeline
(``compress_<model>.yaml``: pruning ramp, fine-tuning, QAT and int8 conversion, distillation from the
teacher during fine-tuning and QAT), then prints, side by side:

- the report table of the run (one row per stage);
- dense fp32 state-dict bytes / compact artifact bytes (the artifact holds the int8 TorchScript model:
  sparse indices + int8 values + LZMA, self-contained), and test error of the teacher and of the int8 model;
- CPU latency at batch 256 of the dense fp32 teacher and of the int8 model (reloaded from the artifact),
  measured interleaved in one run, and their ratio.

    .venv/bin/python -m benchmarks.compression_pipeline --data-dir ../shared/data --model lenet300
    .venv/bin/python -m benchmarks.compression_pipeline --data-dir ../shared/data --model lenet5
    .venv/bin/python -m benchmarks.compression_pipeline --data-dir ../shared/data --model lenet300 --epoch-scale 0.5

``--epoch-scale`` multiplies every epoch number of both recipes (for a quicker, weaker run; stated in the
output). Anchor: Han et al. 2016, LeNet-300-100 40x at 1.58% error, LeNet-5 (Caffe variant) 39x at 0.74%;
issue 7's targets: >= 40x at <= 1.64% and <= 0.80%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*is deprecated.*")

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"lenet300": (40.0, 1.64), "lenet5": (40.0, 0.80)}
EPOCH_KEYS = (
    "max_epochs",
    "start",
    "end",
    "start_epoch",
    "end_epoch",
    "freeze_observers_epoch",
    "freeze_bn_epoch",
    "T_max",
)


def _scale_epochs(node: Any, scale: float, parent_key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _scale_epochs(v, scale, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_scale_epochs(v, scale, parent_key) for v in node]
    if parent_key in EPOCH_KEYS and isinstance(node, int) and not isinstance(node, bool):
        return max(1, int(math.ceil(node * scale))) if node > 0 else 0
    return node


def _config(name: str, data_dir: str, out_dir: str, scale: float) -> str:
    """The recipe with ``data_dir``/output folder replaced and epochs scaled, written to a temp file."""
    text = (REPO / "examples" / name).read_text().replace("../shared/data", data_dir)
    text = text.replace("artifacts/", out_dir.rstrip("/") + "/")
    config = yaml.safe_load(text)
    if scale != 1.0:
        config = _scale_epochs(config, scale)
    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def _run_cli(config: str) -> float:
    start = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "lightning_optim.cli",
        "fit",
        "--config",
        config,
        "--trainer.enable_progress_bar",
        "false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return time.perf_counter() - start


def _teacher_error(model_name: str, ckpt: str, data_dir: str) -> tuple[torch.nn.Module, float, torch.Tensor]:
    from lightning_optim.data import ImageClassificationDataModule
    from lightning_optim.functional.compression_report.evaluate import evaluate_classifier
    from lightning_optim.models import LeNet5, LeNet300100
    from lightning_optim.weights import load_weights

    model = LeNet300100() if model_name == "lenet300" else LeNet5("caffe")
    load_weights(model, ckpt, "checkpoint")
    dm = ImageClassificationDataModule("mnist", data_dir=data_dir, batch_size=1000)
    dm.setup("test")
    batches = [(dm.to_model_input(x), y) for x, y in dm.test_dataloader()]
    result = evaluate_classifier(model.eval(), batches)
    return model, result["test_error_pct"], batches[0][0][:256]


def _report_dir(folder: Path) -> Path | None:
    """The newest folder under ``folder`` holding the pipeline's report (the logger's ``log_dir``)."""
    found = sorted(folder.rglob("compression_report.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", choices=["lenet300", "lenet5"], default="lenet300")
    parser.add_argument("--out-dir", default="artifacts/bench")
    parser.add_argument("--epoch-scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a finished pipeline run in --out-dir (measure only)"
    )
    parser.add_argument(
        "--size-check",
        metavar="CKPT",
        help="only the artifact format on trained weights: prune CKPT's network one-shot (global magnitude, "
        "--sparsity), quantize it post-training (x86, 10 calibration batches), and print sizes and test error",
    )
    parser.add_argument("--sparsity", type=float, default=0.95)
    args = parser.parse_args()
    if args.size_check:
        size_check(args)
        return

    from lightning_optim.functional.artifact import describe_artifact, load_artifact
    from lightning_optim.functional.compression_report.measure import compare_latency, state_dict_size_bytes

    out = os.path.abspath(os.path.join(args.out_dir, f"scale{args.epoch_scale:g}"))
    data_dir = os.path.abspath(args.data_dir)
    folder = Path(out) / f"compress_{args.model}"
    teacher_ckpt = folder / "teacher.ckpt"
    timings = {}
    if not teacher_ckpt.is_file():
        timings["teacher_s"] = _run_cli(
            _config(f"compress_{args.model}_teacher.yaml", data_dir, out, args.epoch_scale)
        )
    if args.reuse and _report_dir(folder) is not None:
        timings["pipeline_s"] = float("nan")
    else:
        timings["pipeline_s"] = _run_cli(
            _config(f"compress_{args.model}.yaml", data_dir, out, args.epoch_scale)
        )

    report_dir = _report_dir(folder)
    if report_dir is None:
        raise FileNotFoundError(f"No compression_report.json under {folder}.")
    report = json.loads((report_dir / "compression_report.json").read_text())
    rows = report["rows"]
    from lightning_optim.functional.compression_report.report import format_markdown

    teacher, teacher_err, x = _teacher_error(args.model, str(teacher_ckpt), data_dir)
    dense_bytes = state_dict_size_bytes(teacher)
    artifact = report_dir / "compression_report.lopt"
    int8 = load_artifact(str(artifact))
    final = rows[-1]
    ratio = dense_bytes / artifact.stat().st_size
    latency = compare_latency(
        {"dense fp32": teacher.eval(), "int8 artifact": int8}, x, repeats=20, warmup=5, rounds=args.rounds
    )
    speedup = latency["dense fp32"]["median_ms"] / latency["int8 artifact"]["median_ms"]
    target_ratio, target_err = TARGETS[args.model]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])

    print(f"\n## Compression pipeline: {args.model} on MNIST (epoch scale {args.epoch_scale:g})\n")
    print(format_markdown(rows, report.get("notes", [])))
    print("| Figure | Value | Target |\n|---|---|---|")
    print(f"| dense fp32 teacher test error | {teacher_err:.2f}% | |")
    print(
        f"| int8 pipeline model test error | {final.get('test_error_pct', float('nan')):.2f}% | <= {target_err}% |"
    )
    print(f"| weight sparsity of the final model | {100 * final['weight_sparsity']:.2f}% | |")
    print(
        f"| dense fp32 state dict / compact artifact | {dense_bytes:,} B / {artifact.stat().st_size:,} B = {ratio:.1f}x | >= {target_ratio:.0f}x |"
    )
    print(
        f"| CPU latency b=256, dense fp32 / int8 | {latency['dense fp32']['median_ms']:.3f} / {latency['int8 artifact']['median_ms']:.3f} ms = {speedup:.2f}x | >= 1.0x |"
    )
    print(
        f"| teacher / pipeline wall time | {timings.get('teacher_s', float('nan')):.0f} s / {timings['pipeline_s']:.0f} s | |"
    )
    print(f"\nArtifact parts: {json.dumps(describe_artifact(str(artifact))['streams'])}")
    print(
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load}."
    )
    print(f"Report: {report_dir / 'compression_report.md'} and .png")


def size_check(args: argparse.Namespace) -> None:
    """Artifact sizes of a trained network pruned one-shot and quantized post-training (no fine-tuning)."""
    import copy

    import torch.ao.quantization as tq
    from torch import nn

    from lightning_optim.functional.artifact import describe_artifact, pack_artifact, save_artifact
    from lightning_optim.functional.compression_report.evaluate import evaluate_classifier
    from lightning_optim.functional.compression_report.measure import state_dict_size_bytes, weight_sparsity

    data_dir = os.path.abspath(args.data_dir)
    model, dense_err, x = _teacher_error(args.model, args.size_check, data_dir)
    dense_bytes = state_dict_size_bytes(model)
    pruned = copy.deepcopy(model)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        flat = torch.cat([w.abs().flatten() for w in weights])
        threshold = flat.kthvalue(int(args.sparsity * flat.numel())).values
        for w in weights:
            w.mul_(w.abs() > threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = tq.QuantWrapper(copy.deepcopy(pruned)).eval()
        q.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(q, inplace=True)
        from lightning_optim.data import ImageClassificationDataModule

        dm = ImageClassificationDataModule("mnist", data_dir=data_dir, batch_size=256)
        dm.setup("fit")
        with torch.no_grad():
            for i, (xb, _) in enumerate(dm.train_dataloader()):
                if i >= 10:
                    break
                q(dm.to_model_input(xb))
        q = tq.convert(q)
    dm.setup("test")
    batches = [(dm.to_model_input(xb), yb) for xb, yb in dm.test_dataloader()]
    rows = [
        ("dense fp32 (state dict)", dense_bytes, dense_err),
        (
            "pruned fp32, artifact",
            len(save_artifact(pruned, example_input=x[:8])),
            evaluate_classifier(pruned, batches)["test_error_pct"],
        ),
    ]
    int8_err = evaluate_classifier(q, batches)["test_error_pct"]
    int8_blob = save_artifact(q, example_input=x[:8])
    rows.append(("pruned int8, artifact (state dict)", len(int8_blob), int8_err))
    rows.append(
        (
            "pruned int8, artifact (TorchScript, self-contained)",
            len(pack_artifact(q, torchscript=True)),
            int8_err,
        )
    )
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(
        f"\n## Artifact size check: {args.model}, {args.size_check}, one-shot global magnitude pruning to "
        f"{100 * args.sparsity:.0f}% + post-training int8 (no fine-tuning)\n"
    )
    print(f"weight sparsity: {100 * weight_sparsity(pruned):.2f}%\n")
    print("| Model | Bytes | Ratio vs dense fp32 | Test error |\n|---|---|---|---|")
    for name, size, err in rows:
        print(f"| {name} | {size:,} | {dense_bytes / size:.1f}x | {err:.2f}% |")
    parts = describe_artifact(int8_blob)
    print(
        f"\nint8 state-dict artifact, compressed bytes per stream: {json.dumps({k: v['compressed'] for k, v in parts['streams'].items()})}, header {parts['header_bytes']}"
    )
    print(f"Machine: {os.cpu_count()} cores, torch {torch.__version__}; load average {load}.")


if __name__ == "__main__":
    main()
