"""Knowledge distillation on real MNIST, after Hinton, Vinyals & Dean (2015), and its step-time overhead.

Anchor (Hinton et al. 2015, section 3): a large net made 67 test errors, a smaller net trained alone 146,
the same smaller net distilled 74, recovering (146 - 74) / (146 - 67) = 91% of the gap.

Here, in one run::

    .venv/bin/python -m benchmarks.distillation --data-dir ../shared/data

1. **Teacher**: an ensemble of ``--teacher-members`` (6) of Hinton's large nets, 784-1200-1200-10 MLPs
   (2,395,210 parameters each) with dropout, each trained ``--teacher-epochs`` (80) with jitter (the data
   module's ``augmentation="light"``: random translations up to 10%; ``--teacher-augmentation elastic``
   adds Simard et al.'s elastic distortions) from its own seed, their logits averaged by
   :class:`~lightning_optim.models.LogitEnsemble` (Hinton et al. distill to compress an ensemble). Each
   member is cached under ``--cache-dir`` so a re-run reuses it (delete the files to retrain);
   ``--train-member K`` trains one member into the cache, so that members can be trained in parallel
   processes first; ``--teacher-precision bf16-mixed`` trains them in bf16 autocast (``--teacher-epochs 150
   --teacher-precision bf16-mixed`` is the fifth session's teacher: 67 errors, but a worse teacher for the
   student than the default's, 71 on that CPU). ``--teacher-members 7 --teacher-epochs 40`` is the third
   session's teacher;
   ``--teacher-members 1 --teacher-epochs 15 --student-hidden 256,128 --temperature 8`` the single-teacher
   protocol of earlier runs.
2. **Student**: Hinton's small net, a 784-800-800-10 MLP (1,276,810 parameters, 11.3x fewer than the
   6-member teacher), trained on the *unaugmented* data with no regularization (with ``--augmented``: both
   on jittered data, the distilled one with online KD), once alone (cross-entropy) and once distilled with
   :class:`~lightning_optim.callbacks.KnowledgeDistillation` at T = 20 on soft targets only (offline mode:
   teacher logits cached by sample index), same epochs, optimizer, schedule and seeds; mean and spread over
   ``--seeds``. Each run's test errors are cached too (``--cache-dir``/students, named by every setting
   that changes them); ``--student-seed K [--student-mode alone]`` runs one seed's student into the cache.
3. **Overhead**: median training-step time of the student alone, with online KD (teacher every step) and
   with the logit cache after it is filled, interleaved in one process; ratios to the student alone.

Errors are counted on the 10,000 MNIST test images (``--limit-test-samples N``: the first N, for a quick
trial). Gap recovery = (alone - distilled) / (alone - teacher).
``--holdout N`` holds N training images out of every member's and student's training (seeded; cache names
get ``_hoN``); ``--count-on holdout`` counts errors on them instead of the test set. Settings can be tuned
there, and the chosen one run once on the test set (``--count-on test``, the same members and training
data). ``--student-optimizer`` trains both students with momentum or Nesterov SGD instead of Adam; every
student run stops at its first non-finite loss (``NonFiniteGuard``) instead of caching a diverged result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks._trainer import quiet_trainer_kwargs
from lightning_optim.callbacks import KnowledgeDistillation, NonFiniteGuard
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.evaluate import count_correct
from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.models import LeNet300100, LogitEnsemble
from lightning_optim.modules import ClassificationModule

#: --teacher-augmentation -> the members' training augmentation: Hinton et al.'s jitter (shifts up to 10%,
#: i.e. 3 px), or the same shifts followed by Simard et al.'s (2003) elastic distortions (alpha 34 px, sigma 4)
TEACHER_AUGMENTATIONS: dict[str, str | list[dict]] = {
    "jitter": "light",
    "elastic": [
        {"name": "affine", "translate": [0.1, 0.1]},
        {"name": "elastic", "alpha": 68.0, "sigma": 4.0},
    ],
}
TEACHER_HIDDEN = (1200, 1200)
TEACHER_MEMBERS = 6
TEACHER_EPOCHS = 80
STUDENT_HIDDEN = (800, 800)
MNIST_TRAIN_IMAGES = 60_000
#: --student-optimizer -> its name in the printed table
OPTIMIZER_NAMES = {"adam": "Adam", "momentum": "SGD momentum 0.9", "nesterov": "SGD Nesterov 0.9"}


def make_teacher(dropout: float = 0.3) -> torch.nn.Module:
    """One teacher network (an ensemble member): Hinton's large net, 784-1200-1200-10 with dropout."""
    return LeNet300100(hidden=TEACHER_HIDDEN, dropout=dropout)


