"""ProgressivePruning on real MNIST: LeNet-300-100 and LeNet-5 against Han et al. 2015, structured ConvNet3
compaction speed, and the training-step overhead next to Lightning's ``ModelPruning``.

Each part is its own sub-command (``all`` runs them in turn)::

    .venv/bin/python -m benchmarks.pruning lenet300 --data-dir ../shared/data
    .venv/bin/python -m benchmarks.pruning lenet5 --data-dir ../shared/data
    .venv/bin/python -m benchmarks.pruning structured --data-dir ../shared/data
    .venv/bin/python -m benchmarks.pruning overhead --data-dir ../shared/data

Anchor (Han et al. 2015, "Learning both Weights and Connections", Table 1): LeNet-300-100 1.64% -> 1.59%
test error at 12x fewer weights; LeNet-5 (the Caffe variant, 20-50-500, 431K parameters) 0.80% -> 0.77% at
12x. We use the same two networks (``LeNet300100()``, ``LeNet5(variant="caffe")``) and count the ratio of all
parameters (biases included) to the non-zero ones. Test error is that of the final model on the 10,000
MNIST test images (no model selection on the test set). Every figure is printed by this script.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import time
import warnings
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn

from benchmarks._trainer import quiet_trainer_kwargs
from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.measure import (
    compare_latency,
    count_nonzero,
    count_parameters,
)
from lightning_optim.models import ConvNet3, LeNet5, LeNet300100
from lightning_optim.modules import ClassificationModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*is deprecated.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


class EpochPrinter(Callback):
    """One line per epoch: validation accuracy, sparsity of the pruning callback, elapsed time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val_acc")
        pruning = [cb for cb in trainer.callbacks if isinstance(cb, ProgressivePruning)]
        sparsity = pruning[0].global_sparsity() if pruning and pruning[0].masks else 0.0
        acc_text = f"{float(acc):.4f}" if acc is not None else "-"
        print(
            f"  epoch {trainer.current_epoch}: val_acc {acc_text} sparsity {sparsity:.3f} "
            f"({time.perf_counter() - self.t0:.0f} s, load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


def _trainer(epochs: int, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    options = quiet_trainer_kwargs(max_epochs=epochs, callbacks=[*callbacks, EpochPrinter()])
    options.update(kwargs)
    return Trainer(**options)


def _module(
    net: nn.Module, epochs: int, lr: float, optimizer: str, weight_decay: float, label_smoothing: float = 0.0
) -> ClassificationModule:
    scheduler = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs)
    return ClassificationModule(
        net,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        lr_scheduler=scheduler,
        label_smoothing=label_smoothing,
    )


def _mnist(args: argparse.Namespace) -> ImageClassificationDataModule:
    """MNIST in memory; with ``--shift N``, training images are randomly shifted by up to N pixels."""
    augmentation: Any = [{"name": "crop", "size": 28, "padding": args.shift}] if args.shift else "none"
    return ImageClassificationDataModule(
        "mnist", data_dir=args.data_dir, batch_size=args.batch_size, augmentation=augmentation
    )


def _test_error(trainer: Trainer, module: ClassificationModule, dm: ImageClassificationDataModule) -> float:
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    return 100.0 * (1.0 - result["test_acc"])


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- unstructured
def run_unstructured(args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """Dense training, then the cubic ramp to the target sparsity, then fine-tuning, in one fit."""
    rows = []
    for sparsity in args.sparsities:
        seed_everything(args.seed, workers=True)
        net = (
            LeNet300100(dropout=args.dropout)
            if name == "lenet300"
            else LeNet5(variant="caffe", dropout=args.dropout)
        )
        total = count_parameters(net)
        dm = _mnist(args)
        pruning = ProgressivePruning(
            final_sparsity=sparsity,
            start=args.prune_start,
            end=args.prune_end,
            unit="epoch",
            frequency=args.frequency,
            scope="global",
            verbose=False,
        )
        module = _module(net, args.epochs, args.lr, args.optimizer, args.weight_decay, args.label_smoothing)
        trainer = _trainer(args.epochs, [pruning])
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - start
        error = _test_error(trainer, module, dm)
        nonzero = count_nonzero(net)
        rows.append(
            {
                "model": name,
                "target sparsity": sparsity,
                "params": total,
                "non-zero": nonzero,
                "ratio": total / nonzero,
                "test error %": error,
                "fit s": seconds,
            }
        )
        _log(f"{name} sparsity {sparsity}: {rows[-1]}")
        _log("\n" + pruning.summary_table())
    print(
        f"\n### {name}: epochs={args.epochs} ramp epochs {args.prune_start}->{args.prune_end}, "
        f"{args.optimizer} lr={args.lr} wd={args.weight_decay} cosine, batch {args.batch_size}, "
        f"dropout {args.dropout}, label smoothing {args.label_smoothing}, random shift {args.shift} px\n"
    )
    print("| model | target sparsity | params | non-zero | ratio | test error % | fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['target sparsity']:.3f} | {r['params']} | {r['non-zero']} | {r['ratio']:.1f}x "
            f"| {r['test error %']:.2f} | {r['fit s']:.0f} |"
        )
    return rows


# ------------------------------------------------------------------------------------------- structured
def run_structured(args: argparse.Namespace) -> None:
    """ConvNet3: dense training; the same network trained on with 50% of its conv filters pruned (cubic
    ramp, then fine-tuning) and compacted; accuracy of both and CPU inference latency side by side."""
    seed_everything(args.seed, workers=True)
    dm = ImageClassificationDataModule("mnist", data_dir=args.data_dir, batch_size=args.batch_size)
    net = ConvNet3(image_size=28)
    limit = int(args.limit_train_batches) if args.limit_train_batches > 1 else args.limit_train_batches
    module = _module(net, args.dense_epochs, args.lr, args.optimizer, args.weight_decay)
    trainer = _trainer(args.dense_epochs, [], limit_train_batches=limit)
    trainer.fit(module, datamodule=dm)
    dense_error = _test_error(trainer, module, dm)
    _log(f"dense ConvNet3 after {args.dense_epochs} epochs: test error {dense_error:.2f}%")
    dense = copy.deepcopy(net).eval()

    pruning = ProgressivePruning(
        final_sparsity=0.5,
        start=0,
        end=args.prune_epochs,
        unit="epoch",
        granularity="filter",
        importance="l2",
        module_types=["Conv2d"],
        compact_at_end=True,
        verbose=True,
    )
    epochs = args.prune_epochs + args.finetune_epochs
    module2 = _module(net, epochs, args.finetune_lr, args.optimizer, args.weight_decay)
    trainer2 = _trainer(epochs, [pruning], limit_train_batches=limit)
    trainer2.fit(module2, datamodule=dm)
    compact = pruning.compacted_model.eval()
    pruned_error = _test_error(trainer2, module2, dm)  # module2.model is now the compacted network
    x = torch.stack([dm.to_model_input(dm.test_split.images[i : i + 1])[0] for i in range(256)])
    masked = net.eval()
    with torch.no_grad():
        max_diff = float((masked(x[:64]) - compact(x[:64])).abs().max()) if masked is not compact else 0.0
    channels = [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv2d)]
    latency = compare_latency(
        {"dense": dense, "compact": compact}, x, repeats=args.repeats, rounds=args.rounds
    )
    speedup = latency["dense"]["median_ms"] / latency["compact"]["median_ms"]
    print(f"\n### structured ConvNet3 (MNIST 28x28), batch 256, {torch.get_num_threads()} threads\n")
    print("| model | conv channels | params | test error % | latency ms (median) | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    print(
        f"| dense ({args.dense_epochs} ep) | 32-64-128 | {count_parameters(dense)} | {dense_error:.2f} "
        f"| {latency['dense']['median_ms']:.2f} | 1.00x |"
    )
    print(
        f"| 50% filters pruned + compacted (+{epochs} ep) | {'-'.join(map(str, channels))} | {count_parameters(compact)} "
        f"| {pruned_error:.2f} | {latency['compact']['median_ms']:.2f} | {speedup:.2f}x |"
    )
    print(
        f"\naccuracy drop: {pruned_error - dense_error:+.2f} points; compact vs masked max abs diff {max_diff:.2e}"
    )


# ------------------------------------------------------------------------------------------- overhead
class StepTimer(Callback):
    """Wall time of each training batch (forward, backward, optimizer step and the other callbacks' hooks)."""

    def __init__(self, skip_epochs: int = 1) -> None:
        self.skip_epochs = skip_epochs
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= self.skip_epochs:
            self.times.append(time.perf_counter() - self._t0)


def run_overhead(args: argparse.Namespace) -> None:
    """Median training-step time with ProgressivePruning (90% masks, applied every step) and with
    Lightning's ModelPruning (90% l1_unstructured, forward pre-hooks) over the time without pruning."""
    from lightning.pytorch.callbacks import ModelPruning

    dm = ImageClassificationDataModule("mnist", data_dir=args.data_dir, batch_size=args.batch_size)
    dm.setup("fit")

    def build(kind: str) -> list[Callback]:
        if kind == "ProgressivePruning":
            return [
                ProgressivePruning(final_sparsity=0.9, start=0, end=0, schedule="constant", verbose=False)
            ]
        if kind == "ModelPruning":
            return [
                ModelPruning(
                    "l1_unstructured",
                    amount=0.9,
                    parameter_names=["weight"],
                    apply_pruning=lambda epoch: epoch == 0,
                    use_lottery_ticket_hypothesis=False,
                    verbose=0,
                )
            ]
        return []

    kinds = ["none", "ProgressivePruning", "ModelPruning"]
    results: dict[str, dict[str, list[float]]] = {}
    for model_name in args.models:
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                seed_everything(args.seed)
                net = LeNet300100() if model_name == "lenet300" else LeNet5(variant="caffe")
                timer = StepTimer(skip_epochs=1)  # epoch 0: warm-up, and ModelPruning prunes at its end
                trainer = _trainer(
                    2, [*build(kind), timer], limit_train_batches=args.steps, limit_val_batches=0
                )
                trainer.fit(ClassificationModule(net, optimizer="momentum", lr=0.01), datamodule=dm)
                samples[kind].append(statistics.median(timer.times))
        results[model_name] = samples
    print(
        f"\n### training-step overhead (batch {args.batch_size}, {args.steps} timed steps x {args.rounds} "
        "interleaved rounds)\n"
    )
    print(
        "ratio of best = min over rounds of each fit's median step time, divided (least disturbed by load);"
    )
    print("median ratio = per-round ratio, median over rounds\n")
    print(
        "| model | no pruning ms/step (best) | ProgressivePruning ms/step (best) | ratio of best | median ratio "
        "| ModelPruning ms/step (best) | ratio of best | median ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model_name, s in results.items():
        base, ours, theirs = min(s["none"]), min(s["ProgressivePruning"]), min(s["ModelPruning"])
        r_ours = statistics.median(a / b for a, b in zip(s["ProgressivePruning"], s["none"]))
        r_theirs = statistics.median(a / b for a, b in zip(s["ModelPruning"], s["none"]))
        print(
            f"| {model_name} | {base * 1e3:.2f} | {ours * 1e3:.2f} | {ours / base:.3f} | {r_ours:.3f} "
            f"| {theirs * 1e3:.2f} | {theirs / base:.3f} | {r_theirs:.3f} |"
        )
    for model_name, s in results.items():
        rounds = {k: [f"{v * 1e3:.2f}" for v in vals] for k, vals in s.items()}
        print(f"\nper-round medians (ms) {model_name}: {rounds}")


def run_overhead_steps(args: argparse.Namespace) -> None:
    """The same comparison at the level of single steps, in round-robin: step k of the dense model, then
    step k with ProgressivePruning's per-step work (its own methods: gradients masked before the optimizer
    step, weights masked after it), then step k with the forward pre-hooks that ModelPruning installs
    (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, what ``ModelPruning("l1_unstructured",
    use_global_unstructured=True)`` calls). Alternating every step puts the three under the same load."""
    import torch.nn.utils.prune as prune

    from lightning_optim.functional.pruning.masks import compute_masks

    dm = _mnist(args)
    dm.setup("fit")
    x = dm.to_model_input(dm.train_split.images[: args.batch_size])
    y = dm.train_split.labels[: args.batch_size]
    print(
        f"\n### step-level overhead, round-robin (batch {args.batch_size}, {args.steps} steps each, sparsity 0.9)\n"
    )
    print(
        "| model | no pruning ms/step | ProgressivePruning ms/step | ratio | ModelPruning hooks ms/step | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for model_name in args.models:
        seed_everything(args.seed)
        build = (lambda: LeNet300100()) if model_name == "lenet300" else (lambda: LeNet5(variant="caffe"))
        dense, ours, theirs = build(), build(), build()
        ours.load_state_dict(dense.state_dict())
        theirs.load_state_dict(dense.state_dict())
        cb = ProgressivePruning(final_sparsity=0.9, scope="global", verbose=False)
        cb._modules = cb.select_modules(ours)
        weights = {f"{n}.weight": m.weight for n, m in cb._modules.items()}
        cb.masks = compute_masks(weights, 0.9, scope="global")
        cb._build_targets(ours)
        cb._apply_weight_masks()
        prune.global_unstructured(
            [(m, "weight") for m in theirs.modules() if isinstance(m, (nn.Linear, nn.Conv2d))],
            pruning_method=prune.L1Unstructured,
            amount=0.9,
        )
        optimizers = {
            name: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            for name, model in (("none", dense), ("ours", ours), ("theirs", theirs))
        }
        models = {"none": dense, "ours": ours, "theirs": theirs}
        times: dict[str, list[float]] = {k: [] for k in models}
        for step in range(args.steps + 5):
            for name, model in models.items():
                opt = optimizers[name]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                if name == "ours":
                    cb._run_mask_gradients()
                opt.step()
                if name == "ours":
                    cb._apply_weight_masks()
                if step >= 5:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"| {model_name} | {med['none']:.2f} | {med['ours']:.2f} | {med['ours'] / med['none']:.3f} "
            f"| {med['theirs']:.2f} | {med['theirs'] / med['none']:.3f} |"
        )
        assert all(int(torch.count_nonzero(t * (1 - m))) == 0 for t, m in cb._targets)


def run_overhead_groups(args: argparse.Namespace) -> None:
    """Channel groups (issue 23) on torchvision's ResNet-18: the per-step work of ProgressivePruning's
    ``channel_groups`` masks (gradients masked before the optimizer step, weights after it: the callback's own
    methods), step by step in round-robin with the same steps of an unpruned copy (the order alternates every
    step), plus the cost of one pruning event (scoring, selecting and masking every group) amortised over the
    steps between events (``--frequency``, default 100).

        OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning overhead_groups --steps 100 --image-size 64
    """
    import torchvision

    seed_everything(args.seed)
    size, batch = args.image_size, args.batch_size
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    dense = torchvision.models.resnet18(weights=None, num_classes=10)
    ours = torchvision.models.resnet18(weights=None, num_classes=10)
    ours.load_state_dict(dense.state_dict())
    cb = ProgressivePruning(final_sparsity=0.5, granularity="channel_groups", verbose=False)
    cb._modules = cb.select_modules(ours)
    cb._run_build_graph(ours, x[:2])
    t0 = time.perf_counter()
    cb.masks = cb._group_masks(ours, 0, 0.5)
    cb._build_targets(ours)
    cb._apply_weight_masks()
    event_s = time.perf_counter() - t0
    models = {"none": dense, "ours": ours}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for step in range(args.steps + 3):
        order = list(models.items()) if step % 2 == 0 else list(models.items())[::-1]  # no order effect
        for name, model in order:
            opt = optimizers[name]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            if name == "ours":
                cb._run_mask_gradients()
            opt.step()
            if name == "ours":
                cb._apply_weight_masks()
            if step >= 3:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_epoch = args.frequency or 100
    amortised = (med["ours"] + event_s / per_epoch) / med["none"]
    print(
        f"\n### channel-group pruning overhead, ResNet-18 ({size} px, batch {batch}, {args.steps} steps each, "
        f"round-robin, 50% of the channel groups masked)\n"
    )
    print(
        "| no pruning ms/step | channel groups ms/step | ratio | one event s | ratio with an event every N steps |"
    )
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {med['none'] * 1e3:.1f} | {med['ours'] * 1e3:.1f} | {med['ours'] / med['none']:.3f} | {event_s:.2f} "
        f"| {amortised:.3f} (N = {per_epoch}) |"
    )
    zero = all(int(torch.count_nonzero(t * (1 - m.to(t.dtype)))) == 0 for t, m in cb._targets)
    print(f"masked weights still zero after {args.steps} steps: {zero}")


class _AlternatingPruning(ProgressivePruning):
    """ProgressivePruning whose per-step hooks run on even steps only: within one fit, the odd steps are the
    same training without any pruning work (the comparison the overhead target asks for)."""

    def _on(self, trainer: Trainer) -> bool:
        return trainer.global_step % 2 == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D102
        if self._on(trainer):
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # noqa: D102
        if self._on(trainer):
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        if trainer.global_step % 2 == 1:  # the step just taken was even (global_step counts it already)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class _StepClock(Callback):
    """Wall time of each training step, from the first callback hook to the last (two instances: ``start``
    first in the callback list, ``stop`` last)."""

    def __init__(self, times: dict[int, float], start: bool) -> None:
        self.times, self.start = times, start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D102
        if self.start:
            self.times[trainer.global_step] = -time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        if not self.start:
            self.times[trainer.global_step - 1] += time.perf_counter()


def run_overhead_fit(args: argparse.Namespace) -> None:
    """Channel groups on torchvision's ResNet-18 inside one Lightning fit: ProgressivePruning ramps to 50% of
    the channel groups over the whole fit (an event every ``--frequency`` steps), and its per-step hooks run on
    even steps only, so the odd steps of the same fit are the unpruned baseline under the same load. Step time
    = from the first callback hook of the step to the last (forward, backward, optimizer, the pruning work).

        OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning overhead_fit --steps 200 --image-size 64
    """
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    seed_everything(args.seed)
    size, batch, steps = args.image_size, args.batch_size, args.steps
    data = TensorDataset(torch.randn(batch * 8, 3, size, size), torch.randint(0, 10, (batch * 8,)))
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    model = ClassificationModule(
        torchvision.models.resnet18(weights=None, num_classes=10), optimizer="sgd", lr=args.lr
    )
    frequency = args.frequency or 10
    cb = _AlternatingPruning(
        final_sparsity=0.5,
        start=0,
        end=steps,
        unit="step",
        frequency=frequency,
        granularity="channel_groups",
        verbose=False,
    )
    times: dict[int, float] = {}
    trainer = Trainer(
        callbacks=[_StepClock(times, True), cb, _StepClock(times, False)],
        **quiet_trainer_kwargs(max_steps=steps + 2, limit_val_batches=0),
    )
    trainer.fit(model, loader)
    warm = {k: v for k, v in times.items() if 4 <= k < steps}
    on = [v for k, v in warm.items() if k % 2 == 0]
    off = [v for k, v in warm.items() if k % 2 == 1]
    events = [k for k in warm if k % 2 == 0 and k % frequency == 0]
    ratio = statistics.median(on) / statistics.median(off)
    mean_ratio = statistics.mean(on) / statistics.mean(off)
    print(
        f"\n### channel-group pruning overhead within one fit, ResNet-18 ({size} px, batch {batch}, {steps} steps, "
        f"ramp to 50% over the fit, an event every {frequency} steps, hooks on even steps)\n"
    )
    print(
        "| steps without pruning work, median ms | with it, median ms | ratio (medians) | ratio (means, events included) |"
    )
    print("|---:|---:|---:|---:|")
    print(
        f"| {statistics.median(off) * 1e3:.1f} | {statistics.median(on) * 1e3:.1f} | {ratio:.3f} | {mean_ratio:.3f} |"
    )
    print(
        f"{len(on)} steps with, {len(off)} without, {len(events)} pruning events; final sparsity {cb.current_sparsity:.2f}"
    )


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "part",
        choices=[
            "lenet300",
            "lenet5",
            "structured",
            "overhead",
            "overhead_steps",
            "overhead_groups",
            "overhead_fit",
            "all",
        ],
    )
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a shared, oversubscribed machine)"
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="unstructured: total epochs")
    parser.add_argument("--prune-start", type=int, default=None, help="unstructured: first pruning epoch")
    parser.add_argument(
        "--prune-end", type=int, default=None, help="unstructured: epoch of the final sparsity"
    )
    parser.add_argument("--frequency", type=int, default=None, help="optimizer steps between pruning events")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None)
    parser.add_argument("--optimizer", default="momentum")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--dropout", type=float, default=0.0, help="unstructured: dropout of the network")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--shift",
        type=int,
        default=None,
        help="random shift of training images in pixels (default 2; 0: none)",
    )
    parser.add_argument("--dense-epochs", type=int, default=3, help="structured: dense training epochs")
    parser.add_argument("--prune-epochs", type=int, default=2, help="structured: ramp epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="structured: fine-tuning epochs")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument(
        "--limit-train-batches", type=float, default=150, help="structured: batches per epoch"
    )
    parser.add_argument("--repeats", type=int, default=10, help="structured: timed runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (latency, overhead)")
    parser.add_argument("--steps", type=int, default=150, help="overhead: timed steps per run")
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"], help="overhead: models")
    parser.add_argument("--image-size", type=int, default=64, help="overhead_groups: ResNet-18 input size")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; load {os.getloadavg()}"
    )
    defaults = {
        "lenet300": dict(
            epochs=30,
            prune_start=2,
            prune_end=18,
            frequency=100,
            sparsities=[0.92, 0.955],
            lr=0.05,
            weight_decay=1e-4,
            batch_size=128,
            shift=2,
        ),
        "lenet5": dict(
            epochs=8,
            prune_start=1,
            prune_end=5,
            frequency=100,
            sparsities=[0.92, 0.955],
            lr=0.05,
            weight_decay=1e-4,
            batch_size=128,
            shift=2,
        ),
        "structured": dict(lr=0.05, weight_decay=1e-4, batch_size=128, shift=0),
        "overhead": dict(batch_size=128, lr=0.01, weight_decay=0.0, shift=0),
        "overhead_steps": dict(batch_size=128, lr=0.01, weight_decay=0.0, shift=0),
        "overhead_groups": dict(batch_size=16, lr=0.01, weight_decay=0.0, shift=0),
        "overhead_fit": dict(batch_size=16, lr=0.01, weight_decay=0.0, shift=0),
    }
    parts = (
        ["lenet300", "lenet5", "structured", "overhead", "overhead_steps"]
        if args.part == "all"
        else [args.part]
    )
    for part in parts:
        part_args = copy.copy(args)
        for key, value in defaults[part].items():
            if getattr(part_args, key, None) is None:
                setattr(part_args, key, value)
        if part in ("lenet300", "lenet5"):
            run_unstructured(part_args, part)
        elif part == "structured":
            run_structured(part_args)
        elif part == "overhead_steps":
            run_overhead_steps(part_args)
        elif part == "overhead_groups":
            run_overhead_groups(part_args)
        elif part == "overhead_fit":
            run_overhead_fit(part_args)
        else:
            run_overhead(part_args)
    print(f"\nload at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
