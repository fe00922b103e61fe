"""int8 accuracy on MNIST (issue 24): torchvision ResNet-18, PT2E PTQ and QAT against fp32, and structured 50% + int8.

Per seed, on the 10,000 MNIST test images (the model of ``benchmarks.pruning_accuracy``: torchvision resnet18,
``weights=None``, a 1-channel first convolution, 10 classes; AdamW, one-cycle LR per step):

1. **dense fp32**: ``--epochs`` epochs; its test error and its test predictions;
2. **PTQ**: ``PostTrainingQuantization(backend="pt2e")`` on the dense model through ``trainer.validate``
   (``--calibration-batches`` training batches), then the int8 model's test error and its argmax agreement with
   the fp32 predictions; the ``.pt2`` deploy file's size against the fp32 state dict;
3. **QAT**: the dense weights fine-tuned for ``--qat-epochs`` epoch(s) under ``QuantizationAwareTraining(backend=
   "pt2e")`` at a small constant LR (``--qat-lr``; BN statistics and ranges frozen for the last epoch part), then
   int8: test error and agreement;
4. **pruned + int8**: the same fit as ``pruning_accuracy``'s pruned one (``ProgressivePruning(granularity=
   "channel_groups")`` to ``--sparsity``, ramp over epochs 0..``--ramp-epochs``), with
   ``QuantizationAwareTraining(backend="pt2e", start_after="pruning")`` in the last epoch (the pruned network
   compacted before QAT): its int8 test error against the dense one;
5. **latency** at batch ``--batch-size-latency`` (1 thread, interleaved, 28x28 inputs): dense fp32 eager, dense
   fp32 ``torch.compile``, the pruned int8 model lowered with ``torch.compile`` (inductor int8 kernels).

``--mode pruned_ptq`` runs instead, per seed, the pruned fit of ``pruning_accuracy`` (no QAT), then
``PostTrainingQuantization(backend="pt2e", export_format=["pt2", "onnx"])`` on it: the test error of the PT2E
int8 model and of the ONNX deploy file run in ONNX Runtime (ONNX Runtime's own quantizer on the pruned network,
the callbacks' PTQ ONNX file), against the dense error of the same seed from ``results.jsonl``, and the latency
at batch ``--batch-size-latency`` of that ONNX file in ONNX Runtime against dense fp32 eager and compile (a dense
resnet18 of the same architecture; its weights do not change its fp32 latency), interleaved.

Each seed's results go to ``--out-dir/results.jsonl`` (``results_pruned_ptq.jsonl``; a rerun skips the seeds
done); the table at the end has every seed, the mean and the worst.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.quantization_accuracy --data-dir ../shared/data --seeds 0 1 2 --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.quantization_accuracy --data-dir ../shared/data --seeds 0 1 2 --threads 1 --mode pruned_ptq
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.quantization_accuracy --mode latency --threads 1

``--mode latency`` times the 28 px paths alone (see :func:`latency_28px`), for a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import statistics
import time
import warnings
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

from benchmarks._trainer import quiet_trainer_kwargs
from benchmarks.pruning_accuracy import build
from lightning_optim.callbacks import (
    LRScheduling,
    PostTrainingQuantization,
    ProgressivePruning,
    QuantizationAwareTraining,
)
from lightning_optim.callbacks._trainer import eval_batches
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.measure import compare_latency
from lightning_optim.modules import ClassificationModule

warnings.filterwarnings("ignore", ".*is deprecated.*")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _predict(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for x, y in batches:
            preds.append(model(x).argmax(1))
            targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def _error(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 100.0 * float((pred != target).float().mean())


def _trainer(args: argparse.Namespace, root: str, epochs: int, callbacks: list, **kw: Any) -> Trainer:
    options = quiet_trainer_kwargs(
        max_epochs=epochs,
        limit_train_batches=args.limit_train_batches,
        limit_val_batches=2,
        default_root_dir=root,
    )
    options.update(kw)
    return Trainer(callbacks=callbacks, **options)


def _pruned_fit_parts(
    args: argparse.Namespace, compact_at_end: bool
) -> tuple[ClassificationModule, ProgressivePruning]:
    """The module and the pruning callback of ``pruning_accuracy``'s pruned fit (call after seeding)."""
    module = ClassificationModule(build("resnet18"), optimizer="adamw", lr=args.lr, weight_decay=1e-4)
    pruning = ProgressivePruning(
        final_sparsity=args.sparsity,
        start=0,
        end=args.ramp_epochs,
        unit="epoch",
        granularity="channel_groups",
        compact_at_end=compact_at_end,
        verbose=False,
    )
    return module, pruning


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    root = os.path.join(args.out_dir, f"seed{seed}")
    dm = ImageClassificationDataModule("mnist", data_dir=args.data_dir, batch_size=args.batch_size)
    dm.setup("fit")
    row: dict[str, Any] = {"seed": seed}

    # 1. dense fp32
    seed_everything(seed, workers=True)
    dense = ClassificationModule(build("resnet18"), optimizer="adamw", lr=args.lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    trainer = _trainer(
        args, root + "/dense", args.epochs, [LRScheduling("one_cycle", interval="step", log_momentum=False)]
    )
    trainer.fit(dense, datamodule=dm)
    test = list(eval_batches(trainer, dense, "test"))
    fp32_pred, target = _predict(dense.model, test)
    row["fp32_error"] = _error(fp32_pred, target)
    row["dense_s"] = time.perf_counter() - t0
    _log(f"seed {seed}: dense fp32 test error {row['fp32_error']:.2f}% ({row['dense_s']:.0f} s)")
    fp32_state = io.BytesIO()
    torch.save(dense.model.state_dict(), fp32_state)
    row["fp32_state_dict_bytes"] = len(fp32_state.getvalue())
    dense_weights = copy.deepcopy(dense.model.state_dict())

    # 2. PTQ
    ptq_module = ClassificationModule(build("resnet18"))
    ptq_module.model.load_state_dict(dense_weights)
    ptq = PostTrainingQuantization(
        backend="pt2e", calibration_batches=args.calibration_batches, report=False, verbose=False
    )
    Trainer(
        callbacks=[ptq], **quiet_trainer_kwargs(default_root_dir=root + "/ptq", limit_val_batches=1)
    ).validate(ptq_module, datamodule=dm, verbose=False)
    pred, _ = _predict(ptq.quantized_model, test)
    row["ptq_error"] = _error(pred, target)
    row["ptq_agreement"] = float((pred == fp32_pred).float().mean())
    row["pt2_bytes"] = ptq.exported_path.stat().st_size
    _log(f"seed {seed}: PTQ int8 error {row['ptq_error']:.2f}%, agreement {row['ptq_agreement']:.4f}")

    # 3. QAT fine-tune from the dense weights
    seed_everything(seed, workers=True)
    qat_module = ClassificationModule(build("resnet18"), optimizer="adamw", lr=args.qat_lr, weight_decay=1e-4)
    qat_module.model.load_state_dict(dense_weights)
    qat = QuantizationAwareTraining(
        backend="pt2e",
        start_epoch=0,
        freeze_bn_epoch=args.qat_epochs - 1 if args.qat_epochs > 1 else None,
        report=False,
        verbose=False,
    )
    _trainer(args, root + "/qat", args.qat_epochs, [qat]).fit(qat_module, datamodule=dm)
    pred, _ = _predict(qat.quantized_model, test)
    row["qat_error"] = _error(pred, target)
    row["qat_agreement"] = float((pred == fp32_pred).float().mean())
    _log(f"seed {seed}: QAT int8 error {row['qat_error']:.2f}%, agreement {row['qat_agreement']:.4f}")

    # 4. structured pruning then QAT in the last epoch
    seed_everything(seed, workers=True)
    pruned, pruning = _pruned_fit_parts(args, compact_at_end=False)
    pqat = QuantizationAwareTraining(
        backend="pt2e", start_epoch=args.epochs - 1, start_after="pruning", report=False, verbose=False
    )
    t0 = time.perf_counter()
    _trainer(
        args,
        root + "/pruned",
        args.epochs,
        [pruning, pqat, LRScheduling("one_cycle", interval="step", log_momentum=False)],
    ).fit(pruned, datamodule=dm)
    pred, _ = _predict(pqat.quantized_model, test)
    row["pruned_int8_error"] = _error(pred, target)
    row["pruned_s"] = time.perf_counter() - t0
    _log(f"seed {seed}: pruned 50% + int8 error {row['pruned_int8_error']:.2f}% ({row['pruned_s']:.0f} s)")

    # 5. latency at batch 64, interleaved
    lowered = pqat.backend.lower(pqat.quantized_model, torch.zeros(2, 1, 28, 28))
    runners = {
        "dense fp32 eager": dense.model.eval(),
        "dense fp32 compile": torch.compile(copy.deepcopy(dense.model).eval()),
        "pruned int8": lowered,
    }
    x = torch.randn(args.batch_size_latency, 1, 28, 28)
    result = compare_latency(runners, x, repeats=args.repeats, warmup=3, rounds=3, threads=args.threads)
    row["latency_ms"] = {k: v["median_ms"] for k, v in result.items()}
    row["load"] = os.getloadavg()[0]
    _log(f"seed {seed}: latency b{args.batch_size_latency} {row['latency_ms']}")
    return row


def run_pruned_ptq(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from lightning_optim.functional.quantization import OnnxRunner, read_onnx_metadata

    root = os.path.join(args.out_dir, f"pruned_ptq_seed{seed}")
    dm = ImageClassificationDataModule("mnist", data_dir=args.data_dir, batch_size=args.batch_size)
    dm.setup("fit")
    seed_everything(seed, workers=True)
    pruned, pruning = _pruned_fit_parts(args, compact_at_end=True)
    t0 = time.perf_counter()
    trainer = _trainer(
        args, root, args.epochs, [pruning, LRScheduling("one_cycle", interval="step", log_momentum=False)]
    )
    trainer.fit(pruned, datamodule=dm)
    test = list(eval_batches(trainer, pruned, "test"))
    float_pred, target = _predict(pruned.model, test)
    row: dict[str, Any] = {"seed": seed, "pruned_fp32_error": _error(float_pred, target)}
    ptq = PostTrainingQuantization(
        backend="pt2e",
        calibration_batches=args.calibration_batches,
        export_format=["pt2", "onnx"],
        report=False,
        verbose=False,
        replace_model=False,
    )
    Trainer(
        callbacks=[ptq], **quiet_trainer_kwargs(default_root_dir=root + "/ptq", limit_val_batches=1)
    ).validate(pruned, datamodule=dm, verbose=False)
    pred, _ = _predict(ptq.quantized_model, test)
    row["pruned_pt2e_int8_error"] = _error(pred, target)
    runner = OnnxRunner(ptq.exported_paths["onnx"], threads=args.threads)
    onnx_pred = torch.cat([runner(x).argmax(1) for x, _ in test])
    row["pruned_onnx_int8_error"] = _error(onnx_pred, target)
    row["onnx_bytes"] = ptq.exported_paths["onnx"].stat().st_size
    row["onnx_format"] = read_onnx_metadata(ptq.exported_paths["onnx"])["format"]
    row["s"] = time.perf_counter() - t0
    _log(
        f"seed {seed}: pruned fp32 {row['pruned_fp32_error']:.2f}%, PT2E int8 {row['pruned_pt2e_int8_error']:.2f}%, "
        f"ONNX (ORT) int8 {row['pruned_onnx_int8_error']:.2f}%"
    )
    dense = build("resnet18").eval()
    runners = {
        "dense fp32 eager": dense,
        "dense fp32 compile": torch.compile(copy.deepcopy(dense)),
        "pruned int8 ONNX Runtime": runner,
    }
    x = torch.randn(args.batch_size_latency, 1, 28, 28)
    result = compare_latency(runners, x, repeats=args.repeats, warmup=3, rounds=3, threads=args.threads)
    row["latency_ms"] = {k: v["median_ms"] for k, v in result.items()}
    row["load"] = os.getloadavg()[0]
    _log(f"seed {seed}: latency b{args.batch_size_latency} {row['latency_ms']}")
    return row


def latency_28px(args: argparse.Namespace) -> None:
    """``--mode latency``: batch ``--batch-size-latency`` at 28 px, interleaved, on a quiet machine: dense resnet18
    fp32 eager / compile / PT2E int8 (inductor) and the same network with 50% of its channel groups removed
    (``prune_channels``, the widths ``ProgressivePruning(granularity="channel_groups")`` leaves at 50%) in fp32
    eager / compile, PT2E int8, ONNX Runtime's QDQ file (as the PTQ callback writes it) and the PT2E int8 graph's
    ONNX file with its residual adds calibrated (as QAT writes it). Random weights: the latency does not depend
    on them."""
    import tempfile

    from lightning_optim.functional.pruning.groups import prune_channels
    from lightning_optim.functional.quantization import (
        OnnxRunner,
        Pt2eBackend,
        export_quantized,
        quantize_onnx_static,
    )

    torch.manual_seed(0)
    dense = build("resnet18").train()
    with torch.no_grad():
        for _ in range(3):
            dense(torch.randn(16, 1, 28, 28))
    dense.eval()
    x = torch.randn(16, 1, 28, 28)
    pruned = prune_channels(dense, x, args.sparsity)[0].eval()

    folder = tempfile.mkdtemp()
    graphs: dict[str, Any] = {}

    def pt2e(model: torch.nn.Module, name: str) -> Any:
        backend = Pt2eBackend(example_input=x)
        observed, _ = backend.prepare_ptq(model)
        backend.calibrate(observed, [x])
        quantized = backend.convert(observed)
        # the ONNX file QAT writes: the int8 graph, its residual adds calibrated (complete_qdq)
        graphs[name] = export_quantized(
            quantized, f"{folder}/{name}_graph.onnx", "onnx", x, backend=backend, calibration=[x]
        )
        return backend.lower(quantized, x[:2])

    runners = {
        "dense fp32 eager": dense,
        "dense fp32 compile": torch.compile(copy.deepcopy(dense)),
        "dense int8 PT2E": pt2e(dense, "dense"),
        "pruned fp32 eager": pruned,
        "pruned fp32 compile": torch.compile(copy.deepcopy(pruned)),
        "pruned int8 PT2E": pt2e(pruned, "pruned"),
        "pruned int8 ONNX Runtime": OnnxRunner(
            quantize_onnx_static(pruned, folder + "/pruned.onnx", x, [x]), threads=args.threads
        ),
    }
    runners["pruned int8 PT2E graph ONNX"] = OnnxRunner(graphs["pruned"], threads=args.threads)
    xb = torch.randn(args.batch_size_latency, 1, 28, 28)
    result = compare_latency(runners, xb, repeats=args.repeats, warmup=3, rounds=3, threads=args.threads)
    eager, compiled = result["dense fp32 eager"]["median_ms"], result["dense fp32 compile"]["median_ms"]
    print(f"\nbatch {args.batch_size_latency}, 28 px, {args.threads} thread(s), load {os.getloadavg()}")
    print("| path | ms | vs dense fp32 eager | vs dense fp32 compile |\n|---|---:|---:|---:|")
    for name, r in result.items():
        ms = r["median_ms"]
        print(f"| {name} | {ms:.1f} | {eager / ms:.2f}x | {compiled / ms:.2f}x |")


def report_dense(rows: list[dict[str, Any]]) -> str:
    """The table of the dense-mode seeds and the mean/worst lines."""
    lines: list[str] = []
    lines.append(
        "\n| seed | fp32 error % | PTQ int8 % (agreement) | QAT int8 % (agreement) | pruned 50% + int8 % | "
        "b64 ms: dense eager / dense compile / pruned int8 | pruned int8 vs eager / vs compile | .pt2 vs fp32 |"
    )
    lines.append("|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        lat = r["latency_ms"]
        e, c, q = lat["dense fp32 eager"], lat["dense fp32 compile"], lat["pruned int8"]
        lines.append(
            f"| {r['seed']} | {r['fp32_error']:.2f} | {r['ptq_error']:.2f} ({r['ptq_agreement']:.4f}) | "
            f"{r['qat_error']:.2f} ({r['qat_agreement']:.4f}) | {r['pruned_int8_error']:.2f} | {e:.1f} / {c:.1f} / {q:.1f} | "
            f"{e / q:.2f}x / {c / q:.2f}x | {r['fp32_state_dict_bytes'] / r['pt2_bytes']:.2f}x |"
        )
    for label, key in (("PTQ", "ptq_error"), ("QAT", "qat_error"), ("pruned+int8", "pruned_int8_error")):
        diffs = [r[key] - r["fp32_error"] for r in rows]
        lines.append(f"{label} - fp32 (pt): mean {statistics.mean(diffs):+.2f}, worst {max(diffs):+.2f}")
    for label, key in (("PTQ", "ptq_agreement"), ("QAT", "qat_agreement")):
        lines.append(
            f"{label} agreement: mean {statistics.mean(r[key] for r in rows):.4f}, worst {min(r[key] for r in rows):.4f}"
        )
    return "\n".join(lines)


def report_pruned_ptq(rows: list[dict[str, Any]], dense: dict[int, dict[str, Any]]) -> None:
    print(
        "\n| seed | dense fp32 % | pruned fp32 % | pruned PT2E int8 % | pruned ONNX int8 (ORT) % | ONNX - dense (pt) | "
        "b64 ms: dense eager / dense compile / pruned int8 ORT | vs eager / vs compile | load | ONNX file |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---|---:|---|")
    diffs, speed_e, speed_c = [], [], []
    for r in rows:
        lat = r["latency_ms"]
        e, c, q = lat["dense fp32 eager"], lat["dense fp32 compile"], lat["pruned int8 ONNX Runtime"]
        base = dense.get(r["seed"], {}).get("fp32_error")
        diff = r["pruned_onnx_int8_error"] - base if base is not None else None
        if diff is not None:
            diffs.append(diff)
        speed_e.append(e / q)
        speed_c.append(c / q)
        print(
            f"| {r['seed']} | {'' if base is None else f'{base:.2f}'} | {r['pruned_fp32_error']:.2f} | "
            f"{r['pruned_pt2e_int8_error']:.2f} | {r['pruned_onnx_int8_error']:.2f} | "
            f"{'' if diff is None else f'{diff:+.2f}'} | {e:.1f} / {c:.1f} / {q:.1f} | {e / q:.2f}x / {c / q:.2f}x | "
            f"{r['load']:.2f} | {r.get('onnx_format', '')} |"
        )
    if diffs:
        print(
            f"pruned ONNX int8 - dense fp32 (pt): mean {statistics.mean(diffs):+.2f}, worst {max(diffs):+.2f}"
        )
    print(
        f"speed vs dense eager: mean {statistics.mean(speed_e):.2f}x, worst {min(speed_e):.2f}x; vs dense compile: "
        f"mean {statistics.mean(speed_c):.2f}x, worst {min(speed_c):.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--ramp-epochs", type=int, default=2)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--limit-train-batches", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calibration-batches", type=int, default=32)
    p.add_argument("--batch-size-latency", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="/tmp/quantization_accuracy")
    p.add_argument("--report-only", action="store_true", help="print the table of the seeds in --out-dir")
    p.add_argument(
        "--mode", default="dense", choices=["dense", "pruned_ptq", "latency"], help="see the module docstring"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mode == "latency":
        latency_28px(args)
        return
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "results.jsonl")
    done: dict[int, dict[str, Any]] = {}
    if os.path.exists(path):
        for line in open(path):
            record = json.loads(line)
            done[record["seed"]] = record
    if args.mode == "pruned_ptq":
        dense = done
        path = os.path.join(args.out_dir, "results_pruned_ptq.jsonl")
        done = {}
        if os.path.exists(path):
            for line in open(path):
                record = json.loads(line)
                done[record["seed"]] = record
        for seed in args.seeds:
            if seed in done or args.report_only:
                continue
            row = run_pruned_ptq(args, seed)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            done[seed] = row
        if done:
            report_pruned_ptq([done[s] for s in sorted(done)], dense)
        return
    _log(f"torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()}; {vars(args)}")
    for seed in args.seeds:
        if seed in done or args.report_only:
            continue
        row = run_seed(args, seed)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done[seed] = row
    rows = [done[s] for s in sorted(done)]
    if rows:
        print(report_dense(rows))


if __name__ == "__main__":
    main()