def make_student(hidden: tuple[int, int]) -> torch.nn.Module:
    return LeNet300100(hidden=hidden)


def make_data(
    data_dir: str, batch_size: int, augmentation: str = "none", limit: int | None = None, holdout: int = 0
):
    """MNIST with a seeded 2% validation split, or with ``holdout`` training images held out instead."""
    return ImageClassificationDataModule(
        "mnist",
        data_dir=data_dir,
        batch_size=batch_size,
        eval_batch_size=1000,
        val_split=holdout / MNIST_TRAIN_IMAGES if holdout else 0.02,
        augmentation=augmentation,
        return_index=True,
        limit_train_samples=limit,
        seed=0,
    )


def run_data(args, augmentation: str | list[dict] = "none") -> ImageClassificationDataModule:
    """The data of this run's members and students: ``--data-dir``, ``--batch-size``, ``--limit-train-samples``
    and ``--holdout`` from ``args``."""
    return make_data(
        args.data_dir, args.batch_size, augmentation, limit=args.limit_train_samples, holdout=args.holdout
    )


def trainer(epochs: int, callbacks=(), limit_train_batches=None, precision: str = "32-true") -> pl.Trainer:
    return pl.Trainer(
        **quiet_trainer_kwargs(
            max_epochs=epochs,
            limit_train_batches=limit_train_batches,
            limit_val_batches=0,
            callbacks=list(callbacks),
            precision=precision,
        )
    )


def module(net: torch.nn.Module, lr: float, epochs: int, optimizer: str = "adam") -> ClassificationModule:
    return ClassificationModule(
        net,
        optimizer=optimizer,
        lr=lr,
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
    )


def test_errors(
    net: torch.nn.Module, dm: ImageClassificationDataModule, holdout: bool = False, limit: int | None = None
) -> int:
    """Misclassified images of the 10,000-image MNIST test split (its first ``limit``: ``--limit-test-samples``),
    or of the held-out training images."""
    net.eval()
    split = dm.val_split_data if holdout else dm.test_split
    size = len(split) if limit is None else min(limit, len(split))
    batches = (
        (dm.to_model_input(split.images[i : min(i + 1000, size)]), split.labels[i : min(i + 1000, size)])
        for i in range(0, size, 1000)
    )
    counts = count_correct(net, batches)
    return counts["samples"] - counts["correct"]


def train_teacher(args, member: int = 0) -> tuple[torch.nn.Module, int, float]:
    """One teacher network (ensemble member ``member``, seed ``100 + member``), trained or loaded from the cache."""
    suffix = "" if member == 0 else f"_m{member}"
    if args.teacher_precision != "32-true":
        suffix = f"_{args.teacher_precision}{suffix}"
    if (args.teacher_lr, args.batch_size) != (1e-3, 256):  # the defaults keep their earlier file names
        suffix = f"_lr{args.teacher_lr:g}_b{args.batch_size}{suffix}"
    if args.holdout:
        suffix = f"_ho{args.holdout}{suffix}"
    path = (
        Path(args.cache_dir)
        / f"teacher_mlp1200x2_dropout_{args.teacher_augmentation}_e{args.teacher_epochs}_s{args.limit_train_samples}{suffix}.pt"
    )
    net = make_teacher()
    augmentation = TEACHER_AUGMENTATIONS[args.teacher_augmentation]
    dm = run_data(args, augmentation)
    dm.setup("fit")
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        seconds = float("nan")
    else:
        pl.seed_everything(100 + member)
        start = time.perf_counter()
        trainer(args.teacher_epochs, precision=args.teacher_precision).fit(
            module(net, args.teacher_lr, args.teacher_epochs), datamodule=dm
        )
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    return net, test_errors(net, dm, counts_on_holdout(args), args.limit_test_samples), seconds


