"""Run-time mixed precision on MNIST (issue 25): layers that are sensitive or gain nothing on the CPU stay float.

The command (an idle machine, 1 thread; about 30-60 minutes on 2 cores)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.mixed_precision_runtime --data-dir ../shared/data --threads 1

``--quick`` checks that it runs (one model, a data subset, one epoch, few timing runs: the figures mean nothing).

Per model of ``--models`` (the zoo's ConvNet3, SeparableCNN and SmallResNet, 1x28x28 inputs), in one process:

1. **fp32**: ``--epochs`` epochs of Adam on the first 55,000 MNIST training images; the last 5,000 are the
   **selection split** (never trained on) on which the plan is chosen;
2. **plan**: for each batch size of ``--batch-sizes``,
   :func:`~lightning_optim.functional.quantization.mixed_precision.choose_float_layers` with ``Pt2eBackend()``,
   ``--calibration-batches`` training batches, top-1 accuracy on the selection split as the metric,
   ``--max-drop`` (in accuracy points / 100) and ``--min-speedup``: the per-layer table (sensitivity: only that
   layer int8; CPU gain: the layer alone, float compiled vs int8 lowered, at its real input shape) and the plan;
3. **test**: the 10,000 MNIST test images through fp32, the all-int8 model and the plan's int8 model (PT2E
   reference graphs, uncompiled: the same arithmetic as the lowered ones up to rounding);
4. **latency** (in step 2, at the batch size of the plan, ``--threads`` threads, median of ``--repeats``):
   fp32 eager, fp32 ``torch.compile``, all-int8 lowered (``lower``: inductor int8 kernels), the plan lowered.

The last line: ``mixed precision runtime: <model> b<batch>: <k>/<n> layers float, test acc fp32 X% / int8 Y% /
mixed Z%, mixed vs int8 A x, vs fp32 eager B x`` for the last model and batch size; one such line per model
and batch size above it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.data.idx import idx_files, read_idx_split
from lightning_optim.functional.quantization import Pt2eBackend, quiet_quantization_warnings
from lightning_optim.functional.quantization.mixed_precision import MixedPrecisionPlan, choose_float_layers
from lightning_optim.models import ConvNet3, SeparableCNN, SmallResNet

warnings.filterwarnings("ignore", ".*is deprecated.*")

MODELS: dict[str, Callable[[], nn.Module]] = {
    "convnet3": lambda: ConvNet3(image_size=28),
    "separable_cnn": lambda: SeparableCNN(),
    "small_resnet": lambda: SmallResNet(),
}
MEAN, STD = 0.1307, 0.3081
SELECTION = 5000


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_mnist(
    data_dir: str, train_limit: int | None, test_limit: int | None
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train", "selection", "test"}`` -> (normalized images, labels)."""
    splits = {}
    for train in (True, False):
        files = idx_files("mnist", data_dir, train)
        if files is None:
            raise FileNotFoundError(f"MNIST IDX files not found under {data_dir}/MNIST/raw/ (`--data-dir`).")
        images, labels = read_idx_split(*files)
        x = (images.float() / 255.0 - MEAN) / STD
        y = labels.long()
        if train:
            cut = len(x) - SELECTION
            end = cut if train_limit is None else min(cut, train_limit)
            splits["train"] = (x[:end], y[:end])
            splits["selection"] = (
                (x[cut:], y[cut:])
                if train_limit is None
                else (x[cut : cut + end // 4], y[cut : cut + end // 4])
            )
        else:
            splits["test"] = (x, y) if test_limit is None else (x[:test_limit], y[:test_limit])
    return splits


def train(
    model: nn.Module, data: tuple[Tensor, Tensor], epochs: int, batch_size: int, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    x, y = data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            index = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _log(f"  epoch {epoch}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return model.eval()


def top1(model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 500) -> float:
    x, y = data
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def run_model(
    name: str, args: argparse.Namespace, splits: dict[str, tuple[Tensor, Tensor]]
) -> list[dict[str, Any]]:
    _log(f"{name}: training {args.epochs} epoch(s) on {len(splits['train'][0])} images")
    model = train(MODELS[name](), splits["train"], args.epochs, 128, args.seed)
    x_train = splits["train"][0]
    calibration = [x_train[i * 64 : (i + 1) * 64] for i in range(args.calibration_batches)]
    rows = []
    for batch_size in args.batch_sizes:
        example = splits["selection"][0][:batch_size]
        start = time.perf_counter()
        plan = choose_float_layers(
            model,
            Pt2eBackend(),
            example,
            calibration,
            lambda m: top1(m, splits["selection"]),
            max_accuracy_drop=args.max_drop / 100.0,
            min_speedup=args.min_speedup,
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
        )
        seconds = time.perf_counter() - start
        test = {
            "fp32": top1(model, splits["test"]),
            "int8": top1(_all_int8(model, example, calibration), splits["test"]),
            "mixed": top1(plan.quantized_model, splits["test"]) if plan.quantized_model is not None else None,
        }
        if test["mixed"] is None:
            test["mixed"] = test["fp32"]
        rows.append({"model": name, "batch_size": batch_size, "plan": plan, "test": test, "seconds": seconds})
        print(f"\n### {name}, batch {batch_size} (plan chosen in {seconds:.0f} s)\n")
        print(plan.table())
        print()
        print(plan.summary())
        if plan.notes:
            print("\nnotes: " + "; ".join(plan.notes))
        print()
    return rows


def _all_int8(model: nn.Module, example: Tensor, calibration: list[Tensor]) -> nn.Module:
    backend = Pt2eBackend(example_input=example)
    observed, _ = backend.prepare_ptq(model)
    backend.calibrate(observed, calibration)
    return backend.convert(observed)


def line(row: dict[str, Any]) -> str:
    plan: MixedPrecisionPlan = row["plan"]
    test = row["test"]
    latency = plan.latency_ms

    def ratio(a: str, b: str) -> str:
        return f"{latency[a] / latency[b]:.2f}x" if latency.get(a) and latency.get(b) else "n/a"

    return (
        f"mixed precision runtime: {row['model']} b{row['batch_size']}: {len(plan.float_layers)}/{len(plan.layers)} "
        f"layers float, test acc fp32 {100 * test['fp32']:.2f}% / int8 {100 * test['int8']:.2f}% / mixed "
        f"{100 * test['mixed']:.2f}%, mixed vs int8 {ratio('int8', 'mixed')}, vs fp32 eager "
        f"{ratio('float_eager', 'mixed')}"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--max-drop", type=float, default=0.1, help="accuracy points allowed (0.1 = 0.1 pt)")
    parser.add_argument("--min-speedup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a functional check: tiny data, convnet3, b8")
    args = parser.parse_args(argv)
    train_limit = test_limit = None
    if args.quick:
        args.models, args.epochs, args.batch_sizes = ["convnet3"], 1, [8]
        args.calibration_batches, args.repeats, args.warmup = 2, 3, 1
        train_limit, test_limit = 2000, 1000
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; {args.threads} thread(s)"
        + ("; --quick (a functional check: figures mean nothing)" if args.quick else "")
    )
    splits = load_mnist(args.data_dir, train_limit, test_limit)
    rows: list[dict[str, Any]] = []
    with quiet_quantization_warnings():
        for name in args.models:
            rows += run_model(name, args, splits)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    for row in rows:
        print(line(row))
    return rows


if __name__ == "__main__":
    main()
