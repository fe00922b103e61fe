"""Accuracy of channel-group pruning on MNIST (issue 23): torchvision ResNet-18 and MobileNet-V2, dense vs pruned.

For each model and seed, two fits with the same total epochs and the same data: the dense network, and the
same network with ``ProgressivePruning(granularity="channel_groups")`` ramping to ``--sparsity`` (cubic, from
epoch 0 to ``--ramp-epochs``), fine-tuned for the remaining epochs, then compacted (``compact_at_end``). Test
error of both on the 10,000 MNIST test images (the pruned one compacted), parameters and MACs, per seed, with the
mean and the worst seed. Input adaptation for 28x28 grey digits: the first convolution takes 1 channel
(otherwise the torchvision architecture, ``weights=None``, 10 classes).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning_accuracy --data-dir ../shared/data --models resnet18 --sparsity 0.5 --seeds 3 --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning_accuracy --data-dir ../shared/data --models mobilenet_v2 --sparsity 0.4 --seeds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from benchmarks._trainer import quiet_trainer_kwargs
from lightning_optim.callbacks import LRScheduling, ProgressivePruning
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.measure import count_flops, count_parameters
from lightning_optim.modules import ClassificationModule


def build(name: str) -> nn.Module:
    """The torchvision architecture for 1x28x28 inputs and 10 classes (random init)."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    if name.startswith("resnet"):
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif name.startswith("mobilenet"):
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(1, first.out_channels, 3, stride=first.stride, padding=1, bias=False)
    else:
        raise ValueError(f"Unknown `--models` entry {name!r}; allowed: ['mobilenet_v2', 'resnet18'].")
    return model


def fit_one(args: argparse.Namespace, name: str, seed: int, pruned: bool) -> dict:
    seed_everything(seed, workers=True)
    dm = ImageClassificationDataModule("mnist", data_dir=args.data_dir, batch_size=args.batch_size)
    net = build(name)
    callbacks = []
    if pruned:
        callbacks.append(
            ProgressivePruning(
                final_sparsity=args.sparsity,
                start=0,
                end=args.ramp_epochs,
                unit="epoch",
                granularity="channel_groups",
                compact_at_end=True,
                verbose=False,
            )
        )
    if args.schedule != "constant":
        callbacks.append(LRScheduling(args.schedule, interval="step", log_momentum=False))
    module = ClassificationModule(net, optimizer="adamw", lr=args.lr, weight_decay=1e-4)
    trainer = Trainer(
        callbacks=callbacks,
        **quiet_trainer_kwargs(
            max_epochs=args.epochs,
            limit_train_batches=args.limit_train_batches,
            limit_val_batches=0,
            limit_test_batches=args.limit_test_batches,
            default_root_dir=os.path.join(args.out_dir, f"{name}_{'pruned' if pruned else 'dense'}_{seed}"),
        ),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    error = 100.0 * (1.0 - trainer.test(module, datamodule=dm, verbose=False)[0]["test_acc"])
    model = module.model.eval()
    x = torch.zeros(1, 1, 28, 28)
    row = {"error": error, "params": count_parameters(model), "macs": count_flops(model, x) / 2, "s": seconds}
    if pruned:
        _, requested, removed, _ = callbacks[0].compaction_summary()
        row["removed"] = f"{removed}/{requested}"
    return row


def resumable_fit(args: argparse.Namespace, name: str, seed: int, pruned: bool) -> dict:
    """:func:`fit_one`, or its result from an earlier run with the same settings (a killed run resumes)."""
    settings = {
        k: v for k, v in sorted(vars(args).items()) if k not in ("models", "seeds", "out_dir", "data_dir")
    }
    # the whole test set: the key of the runs recorded before the option existed
    if settings["limit_test_batches"] == 1.0:
        del settings["limit_test_batches"]
    key = json.dumps({"model": name, "seed": seed, "pruned": pruned, **settings}, sort_keys=True)
    path = os.path.join(args.out_dir, "results.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record["key"] == key:
                    return record["row"]
    row = fit_one(args, name, seed, pruned)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"key": key, "row": row}) + "\n")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--models", nargs="+", default=["resnet18"], choices=["resnet18", "mobilenet_v2"])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="total epochs of both fits")
    parser.add_argument("--ramp-epochs", type=int, default=2, help="the pruning ramp: epochs 0 to this")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--limit-train-batches", type=float, default=1.0, help="batches per epoch (a float: a fraction)"
    )
    parser.add_argument(
        "--limit-test-batches",
        type=float,
        default=1.0,
        help="test batches (a float: a fraction); the recorded figures use the whole test set, fewer is for smoke runs",
    )
    parser.add_argument(
        "--schedule",
        default="constant",
        choices=["constant", "one_cycle", "cosine"],
        help="the LR schedule, per step",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out-dir",
        default="/tmp/pruning_accuracy",
        help="logs, and one JSON per finished fit: a rerun with the same settings skips the fits already done",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load {os.getloadavg()}")
    print(
        f"{args.epochs} epochs (ramp 0-{args.ramp_epochs} then fine-tuning), AdamW lr {args.lr}, batch "
        f"{args.batch_size}, limit_train_batches {args.limit_train_batches}, sparsity {args.sparsity}, "
        f"schedule {args.schedule}"
    )
    for name in args.models:
        rows = []
        for seed in range(args.seeds):
            dense = resumable_fit(args, name, seed, pruned=False)
            pruned = resumable_fit(args, name, seed, pruned=True)
            rows.append((seed, dense, pruned))
            print(
                f"  [{name} seed {seed}] dense {dense['error']:.2f}% ({dense['s']:.0f} s), pruned "
                f"{pruned['error']:.2f}% ({pruned['s']:.0f} s), removed {pruned['removed']}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        dense_err = [d["error"] for _, d, _ in rows]
        pruned_err = [p["error"] for _, _, p in rows]
        diffs = [p - d for d, p in zip(dense_err, pruned_err)]
        print(f"\n### {name}, {args.sparsity:.0%} of the channel groups, {args.seeds} seeds\n")
        print(
            "| seed | dense error % | pruned error % | difference (pt) | params dense / pruned | MACs dense / pruned | removed / requested |"
        )
        print("|---:|---:|---:|---:|---|---|---|")
        for seed, d, p in rows:
            print(
                f"| {seed} | {d['error']:.2f} | {p['error']:.2f} | {p['error'] - d['error']:+.2f} | "
                f"{d['params']:,} / {p['params']:,} | {d['macs'] / 1e6:.2f}M / {p['macs'] / 1e6:.2f}M | {p['removed']} |"
            )
        print(
            f"| mean | {statistics.mean(dense_err):.2f} | {statistics.mean(pruned_err):.2f} | "
            f"{statistics.mean(diffs):+.2f} | | | |"
        )
        print(f"| worst | {max(dense_err):.2f} | {max(pruned_err):.2f} | {max(diffs):+.2f} | | | |")
        holds = statistics.mean(diffs) <= 0.3
        print(
            f"\ntarget (mean difference <= 0.3 pt): {'holds' if holds else 'not met'}; worst seed {max(diffs):+.2f} pt"
        )
    print(f"\nload at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