def train_teachers(args) -> tuple[torch.nn.Module, int, list[int], float]:
    """The teacher: one network, or a :class:`LogitEnsemble` of ``--teacher-members`` networks (seeds 100,
    101, ...). Returns the teacher, its test errors, each member's test errors and the training seconds."""
    members, member_errors, seconds = [], [], 0.0
    for member in range(args.teacher_members):
        net, errors, took = train_teacher(args, member)
        members.append(net)
        member_errors.append(errors)
        seconds += took
        print(f"teacher member {member}: {errors} {error_kind(args)}", flush=True)
    if len(members) == 1:
        return members[0], member_errors[0], member_errors, seconds
    ensemble = LogitEnsemble(members, combine=args.ensemble_combine, temperature=args.temperature)
    dm = run_data(args)
    dm.setup("fit")
    return (
        ensemble,
        test_errors(ensemble, dm, counts_on_holdout(args), args.limit_test_samples),
        member_errors,
        seconds,
    )


def student_result_path(args, seed: int, distilled: bool) -> Path:
    """Where one student run's test errors are cached: the file name holds every setting that changes them."""
    student = "x".join(map(str, args.student_hidden))
    setting = (
        f"h{student}_e{args.student_epochs}_lr{args.student_lr:g}_b{args.batch_size}"
        f"_aug{int(args.augmented)}_s{args.limit_train_samples}_t{args.threads}"
    )  # threads too: an unregularized student's errors change with the order of float sums
    if args.student_optimizer != "adam":  # Adam runs keep their earlier file names
        setting += f"_opt{args.student_optimizer}"
    if args.holdout:
        setting += f"_ho{args.holdout}" + ("_onho" if counts_on_holdout(args) else "")
    if args.limit_test_samples is not None:
        setting += f"_test{args.limit_test_samples}"
    if distilled:
        setting += (
            f"_kd_T{args.temperature:g}_a{args.alpha:g}_teacher{args.teacher_members}x{args.teacher_augmentation}"
            f"_e{args.teacher_epochs}_{args.ensemble_combine}"
        )
        if args.teacher_precision != "32-true":
            setting += f"_{args.teacher_precision}"
        if args.teacher_lr != 1e-3:  # the members' --batch-size is the students' (in the name already)
            setting += f"_tlr{args.teacher_lr:g}"
    return Path(args.cache_dir) / "students" / f"{setting}_seed{seed}.json"


def student_errors(args, seed: int, teacher: torch.nn.Module | None) -> tuple[int, float]:
    """``(test errors, teacher seconds the logit cache saved)`` of one student run, trained or from the cache."""
    path = student_result_path(args, seed, teacher is not None)
    if path.is_file():
        result = json.loads(path.read_text())
        return int(result["errors"]), float(result["saved_seconds"])
    errors, kd = train_student(args, seed, teacher)
    saved = kd.stats.get("estimated_saved_seconds", 0.0) if kd is not None else 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"errors": errors, "saved_seconds": saved}))
    return errors, saved


def train_student(
    args, seed: int, teacher: torch.nn.Module | None
) -> tuple[int, KnowledgeDistillation | None]:
    pl.seed_everything(seed)
    net = make_student(args.student_hidden)
    augmentation = "light" if args.augmented else "none"
    dm = run_data(args, augmentation)
    callbacks: list[Callback] = [
        NonFiniteGuard(check_weights_every_n_steps=0)
    ]  # a diverged run is not cached
    kd = None
    if teacher is not None:  # augmented data: the teacher runs online on the same jittered batch
        kd = KnowledgeDistillation(
            teacher, temperature=args.temperature, alpha=args.alpha, cache_teacher_logits=not args.augmented
        )
        callbacks.append(kd)
    trainer(args.student_epochs, callbacks).fit(
        module(net, args.student_lr, args.student_epochs, args.student_optimizer), datamodule=dm
    )
    return test_errors(net, dm, counts_on_holdout(args), args.limit_test_samples), kd


