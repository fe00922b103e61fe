"""Time and epochs to 99.0% MNIST test accuracy: constant-LR Adam (the tutorial recipe) vs our recipe, and
the per-step overhead of LRScheduling + EarlyStopping.

Run from the repository root (2 CPU threads by default)::

    .venv/bin/python -m benchmarks.time_to_accuracy --data-dir ../shared/data
    .venv/bin/python -m benchmarks.time_to_accuracy --data-dir ../shared/data --quick   # smoke check

Recipes, all on the same network (``--model``, default LeNet-5 classic) and the same real MNIST split:

- ``a_constant_adam``: Adam at a constant LR of 1e-3, batch 64, no augmentation (the usual tutorial).
- ``b_one_cycle``: our recipe for speed: batch 256, AdamW, :class:`~lightning_optim.callbacks.LRScheduling`
  with a one-cycle schedule (beta1 cycling) over ``--fast-epochs`` epochs, peak LR ``--peak-lr``.
- ``b_one_cycle_long``: the same recipe over ``--long-epochs`` epochs with batched augmentation (the data
  module's ``light`` preset) and label smoothing, for the best final accuracy.

After every training epoch the full 10,000-image test set is evaluated; the clock counts training time
only (setup and the test evaluations are excluded, identically for every recipe). Recipe (a) stops at the
target (or ``--max-epochs``); (b) runs its whole schedule. The overhead section times steps (median interval
between consecutive ``on_train_batch_end`` within an epoch) of the recipe-(a) training with no callback and
with ``LRScheduling`` + ``EarlyStopping``, interleaved over ``--overhead-rounds`` rounds, with a second
callback-free fit per round as the A/A control (the noise floor of between-fit ratios); then, within one
fit, ``LRScheduling``'s per-step hook switched on and off in alternating blocks of steps; and the CPU time
spent inside the two callbacks' hooks, per step and per epoch.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks._trainer import quiet_trainer_kwargs
from lightning_optim.callbacks import EarlyStopping, LRScheduling
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.evaluate import count_correct
from lightning_optim.functional.lr_scheduling.schedules import OneCycle
from lightning_optim.models import create_model
from lightning_optim.modules import ClassificationModule


@dataclass
class Recipe:
    name: str
    description: str
    batch_size: int
    optimizer: str
    lr: float
    epochs: int
    stop_at_target: bool
    schedule: dict[str, Any] | None = None
    augmentation: str = "none"
    label_smoothing: float = 0.0
    weight_decay: float | None = None


@dataclass
class RunResult:
    recipe: Recipe
    epochs: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # cumulative training time at each epoch end
    accuracy: list[float] = field(default_factory=list)

    def first_at(self, target: float) -> tuple[int, float] | None:
        for epoch, seconds, acc in zip(self.epochs, self.seconds, self.accuracy):
            if acc >= target:
                return epoch, seconds
        return None


class EpochClock(Callback):
    """Times each training epoch, then (clock stopped) evaluates the full test set."""

    def __init__(
        self, dm: ImageClassificationDataModule, result: RunResult, target: float, stop: bool
    ) -> None:
        self.dm = dm
        self.result = result
        self.target = target
        self.stop = stop
        self.total = 0.0
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.total += time.perf_counter() - self._start
        acc = test_accuracy(pl_module, self.dm)
        self.result.epochs.append(trainer.current_epoch + 1)
        self.result.seconds.append(self.total)
        self.result.accuracy.append(acc)
        print(
            f"  {self.result.recipe.name}: epoch {trainer.current_epoch + 1} "
            f"train {self.total:7.1f}s test acc {100 * acc:.2f}%",
            flush=True,
        )
        if self.stop and acc >= self.target:
            trainer.should_stop = True


class StepClock(Callback):
    """Intervals between consecutive ``on_train_batch_end`` calls within an epoch (steady-state steps)."""

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.intervals: list[float] = []
        self.cpu_intervals: list[float] = []
        self._last: tuple[float, float] | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = (time.perf_counter(), time.process_time())
        if self._last is not None and batch_idx > self.skip:
            self.intervals.append(now[0] - self._last[0])
            self.cpu_intervals.append(now[1] - self._last[1])
        self._last = now


class _HookTimer:
    """Adds the CPU time of the current thread spent in a callback's hooks to ``seconds[category]``.

    Categories: ``step`` (hooks called at every training step) and ``epoch`` (once per fit or epoch: setup,
    the early-stopping check and its weight copy), so the per-step cost can be told from the per-epoch one.
    """

    @staticmethod
    def timed(hook, category: str):
        def wrapper(self, *args, **kwargs):
            start = time.thread_time()
            try:
                return hook(self, *args, **kwargs)
            finally:
                type(self).seconds[category] += time.thread_time() - start

        return wrapper


class TimedLRScheduling(LRScheduling):
    seconds = {"step": 0.0, "epoch": 0.0}
    on_train_batch_start = _HookTimer.timed(LRScheduling.on_train_batch_start, "step")
    on_train_epoch_start = _HookTimer.timed(LRScheduling.on_train_epoch_start, "epoch")
    on_train_epoch_end = _HookTimer.timed(LRScheduling.on_train_epoch_end, "epoch")
    on_validation_end = _HookTimer.timed(LRScheduling.on_validation_end, "epoch")
    on_train_start = _HookTimer.timed(LRScheduling.on_train_start, "epoch")


class TimedEarlyStopping(EarlyStopping):
    seconds = {"step": 0.0, "epoch": 0.0}
    on_train_epoch_end = _HookTimer.timed(EarlyStopping.on_train_epoch_end, "epoch")
    on_validation_end = _HookTimer.timed(EarlyStopping.on_validation_end, "epoch")
    on_train_end = _HookTimer.timed(EarlyStopping.on_train_end, "epoch")


def test_accuracy(
    pl_module: pl.LightningModule, dm: ImageClassificationDataModule, batch: int = 2000
) -> float:
    was_training = pl_module.training
    pl_module.eval()
    split = dm.test_split
    batches = (
        (dm.to_model_input(split.images[i : i + batch], train=False), split.labels[i : i + batch])
        for i in range(0, len(split), batch)
    )
    correct = count_correct(pl_module, batches)["correct"]
    pl_module.train(was_training)
    return correct / len(split)


def make_module(args: argparse.Namespace, recipe: Recipe, **kwargs: Any) -> ClassificationModule:
    net = create_model(args.model, **({"image_size": 28} if args.model in ("lenet5", "convnet3") else {}))
    return ClassificationModule(
        net,
        optimizer=recipe.optimizer,
        lr=recipe.lr,
        label_smoothing=recipe.label_smoothing,
        weight_decay=recipe.weight_decay,
        **kwargs,
    )


def make_datamodule(args: argparse.Namespace, recipe: Recipe) -> ImageClassificationDataModule:
    dm = ImageClassificationDataModule(
        "mnist",
        data_dir=args.data_dir,
        val_split=1.0 / 60.0,  # 1,000 images held out (unused here), 59,000 for training
        batch_size=recipe.batch_size,
        augmentation=recipe.augmentation,
        limit_train_samples=args.limit_train_samples,
        seed=args.seed,
    )
    dm.setup("fit")
    if args.quick:  # a smaller test set for the smoke check
        dm.test_split = dm.test_split.subset(torch.arange(2000))
    return dm


def trainer_kwargs(epochs: int, **overrides: Any) -> dict[str, Any]:
    kwargs = quiet_trainer_kwargs(max_epochs=epochs, limit_val_batches=0)
    kwargs.update(overrides)
    return kwargs


def run_recipe(args: argparse.Namespace, recipe: Recipe) -> RunResult:
    pl.seed_everything(args.seed, verbose=False)
    dm = make_datamodule(args, recipe)
    module = make_module(args, recipe)
    result = RunResult(recipe)
    callbacks: list[Callback] = [EpochClock(dm, result, args.target, recipe.stop_at_target)]
    if recipe.schedule is not None:
        callbacks.insert(0, LRScheduling(OneCycle(**recipe.schedule), interval="step"))
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(recipe.epochs))
    trainer.fit(module, datamodule=dm)
    return result


def measure_overhead(args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """Per-step time of recipe (a) with no callback vs LRScheduling + EarlyStopping, interleaved.

    A third variant, ``none_again`` (no callback, a second fit in the same round), is the A/A control: its
    ratio to ``none`` is the measurement's noise floor. A fourth, ``torch_onecycle``, has no callback but
    ``torch.optim.lr_scheduler.OneCycleLR`` stepped by Lightning per step: the same LR and beta1 sequence as
    ``lr_es``'s one-cycle, so the two fits compute on the same numbers and only the mechanism differs. Each round runs the three variants in a rotated order;
    besides the pooled medians, the per-round ratios (same round, adjacent fits) are reported.
    """
    dm = make_datamodule(args, recipe)
    variants = ("none", "lr_es", "none_again", "torch_onecycle")
    steps = 2 * (args.overhead_steps // 2)
    intervals: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    round_medians: list[dict[str, float]] = []
    for timed in (TimedLRScheduling, TimedEarlyStopping):
        timed.seconds = {"step": 0.0, "epoch": 0.0}
    hook_steps = hook_epochs = 0
    for round_ in range(args.overhead_rounds):
        shift = round_ % len(variants)
        order = variants[shift:] + variants[:shift]
        medians: dict[str, float] = {}
        for variant in order:
            pl.seed_everything(args.seed, verbose=False)
            clock = StepClock()
            callbacks: list[Callback] = [clock]
            if variant == "lr_es":
                callbacks += [
                    TimedLRScheduling(OneCycle(), interval="step"),
                    TimedEarlyStopping("val_loss", patience=10, restore_best_weights=True),
                ]
            trainer = pl.Trainer(
                callbacks=callbacks,
                **trainer_kwargs(
                    2,
                    limit_train_batches=args.overhead_steps // 2,
                    limit_val_batches=2,
                    num_sanity_val_steps=0,
                ),
            )
            kwargs: dict[str, Any] = {}
            if variant == "torch_onecycle":  # OneCycle()'s defaults are torch's OneCycleLR defaults
                kwargs = dict(
                    lr_scheduler=partial(
                        torch.optim.lr_scheduler.OneCycleLR, max_lr=recipe.lr, total_steps=steps
                    ),
                    scheduler_interval="step",
                )
            trainer.fit(make_module(args, recipe, **kwargs), datamodule=dm)
            intervals[variant] += clock.intervals
            cpu[variant] += clock.cpu_intervals
            medians[variant] = statistics.median(clock.intervals)
            if variant == "lr_es":
                hook_steps += trainer.global_step
                hook_epochs += trainer.current_epoch
        round_medians.append(medians)
    med = {k: statistics.median(v) for k, v in intervals.items()}
    mean = {k: statistics.fmean(v) for k, v in intervals.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    step_hooks = TimedLRScheduling.seconds["step"] + TimedEarlyStopping.seconds["step"]
    epoch_hooks = TimedLRScheduling.seconds["epoch"] + TimedEarlyStopping.seconds["epoch"]
    full_epoch_steps = math.ceil(len(dm.train_split) / recipe.batch_size)
    return {
        "steps": {k: len(v) for k, v in intervals.items()},
        "median_ms": {k: 1000 * v for k, v in med.items()},
        "mean_ms": {k: 1000 * v for k, v in mean.items()},
        "cpu_median_ms": {k: 1000 * v for k, v in cpu_med.items()},
        "ratio_median": med["lr_es"] / med["none"],
        "ratio_aa": med["none_again"] / med["none"],
        "ratio_vs_torch": med["lr_es"] / med["torch_onecycle"],
        "ratio_mean": mean["lr_es"] / mean["none"],
        "ratio_cpu_median": cpu_med["lr_es"] / cpu_med["none"],
        # per round: lr_es against the mean of the two callback-free fits of the same round
        "round_ratios": [m["lr_es"] / (0.5 * (m["none"] + m["none_again"])) for m in round_medians],
        "round_ratios_aa": [m["none_again"] / m["none"] for m in round_medians],
        # CPU time in the two callbacks' hooks: per training step, and per epoch (setup and checks)
        "hook_us_per_step": 1e6 * step_hooks / max(hook_steps, 1),
        "hook_ms_per_epoch": 1e3 * epoch_hooks / max(hook_epochs, 1),
        "ratio_hooks_step": 1.0 + step_hooks / max(hook_steps, 1) / med["none"],
        # amortized over a full MNIST epoch of recipe (a): 59,000 images at batch 64 = 922 steps
        "steps_per_full_epoch": full_epoch_steps,
        "ratio_hooks_full_epoch": 1.0
        + (step_hooks / max(hook_steps, 1) + epoch_hooks / max(hook_epochs, 1) / full_epoch_steps)
        / med["none"],
    }


class _GatedLRScheduling(LRScheduling):
    """LRScheduling whose per-step hook runs only in "on" blocks of ``block`` steps (for the in-fit A/B)."""

    def __init__(self, *args: Any, block: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.block = block

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (batch_idx // self.block) % 2 == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


class _BlockClock(StepClock):
    """StepClock that files each interval under "on" or "off" by the block of the step it ends."""

    def __init__(self, block: int, skip: int = 5) -> None:
        super().__init__(skip)
        self.block = block
        self.by_state: dict[str, list[float]] = {"on": [], "off": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = len(self.intervals)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if len(self.intervals) > n and batch_idx % self.block != 0:  # skip the first step of each block
            self.by_state["on" if (batch_idx // self.block) % 2 == 0 else "off"].append(self.intervals[-1])


def measure_overhead_in_fit(args: argparse.Namespace, recipe: Recipe, block: int = 8) -> dict[str, Any]:
    """The per-step hook of LRScheduling switched on and off in alternating blocks of steps within one fit.

    Both halves share the process, the memory layout and the machine's state at that moment, so the ratio
    of their median step times has a far lower noise floor than ratios between separate fits.
    """
    dm = make_datamodule(args, recipe)
    pl.seed_everything(args.seed, verbose=False)
    clock = _BlockClock(block)
    callbacks: list[Callback] = [
        clock,
        _GatedLRScheduling(OneCycle(), interval="step", warmup=10, block=block),
        EarlyStopping("val_loss", patience=10, restore_best_weights=True),
    ]
    trainer = pl.Trainer(
        callbacks=callbacks,
        **trainer_kwargs(1, limit_train_batches=args.overhead_in_fit_steps, limit_val_batches=2),
    )
    trainer.fit(make_module(args, recipe), datamodule=dm)
    on, off = (statistics.median(clock.by_state[k]) for k in ("on", "off"))
    return {
        "steps": {k: len(v) for k, v in clock.by_state.items()},
        "on_ms": 1e3 * on,
        "off_ms": 1e3 * off,
        "ratio": on / off,
        "block": block,
    }


def recipes(args: argparse.Namespace) -> list[Recipe]:
    a = Recipe(
        "a_constant_adam",
        "Adam, constant LR 1e-3, batch 64, no augmentation",
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        epochs=args.max_epochs,
        stop_at_target=True,
    )
    one_cycle = {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0, "base_momentum": 0.85}
    b = Recipe(
        "b_one_cycle",
        f"AdamW, one-cycle (peak {args.peak_lr:g}, beta1 cycling) over {args.fast_epochs} epochs, batch 256",
        batch_size=256,
        optimizer="adamw",
        lr=args.peak_lr,
        epochs=args.fast_epochs,
        stop_at_target=False,
        schedule=one_cycle,
        weight_decay=1e-4,
    )
    b_long = Recipe(
        "b_one_cycle_long",
        f"as (b) over {args.long_epochs} epochs + batched augmentation 'light' + label smoothing 0.05",
        batch_size=256,
        optimizer="adamw",
        lr=args.peak_lr,
        epochs=args.long_epochs,
        stop_at_target=False,
        schedule=one_cycle,
        augmentation="light",
        label_smoothing=0.05,
        weight_decay=1e-4,
    )
    return [a, b, b_long]


def _fmt_reach(result: RunResult, target: float) -> tuple[str, str]:
    hit = result.first_at(target)
    return (str(hit[0]), f"{hit[1]:.1f}") if hit else (f"not in {result.epochs[-1]}", "-")


def _run_seeds(args: argparse.Namespace) -> None:
    """Every selected recipe once per seed; per seed the epoch lines, then mean and worst per recipe."""
    args.limit_train_samples = 6000 if args.quick else None
    if args.quick:
        args.max_epochs, args.fast_epochs, args.long_epochs = 2, 1, 2
    torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?", "?", "?")
    print(
        f"# time to accuracy over seeds {args.seeds}: torch {torch.__version__}, lightning {pl.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}, load average at start {load}",
        flush=True,
    )
    selected = [r for r in recipes(args) if args.only is None or r.name in args.only]
    runs: dict[str, list[tuple[int, RunResult]]] = {r.name: [] for r in selected}
    for seed in args.seeds:
        args.seed = seed
        for recipe in selected:
            runs[recipe.name].append((seed, run_recipe(args, recipe)))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?", "?", "?")
    target = 100 * args.target
    print(
        f"\n## Over seeds {args.seeds} ({args.model}, {args.threads} threads; load average at end {load})\n"
    )
    print(
        f"| recipe | seed | final acc | best acc (epoch) | epochs to {target:.1f}% | train s to {target:.1f}% | "
        "train s total |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, seeded in runs.items():
        for seed, res in seeded:
            epochs, seconds = _fmt_reach(res, args.target)
            best = max(range(len(res.accuracy)), key=lambda i: res.accuracy[i])
            print(
                f"| {name} | {seed} | {100 * res.accuracy[-1]:.2f}% | {100 * res.accuracy[best]:.2f}% "
                f"({res.epochs[best]}) | {epochs} | {seconds} | {res.seconds[-1]:.1f} |"
            )
    print(
        f"\n| recipe | final acc mean | final acc worst | seeds at >= {target:.1f}% at the end | "
        "epochs to target, worst |"
    )
    print("|---|---|---|---|---|")
    for name, seeded in runs.items():
        finals = [res.accuracy[-1] for _, res in seeded]
        reach = [res.first_at(args.target) for _, res in seeded]
        worst_epochs = "not reached" if any(r is None for r in reach) else str(max(r[0] for r in reach))
        print(
            f"| {name} | {100 * statistics.mean(finals):.2f}% | {100 * min(finals):.2f}% | "
            f"{sum(f >= args.target for f in finals)} of {len(finals)} | {worst_epochs} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--quick", action="store_true", help="smoke check: 6,000 training images, 1-2 epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="lenet5", help="zoo model name (same for every recipe)")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--long-target", type=float, default=0.993)
    parser.add_argument("--max-epochs", type=int, default=12, help="cap for recipe (a)")
    parser.add_argument("--fast-epochs", type=int, default=3)
    parser.add_argument("--long-epochs", type=int, default=10)
    parser.add_argument("--peak-lr", type=float, default=1e-2)
    parser.add_argument("--overhead-steps", type=int, default=400)
    parser.add_argument("--overhead-rounds", type=int, default=6)
    parser.add_argument(
        "--overhead-in-fit-steps", type=int, default=900, help="steps of the in-fit on/off measurement"
    )
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run (default: all)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=None,
        help="run every recipe once per seed and print mean and worst (figures of record: >= 3 seeds)",
    )
    args = parser.parse_args(argv)
    if args.seeds:
        _run_seeds(args)
        return
    args.limit_train_samples = None
    if args.quick:
        args.limit_train_samples = 6000
        args.max_epochs, args.fast_epochs, args.long_epochs = 2, 1, 2
        args.overhead_steps, args.overhead_rounds, args.overhead_in_fit_steps = 60, 2, 120
    torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?", "?", "?")
    print(
        f"# time to accuracy: torch {torch.__version__}, lightning {pl.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, load average at start {load}",
        flush=True,
    )

    selected = [r for r in recipes(args) if args.only is None or r.name in args.only]
    results = [run_recipe(args, r) for r in selected]

    print(
        f"\n## Time to {100 * args.target:.1f}% MNIST test accuracy ({args.model}, {args.threads} threads)\n"
    )
    print(
        "| recipe | description | epochs to target | train s to target | best acc (epoch) | epochs run | train s total |"
    )
    print("|---|---|---|---|---|---|---|")
    for res in results:
        epochs, seconds = _fmt_reach(res, args.target)
        best = max(range(len(res.accuracy)), key=lambda i: res.accuracy[i])
        print(
            f"| {res.recipe.name} | {res.recipe.description} | {epochs} | {seconds} | "
            f"{100 * res.accuracy[best]:.2f}% ({res.epochs[best]}) | {res.epochs[-1]} | {res.seconds[-1]:.1f} |"
        )
    by_name = {r.recipe.name: r for r in results}
    a, b = by_name.get("a_constant_adam"), by_name.get("b_one_cycle")
    if a and b:
        ha, hb = a.first_at(args.target), b.first_at(args.target)
        if ha and hb:
            print(
                f"\nwall-time ratio to {100 * args.target:.1f}%, (b) / (a): {hb[1] / ha[1]:.3f} (target <= 0.333)"
            )
        elif hb:
            print(
                f"\n(a) did not reach {100 * args.target:.1f}% in {a.epochs[-1]} epochs: wall-time ratio (b) / (a) "
                f"< {hb[1] / a.seconds[-1]:.3f} (an upper bound)"
            )
        else:
            print(f"\nwall-time ratio: not available, (a) reached: {bool(ha)}, (b) reached: {bool(hb)}")
    long = by_name.get("b_one_cycle_long")
    if long:
        hit = long.first_at(args.long_target)
        print(
            f"(b long) best {100 * max(long.accuracy):.2f}%; {100 * args.long_target:.1f}% "
            + (f"reached at epoch {hit[0]} after {hit[1]:.1f} s" if hit else "not reached")
        )

    if not args.skip_overhead:
        over = measure_overhead(args, recipes(args)[0])
        print("\n## Per-step overhead of LRScheduling + EarlyStopping (recipe (a) steps, interleaved)\n")
        print("| variant | steps timed | median wall ms/step | mean wall ms/step | median CPU ms/step |")
        print("|---|---|---|---|---|")
        for k in ("none", "lr_es", "none_again", "torch_onecycle"):
            print(
                f"| {k} | {over['steps'][k]} | {over['median_ms'][k]:.3f} | {over['mean_ms'][k]:.3f} | "
                f"{over['cpu_median_ms'][k]:.3f} |"
            )
        rounds = over["round_ratios"]
        print(
            f"\noverhead ratio (LRScheduling + EarlyStopping) / none, pooled wall median: {over['ratio_median']:.4f} "
            f"(A/A control none_again / none: {over['ratio_aa']:.4f}); wall mean {over['ratio_mean']:.4f}; "
            f"process CPU time median {over['ratio_cpu_median']:.4f} (target <= 1.01)"
        )
        print(
            f"same LR/beta1 sequence, lr_es / torch_onecycle (OneCycleLR in configure_optimizers): "
            f"{over['ratio_vs_torch']:.4f}"
        )
        print(
            f"per round, lr_es / mean(none, none_again): median {statistics.median(rounds):.4f} of "
            f"{', '.join(f'{r:.3f}' for r in rounds)}; A/A per round: "
            f"{', '.join(f'{r:.3f}' for r in over['round_ratios_aa'])}"
        )
        print(
            f"CPU time inside the two callbacks' hooks (robust to the machine's load): "
            f"{over['hook_us_per_step']:.1f} us per step, {over['hook_ms_per_epoch']:.2f} ms per epoch "
            f"(setup, early-stopping check, weight copy); per-step ratio 1 + hooks / median step (none) = "
            f"{over['ratio_hooks_step']:.5f}; amortized over a full epoch of {over['steps_per_full_epoch']} steps: "
            f"{over['ratio_hooks_full_epoch']:.5f} (target <= 1.01)"
        )
        in_fit = measure_overhead_in_fit(args, recipes(args)[0])
        print(
            f"in one fit, LRScheduling's per-step hook on / off in alternating blocks of {in_fit['block']} steps "
            f"({in_fit['steps']['on']} / {in_fit['steps']['off']} steps timed): median "
            f"{in_fit['on_ms']:.3f} / {in_fit['off_ms']:.3f} ms = {in_fit['ratio']:.4f}"
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?", "?", "?")
    print(f"\nload average at end {load}")


if __name__ == "__main__":
    main()
