"""int8 quantization on real MNIST: QAT and PTQ vs fp32 for LeNet-5 and the 3-block CNN, side by side.

For each model, in one run:

1. fp32: train ``--epochs`` epochs (Adam), keep a checkpoint after every epoch; for each of ``--seeds`` seeds;
2. QAT: same budget: resume the fp32 checkpoint before the last ``--qat-epochs`` epochs with
   :class:`QuantizationAwareTraining` (fake quantization in those epochs, BN statistics and ranges frozen in
   the last one), convert to int8;
3. PTQ: :class:`PostTrainingQuantization`-style calibration of the trained fp32 model on
   ``--calibration-batches`` training batches, convert to int8;
4. test accuracy (the 10,000 MNIST test images) of fp32, QAT int8 and PTQ int8;
5. size: fp32 state dict, int8 state dict, int8 TorchScript file, int8 compact artifact (``.lopt``);
6. CPU latency at batch 1 and 256, interleaved rounds (median): fp32 eager, fp32 channels-last, fp32
   ``torch.compile``, int8 (``x86`` engine), and int8 with the ``fbgemm`` engine for comparison.

Acceptance (issue 5): int8 accuracy within 0.1 point of fp32; artifact >= 3.8x smaller than the fp32 state
dict; on the 3-block CNN at batch 256 int8 >= 2.5x faster than the best fp32 and >= 5x faster than fp32
eager; at batch 1 int8 no slower than fp32 eager.

    .venv/bin/python -m benchmarks.quantization --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.optim.lr_scheduler import CosineAnnealingLR

from benchmarks._trainer import quiet_trainer_kwargs
from lightning_optim.callbacks import QuantizationAwareTraining
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.artifact import save_artifact
from lightning_optim.functional.compression_report.measure import compare_latency, state_dict_size_bytes
from lightning_optim.functional.quantization import accuracy, create_backend, quiet_quantization_warnings
from lightning_optim.models import ConvNet3, LeNet5
from lightning_optim.modules import ClassificationModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*is deprecated.*")

MODELS = {
    "lenet5": lambda: LeNet5(variant="classic"),
    "lenet5_caffe": lambda: LeNet5(variant="caffe"),
    "convnet3": lambda: ConvNet3(image_size=28),
}


class EpochPrinter(Callback):
    def __init__(self, tag: str) -> None:
        self.tag, self.t0 = tag, time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val_acc")
        print(
            f"  [{self.tag}] epoch {trainer.current_epoch}: val_acc {float(acc):.4f} "
            f"({time.perf_counter() - self.t0:.0f} s, load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


def trainer(root: str, epochs: int, callbacks: list, checkpoint: bool = False) -> Trainer:
    return Trainer(
        **quiet_trainer_kwargs(
            default_root_dir=root, max_epochs=epochs, enable_checkpointing=checkpoint, callbacks=callbacks
        )
    )


def make_module(name: str, args: argparse.Namespace) -> ClassificationModule:
    """Adam, with a per-epoch cosine decay of the learning rate unless ``--no-cosine``."""
    scheduler = functools.partial(CosineAnnealingLR, T_max=args.epochs) if args.cosine else None
    return ClassificationModule(MODELS[name](), optimizer="adam", lr=args.lr, lr_scheduler=scheduler)


def test_batches(dm: ImageClassificationDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(dm.to_model_input(x, train=False), y) for x, y in dm.test_dataloader()]


def train_seed(
    name: str, args: argparse.Namespace, root: Path, dm: ImageClassificationDataModule, seed: int
) -> dict[str, Any]:
    """fp32, QAT and PTQ for one seed: the trained models and their test accuracies."""
    out: dict[str, Any] = {"seed": seed}
    tag = f"{name} seed {seed}"
    # 1. fp32
    seed_everything(seed, workers=True)
    dm.seed = seed  # the shuffling order follows the seed too
    fp32_module = make_module(name, args)
    ckpt_dir = root / f"{name}_s{seed}_ckpt"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    t0 = time.perf_counter()
    trainer(
        str(root / f"{name}_s{seed}_fp32"), args.epochs, [ckpt, EpochPrinter(f"{tag} fp32")], checkpoint=True
    ).fit(fp32_module, datamodule=dm)
    out["fp32_train_s"] = time.perf_counter() - t0
    fp32 = fp32_module.model.eval()
    batches = test_batches(dm)
    out["fp32"], out["fp32_acc"] = fp32, accuracy(fp32, batches)

    # 2. QAT, same budget: continue the fp32 run's checkpoint with fake quantization for the last
    # ``--qat-epochs`` epochs (BN statistics and ranges frozen in the last epoch when QAT has two or more)
    seed_everything(seed, workers=True)
    last = args.epochs - 1
    start = args.epochs - args.qat_epochs
    qat = QuantizationAwareTraining(
        backend="eager",  # issue 5's figures: the eager stack (PT2E: benchmarks/quantization_accuracy.py)
        start_epoch=start,
        freeze_bn_epoch=last,
        freeze_observers_epoch=last if last > start else None,
        report=False,
        verbose=False,
        export_path=str(root / f"{name}_s{seed}_qat_int8.pt"),
    )
    qat_module = make_module(name, args)
    t0 = time.perf_counter()
    trainer(str(root / f"{name}_s{seed}_qat"), args.epochs, [qat, EpochPrinter(f"{tag} QAT")]).fit(
        qat_module, datamodule=dm, ckpt_path=str(ckpt_dir / f"epoch={start - 1}.ckpt")
    )
    out["qat_train_s"] = time.perf_counter() - t0
    out["qat"], out["qat_int8_acc"] = qat, accuracy(qat.quantized_model, batches)

    # 3. PTQ of the fp32 model
    backend = create_backend("eager", engine="x86")
    observed, _ = backend.prepare_ptq(fp32)
    calibration = (
        dm.to_model_input(x, train=False)
        for i, (x, _) in zip(range(args.calibration_batches), dm.train_dataloader())
    )
    backend.calibrate(observed, calibration)
    out["observed"], out["ptq_int8"] = observed, backend.convert(observed)
    out["ptq_int8_acc"] = accuracy(out["ptq_int8"], batches)
    print(
        f"  [{tag}] test acc fp32 {100 * out['fp32_acc']:.2f}, QAT int8 {100 * out['qat_int8_acc']:.2f}, "
        f"PTQ int8 {100 * out['ptq_int8_acc']:.2f}",
        flush=True,
    )
    return out


def run_model(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    dm = ImageClassificationDataModule(
        "mnist",
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        eval_batch_size=1000,
        limit_train_samples=args.limit_train_samples,
    )
    dm.setup("fit")
    row: dict[str, Any] = {"model": name}
    seeds = [train_seed(name, args, root, dm, seed) for seed in range(args.seeds)]
    for key in ("fp32_acc", "qat_int8_acc", "ptq_int8_acc", "fp32_train_s", "qat_train_s"):
        row[f"{key}_seeds"] = [s[key] for s in seeds]
        row[key] = sum(row[f"{key}_seeds"]) / len(seeds)
    # sizes and latency: the first seed's models
    first = seeds[0]
    fp32, qat, ptq_int8 = first["fp32"], first["qat"], first["ptq_int8"]
    int8 = qat.quantized_model
    row["fusion"] = [" + ".join(g) for g in qat.fusion_plan.groups]
    ptq_fbgemm = create_backend("eager", engine="fbgemm").convert(first["observed"]) if args.fbgemm else None

    # 4. sizes
    row["fp32_state_dict_bytes"] = state_dict_size_bytes(fp32)
    with quiet_quantization_warnings():
        row["int8_state_dict_bytes"] = state_dict_size_bytes(int8)
    row["int8_torchscript_bytes"] = os.path.getsize(qat.exported_path)
    row["fp32_state_dict_deflated_bytes"] = deflated_size(fp32.state_dict())
    # the compact artifact: the same TorchScript module, its int8 values and scales in LZMA streams
    example = torch.randn(8, 1, 28, 28)
    with quiet_quantization_warnings():
        row["int8_artifact_bytes"] = len(save_artifact(int8, torchscript=True, example_input=example))

    # 5. latency, all variants interleaved
    int8_script = torch.jit.load(str(qat.exported_path))
    fp32_script = (
        torch.jit.freeze(torch.jit.script(copy.deepcopy(fp32).eval())) if args.fp32_torchscript else None
    )
    latency: dict[tuple[int, int], dict[str, float]] = {}
    for bs in args.batch_sizes:
        x = torch.randn(bs, 1, 28, 28)
        variants: dict[str, Any] = {"fp32 eager": fp32}
        cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last).eval()
        variants["fp32 channels_last"] = lambda t, m=cl: m(t.contiguous(memory_format=torch.channels_last))
        if args.fp32_torchscript:
            variants["fp32 TorchScript"] = fp32_script
        if not args.skip_compile:
            compiled = torch.compile(copy.deepcopy(fp32).eval())
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            print(f"  [{name}] torch.compile at batch {bs}: {time.perf_counter() - t0:.1f} s", flush=True)
            variants["fp32 compile"] = compiled
        variants["int8 x86"] = int8
        variants["int8 TorchScript"] = int8_script  # the exported artifact, as a user loads it
        if ptq_fbgemm is not None:  # same calibrated model packed by both engines
            variants["int8 PTQ x86"] = ptq_int8
            variants["int8 PTQ fbgemm"] = ptq_fbgemm
        for threads in args.threads:
            timed = compare_latency(
                variants, x, repeats=args.repeats, warmup=3, rounds=args.rounds, threads=threads
            )
            latency[(bs, threads)] = {k: v["median_ms"] for k, v in timed.items()}
            print(
                f"  [{name}] batch {bs}, {threads} thread(s): "
                + ", ".join(f"{k} {v:.3f} ms" for k, v in latency[(bs, threads)].items()),
                flush=True,
            )
    row["latency_ms"] = latency
    return row


def deflated_size(state: dict) -> int:
    """Bytes of ``torch.save(state)`` re-zipped with deflate (what compression alone gives fp32)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    return len(out.getvalue())


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def report(
    rows: list[dict[str, Any]], args: argparse.Namespace, load_before: tuple, load_after: tuple
) -> str:
    lines = [
        f"Test accuracy (%), mean of {args.seeds} seed(s) (per seed in brackets); difference int8 - fp32 in points:",
        "",
        "| model | fp32 acc | QAT int8 acc | PTQ int8 acc | QAT - fp32 | PTQ - fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = {
            k: ", ".join(f"{100 * v:.2f}" for v in r[f"{k}_seeds"])
            for k in ("fp32_acc", "qat_int8_acc", "ptq_int8_acc")
        }
        lines.append(
            f"| {r['model']} | {100 * r['fp32_acc']:.2f} [{per['fp32_acc']}] | "
            f"{100 * r['qat_int8_acc']:.2f} [{per['qat_int8_acc']}] | {100 * r['ptq_int8_acc']:.2f} [{per['ptq_int8_acc']}] | "
            f"{100 * (r['qat_int8_acc'] - r['fp32_acc']):+.2f} | {100 * (r['ptq_int8_acc'] - r['fp32_acc']):+.2f} |"
        )
    lines += [
        "",
        "Sizes (first seed's models):",
        "",
        "| model | fp32 state dict | int8 state dict | int8 TorchScript (export) | int8 compact artifact (.lopt) "
        "| fp32 sd / int8 sd | fp32 sd / int8 TorchScript | fp32 sd / int8 artifact | deflated fp32 sd / int8 artifact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {fmt_bytes(r['fp32_state_dict_bytes'])} | {fmt_bytes(r['int8_state_dict_bytes'])} | "
            f"{fmt_bytes(r['int8_torchscript_bytes'])} | {fmt_bytes(r['int8_artifact_bytes'])} | "
            f"{r['fp32_state_dict_bytes'] / r['int8_state_dict_bytes']:.2f}x | "
            f"{r['fp32_state_dict_bytes'] / r['int8_torchscript_bytes']:.2f}x | "
            f"{r['fp32_state_dict_bytes'] / r['int8_artifact_bytes']:.2f}x | "
            f"{r['fp32_state_dict_deflated_bytes'] / r['int8_artifact_bytes']:.2f}x |"
        )
    lines += ["", "CPU latency, median ms (interleaved rounds):", ""]
    names = list(next(iter(rows[0]["latency_ms"].values())).keys())
    lines.append(
        "| model | batch | threads | "
        + " | ".join(names)
        + " | int8 vs eager | int8 vs best fp32 | int8 TorchScript vs eager |"
    )
    lines.append("|---|---:|---:|" + "---:|" * (len(names) + 3))
    for r in rows:
        for (bs, threads), lat in r["latency_ms"].items():
            best = min(v for k, v in lat.items() if k in ("fp32 channels_last", "fp32 compile", "fp32 eager"))
            lines.append(
                f"| {r['model']} | {bs} | {threads} | "
                + " | ".join(f"{lat[n]:.3f}" for n in names)
                + f" | {lat['fp32 eager'] / lat['int8 x86']:.2f}x | {best / lat['int8 x86']:.2f}x"
                + f" | {lat['fp32 eager'] / lat['int8 TorchScript']:.2f}x |"
            )
    lines += [
        "",
        f"Training: {args.epochs} epochs, Adam lr {args.lr} ({'cosine decay' if args.cosine else 'constant'}), batch {args.batch_size}; "
        f"QAT in the last {args.qat_epochs} epoch(s) (resumed from the fp32 run's epoch-{args.epochs - args.qat_epochs - 1} checkpoint), "
        f"BN statistics frozen in the last epoch{' and ranges' if args.qat_epochs > 1 else ''}; PTQ: {args.calibration_batches} "
        "calibration batches. "
        + "; ".join(
            f"{r['model']}: fp32 {r['fp32_train_s']:.0f} s, QAT {r['qat_train_s']:.0f} s per seed"
            for r in rows
        ),
        "Fusion: " + "; ".join(f"{r['model']}: {', '.join(r['fusion'])}" for r in rows),
        f"torch {torch.__version__}, {os.cpu_count()} cores, "
        f"load average before {load_before}, after {load_after}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (accuracy: their mean)")
    parser.add_argument(
        "--qat-epochs", type=int, default=1, help="last epochs trained with fake quantization (the rest fp32)"
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--cosine", action=argparse.BooleanOptionalAction, default=True, help="cosine LR decay"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit-train-samples", type=int, default=None)
    parser.add_argument("--calibration-batches", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="intra-op thread counts for latency"
    )
    parser.add_argument("--train-threads", type=int, default=None, help="intra-op threads for training")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--fp32-torchscript", action="store_true", help="also time a frozen TorchScript fp32 model"
    )
    parser.add_argument(
        "--fbgemm", action="store_true", help="also time the int8 model under the fbgemm engine"
    )
    args = parser.parse_args()
    if args.epochs < 2 or not 1 <= args.qat_epochs < args.epochs:
        parser.error(
            "need --epochs >= 2 and 1 <= --qat-epochs < --epochs (at least one float epoch, then QAT)"
        )
    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(run_model(name, args, Path(tmp)))
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    print()
    print(report(rows, args, load_before, load_after))


if __name__ == "__main__":
    main()