class StepTimer(Callback):
    """Wall time of each training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)


def step_times(args, teacher: torch.nn.Module, mode: str) -> float:
    """Median step time (s) of the student over ``--timing-batches`` steps of the second epoch."""
    pl.seed_everything(0)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if mode != "alone":
        callbacks.append(
            KnowledgeDistillation(
                teacher, temperature=args.temperature, alpha=args.alpha, cache_teacher_logits=mode == "cached"
            )
        )
    dm = make_data(args.data_dir, args.batch_size, limit=args.timing_batches * args.batch_size)
    # two epochs over the same samples: the first fills the cache, the second is timed
    trainer(2, callbacks).fit(module(make_student(args.student_hidden), args.student_lr, 2), datamodule=dm)
    return statistics.median(timer.times[len(timer.times) // 2 :])


class _GatedDistillation(KnowledgeDistillation):
    """Offline KD whose terms apply only in "on" blocks of ``block`` steps of epochs >= 1 (epoch 0 fills the
    cache with KD on at every step); in "off" blocks the step is the student's alone (cross-entropy)."""

    def __init__(self, *args, block: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.block = block

    def _on(self, trainer, batch_idx: int) -> bool:
        return trainer.current_epoch == 0 or (batch_idx // self.block) % 2 == 0

    def task_loss_weight(self, trainer, pl_module, ctx):
        return super().task_loss_weight(trainer, pl_module, ctx) if self._on(trainer, ctx.batch_idx) else 1.0

    def loss_terms(self, trainer, pl_module, ctx):
        return super().loss_terms(trainer, pl_module, ctx) if self._on(trainer, ctx.batch_idx) else {}


def step_times_in_fit(args, teacher: torch.nn.Module, block: int = 8) -> dict[str, float]:
    """Cached KD on and off in alternating blocks of steps within one fit: median step time of each."""
    pl.seed_everything(0)
    timer = StepTimer()
    kd = _GatedDistillation(
        teacher, temperature=args.temperature, alpha=args.alpha, cache_teacher_logits=True, block=block
    )
    dm = make_data(args.data_dir, args.batch_size, limit=args.timing_batches * args.batch_size * 4)
    trainer(2, [timer, kd]).fit(module(make_student(args.student_hidden), args.student_lr, 2), datamodule=dm)
    second = timer.times[len(timer.times) // 2 :]  # two epochs of the same length
    on = [t for i, t in enumerate(second) if (i // block) % 2 == 0 and i % block]
    off = [t for i, t in enumerate(second) if (i // block) % 2 == 1 and i % block]
    return {"on": statistics.median(on), "off": statistics.median(off), "steps": len(on) + len(off)}


def counts_on_holdout(args) -> bool:
    """Whether errors are counted on the held-out training images (``--holdout N --count-on holdout``)."""
    return bool(args.holdout) and args.count_on == "holdout"


def error_kind(args) -> str:
    """What the error counts are counted on: the test set, or the held-out training images."""
    return "held-out errors" if counts_on_holdout(args) else "test errors"


def gap_recovery(alone: list[float], distilled: list[float], teacher_errors: float) -> float:
    """(mean alone - mean distilled) / (mean alone - teacher): the share of the gap the distillation closes."""
    gap = statistics.mean(alone) - teacher_errors
    return (statistics.mean(alone) - statistics.mean(distilled)) / gap if gap > 0 else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: ``--holdout`` in range, ``--count-on holdout`` only with ``--holdout``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--cache-dir", default="runs/benchmarks")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--split-at",
        type=int,
        default=None,
        help="also print the gap recovery of seeds below and from this seed (e.g. 5 with --seeds 10: the "
        "earlier seeds and the ones added after them), and each seed's own recovery",
    )
    parser.add_argument(
        "--teacher-members",
        type=int,
        default=TEACHER_MEMBERS,
        help="networks in the teacher ensemble (logits averaged); 1: a single teacher network",
    )
    parser.add_argument(
        "--ensemble-combine",
        choices=["logits", "probabilities"],
        default="logits",
        help="average the members' logits, or their distributions at --temperature (Hinton et al.)",
    )
    parser.add_argument(
        "--student-hidden",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        default=STUDENT_HIDDEN,
        help="the student MLP's two hidden widths, comma-separated (256,128: the single-teacher protocol)",
    )
    parser.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    parser.add_argument(
        "--teacher-augmentation",
        choices=list(TEACHER_AUGMENTATIONS),
        default="jitter",
        help="the members' training augmentation: shifts (jitter), or shifts then elastic distortions",
    )
    parser.add_argument(
        "--teacher-precision",
        choices=["32-true", "bf16-mixed"],
        default="32-true",
        help="the members' training precision (bf16-mixed: about 1.5x faster steps on a CPU with AMX); the "
        "teacher's logits are computed in float32 either way",
    )
    parser.add_argument(
        "--student-seed",
        type=int,
        default=None,
        help="run only this seed's student (--student-mode alone or distilled) into the cache and exit",
    )
    parser.add_argument("--student-mode", choices=["alone", "distilled"], default="distilled")
    parser.add_argument(
        "--train-member",
        type=int,
        default=None,
        help="train (or load) only this ensemble member into the cache and exit: members can be trained "
        "in parallel processes before the main run",
    )
    parser.add_argument("--student-epochs", type=int, default=40)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--student-lr", type=float, default=2e-3)
    parser.add_argument(
        "--student-optimizer",
        choices=["adam", "momentum", "nesterov"],
        default="adam",
        help="both students' optimizer (momentum/nesterov: SGD with momentum 0.9), at --student-lr",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument(
        "--augmented",
        action="store_true",
        help="train both students with jitter (augmentation 'light'); the distilled one with online KD",
    )
    parser.add_argument("--timing-batches", type=int, default=60)
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--skip-timing", action="store_true", help="only the error counts")
    parser.add_argument(
        "--timing-only", action="store_true", help="only the step times (teacher from the cache)"
    )
    parser.add_argument("--limit-train-samples", type=int, default=None, help="for a quick trial only")
    parser.add_argument(
        "--limit-test-samples",
        type=int,
        default=None,
        help="count errors on the first N test images only (a quick trial; default: all 10,000)",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="hold out this many training images (seeded) from the members' and the students' training",
    )
    parser.add_argument(
        "--count-on",
        choices=["test", "holdout"],
        default="test",
        help="count errors on the test set, or on the --holdout images (to tune without the test set)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 <= args.holdout < MNIST_TRAIN_IMAGES:
        parser.error(f"--holdout must be in [0, {MNIST_TRAIN_IMAGES}), got {args.holdout}")
    if args.count_on == "holdout" and not args.holdout:
        parser.error("--count-on holdout needs --holdout N (N > 0)")
    if args.limit_test_samples is not None and (args.limit_test_samples < 1 or counts_on_holdout(args)):
        parser.error(
            "--limit-test-samples must be at least 1, and is for the test set (not with --count-on holdout)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    """The benchmark on the command line ``argv`` (default: ``sys.argv[1:]``)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PL_DISABLE_FORK", "1")

    if args.train_member is not None:
        _, errors, seconds = train_teacher(args, args.train_member)
        print(f"teacher member {args.train_member}: {errors} {error_kind(args)} (trained in {seconds:.0f} s)")
        return
    if args.student_seed is not None and args.student_mode == "alone":  # needs no teacher
        errors, _ = student_errors(args, args.student_seed, None)
        print(f"seed {args.student_seed}: student alone {errors} errors")
        return
    teacher, teacher_errors, member_errors, teacher_seconds = train_teachers(args)
    if args.student_seed is not None:
        errors, _ = student_errors(args, args.student_seed, teacher)
        print(f"seed {args.student_seed}: student distilled {errors} errors")
        return
    n_teacher, n_student = count_parameters(teacher), count_parameters(make_student(args.student_hidden))
    teacher_name = (
        "LeNet300100 1200-1200"
        if args.teacher_members == 1
        else f"LogitEnsemble ({args.ensemble_combine}) of {args.teacher_members} LeNet300100 1200-1200"
    )
    print(
        f"teacher: {teacher_name}, {n_teacher:,} parameters, {teacher_errors} {error_kind(args)} "
        f"(members: {member_errors}; trained in {teacher_seconds:.0f} s; nan = loaded from cache)",
        flush=True,
    )
    alone, distilled, saved = [], [], []
    for seed in range(0 if args.timing_only else args.seeds):
        errors, _ = student_errors(args, seed, None)
        alone.append(errors)
        errors, seconds = student_errors(args, seed, teacher)
        distilled.append(errors)
        saved.append(seconds)
        print(f"seed {seed}: student alone {alone[-1]} errors, distilled {distilled[-1]} errors", flush=True)

    rounds: dict[str, list[float]] = {"alone": [], "online": [], "cached": []}
    for _ in range(
        0 if args.skip_timing else args.timing_rounds
    ):  # interleaved, so load changes hit every mode alike
        for mode in rounds:
            rounds[mode].append(step_times(args, teacher, mode))
    median = {mode: statistics.median(values) if values else float("nan") for mode, values in rounds.items()}

    if args.timing_only:
        alone, distilled, saved = [float("nan")], [float("nan")], [float("nan")]
    mean_alone, mean_kd = statistics.mean(alone), statistics.mean(distilled)
    spread = max(max(alone) - min(alone), max(distilled) - min(distilled))
    recovery = gap_recovery(alone, distilled, teacher_errors)
    print()
    counted = (
        f"of {args.holdout:,} held-out training images; the test set is not used"
        if counts_on_holdout(args)
        else f"of {10_000 if args.limit_test_samples is None else min(args.limit_test_samples, 10_000):,}"
    )
    print(
        f"MNIST {error_kind(args)} ({counted}); student {n_student:,} parameters = teacher / "
        f"{n_teacher / n_student:.1f}"
    )
    data = (
        "jittered data (augmentation 'light'), online KD" if args.augmented else "unaugmented data, cached KD"
    )
    if args.holdout:
        data += f"; {args.holdout:,} training images held out of every member's and student's training"
    print(
        f"students: {'-'.join(map(str, args.student_hidden))} MLP, {args.student_epochs} epochs, {OPTIMIZER_NAMES[args.student_optimizer]} {args.student_lr:g}, cosine, batch {args.batch_size}; {data}"
    )
    print()
    print(f"| model | parameters | {error_kind(args)} (mean) | per seed |")
    print("|---|---|---|---|")
    print(
        f"| teacher: {teacher_name} (dropout, {args.teacher_augmentation}, {args.teacher_epochs} epochs, "
        f"{args.teacher_precision}) | {n_teacher:,} | {teacher_errors} | members {member_errors} |"
    )
    print(f"| student alone | {n_student:,} | {mean_alone:.1f} | {alone} |")
    print(
        f"| student distilled (T={args.temperature:g}, alpha={args.alpha:g}) | {n_student:,} | {mean_kd:.1f} | {distilled} |"
    )
    print()
    print(
        f"gap recovery: {100 * recovery:.1f}% (Hinton et al. 2015: 91%); improvement {mean_alone - mean_kd:.1f} errors "
        f"vs largest seed-to-seed spread {spread} errors"
    )
    if args.split_at is not None and not args.timing_only:
        print(
            "per seed: "
            + ", ".join(
                f"{100 * gap_recovery([a], [d], teacher_errors):.1f}%" for a, d in zip(alone, distilled)
            )
        )
        for label, part in (
            (f"seeds 0-{args.split_at - 1}", slice(0, args.split_at)),
            (f"seeds {args.split_at}-{len(alone) - 1}", slice(args.split_at, None)),
        ):
            if alone[part]:
                recovery_part = gap_recovery(alone[part], distilled[part], teacher_errors)
                print(
                    f"{label}: alone {statistics.mean(alone[part]):.1f}, distilled "
                    f"{statistics.mean(distilled[part]):.1f}, gap recovery {100 * recovery_part:.1f}%"
                )
    print(
        f"teacher time saved by the logit cache per distilled run: {statistics.mean(saved):.1f} s (estimated)"
    )
    if rounds["alone"]:  # --skip-timing: no table of nan
        print()
        print("| step time (median of medians) | ms | ratio to student alone |")
        print("|---|---|---|")
        for mode, label in (
            ("alone", "student alone"),
            ("online", "online KD (teacher every step)"),
            ("cached", "offline KD (cached logits)"),
        ):
            print(f"| {label} | {1000 * median[mode]:.2f} | {median[mode] / median['alone']:.2f} |")
    if not args.skip_timing:
        gated = step_times_in_fit(args, teacher)
        print(
            f"\nin one fit, cached KD on / off in alternating blocks of 8 steps ({gated['steps']} steps of the "
            f"second epoch): median {1000 * gated['on']:.2f} / {1000 * gated['off']:.2f} ms = "
            f"{gated['on'] / gated['off']:.3f} (target <= 1.1)"
        )
    if rounds["alone"]:
        per_round = {m: [v / a for v, a in zip(rounds[m], rounds["alone"])] for m in ("online", "cached")}
        print()
        for mode in ("online", "cached"):
            values = ", ".join(f"{r:.3f}" for r in per_round[mode])
            print(
                f"{mode} / alone per round (same round): {values}; median {statistics.median(per_round[mode]):.3f}"
            )
    print()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
