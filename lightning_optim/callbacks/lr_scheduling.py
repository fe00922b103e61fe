r"""
LR scheduling
^^^^^^^^^^^^^

Set the learning rate (and momentum) of every parameter group from a schedule, at each step or epoch,
without touching ``configure_optimizers``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer

from lightning_optim.callbacks._trainer import broadcast_from_rank0, log_metrics
from lightning_optim.checks import check_choice
from lightning_optim.functional.lr_scheduling.formulas import WARMUP_MODES
from lightning_optim.functional.lr_scheduling.schedules import (
    LRSchedule,
    ScheduledValues,
    create_schedule,
    lr_and_momentum_at,
)

log = logging.getLogger(__name__)

INTERVALS: tuple[str, ...] = ("step", "epoch")


class LRScheduling(Callback):
    r"""Drive the learning rate of every parameter group from a schedule, at each step or epoch.

    The schedule is a closed form of the step (see :mod:`lightning_optim.functional.lr_scheduling.schedules`), computed
    for each parameter group from that group's base learning rate, so groups with different LRs keep their
    ratio. Base LRs are read from the optimizer when training starts -- after Lightning's
    ``LearningRateFinder`` has set the module's ``lr`` -- unless ``base_lr`` is given. The number of steps
    comes from ``trainer.estimated_stepping_batches`` (``interval="step"``) or ``max_epochs``
    (``interval="epoch"``) unless ``total_steps`` is given. Warm-up (linear or exponential) precedes any
    schedule; the schedule then runs over the remaining steps.

    The base LRs, the number of steps and the schedule's own state (reduce-on-plateau) are saved in the
    checkpoint, so a run resumed from any checkpoint continues with exactly the learning rates of an
    uninterrupted one. The LR of each group (and the momentum, when cycled) is logged as ``lr-<Optimizer>``
    (``lr-<Optimizer>/pg<i>`` with several groups) every ``log_every_n_steps``.

    Args:
        schedule: a schedule instance (``OneCycle(...)``, ``CosineAnnealing(...)``...) or a short name with
            default arguments: ``constant``, ``step``, ``multistep``, ``exponential``, ``cosine``,
            ``polynomial``, ``cyclic``, ``one_cycle``, ``plateau``.
        interval: ``"step"`` (each optimizer step) or ``"epoch"``.
        total_steps: length of the schedule in intervals; ``None``: inferred from the Trainer.
        warmup: warm-up length, in intervals (int) or as a fraction of ``total_steps`` (float in (0, 1)).
        warmup_mode: ``"linear"`` or ``"exponential"``.
        warmup_start_factor: the LR at the first step is ``warmup_start_factor * base_lr``, in ``(0, 1]``.
        base_lr: the base LR of the first parameter group; the others keep their ratio to it. ``None``: the
            optimizer's LRs when training starts (which is where the LR finder's result lands).
        log_momentum: also log the momentum / beta1 when the schedule cycles it.

    Raises:
        ValueError: for an unknown schedule name, interval or warm-up mode, a non-positive ``base_lr``,
            ``total_steps`` or warm-up, and, when training starts, a warm-up as long as the training, an
            unknown total (infinite training), or a non-positive LR in the optimizer. A ``total_steps`` that
            differs from the run's length gets a warning (with the LR the run ends at).
        RuntimeError: at the first check of a metric-driven schedule whose ``monitor`` is not logged.

    Example::

        from lightning_optim.callbacks import LRScheduling
        from lightning_optim.functional.lr_scheduling.schedules import CosineAnnealing, OneCycle

        trainer = Trainer(max_epochs=5, callbacks=[LRScheduling(OneCycle(pct_start=0.25), interval="step")])
        trainer = Trainer(callbacks=[LRScheduling(CosineAnnealing(min_lr=1e-5), warmup=500)])

    In YAML (``lightning-optim fit --config ...``)::

        trainer:
          callbacks:
            - class_path: LRScheduling
              init_args:
                interval: epoch
                schedule: {class_path: ReduceOnPlateau, init_args: {monitor: val_loss, patience: 2}}
    """

    #: it sets the optimizers' learning rates only: works unchanged on sharded parameters
    sharded_parameters = "supported"

    def __init__(
        self,
        schedule: LRSchedule | str = "constant",
        interval: str = "step",
        total_steps: int | None = None,
        warmup: int | float = 0,
        warmup_mode: str = "linear",
        warmup_start_factor: float = 0.01,
        base_lr: float | None = None,
        log_momentum: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(schedule, str):
            schedule = create_schedule(schedule)
        if not isinstance(schedule, LRSchedule):
            raise ValueError(
                f"`schedule` must be a schedule name or an LRSchedule instance, got {type(schedule).__name__}."
            )
        check_choice("interval", interval, INTERVALS)
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1 (or None to infer it), got {total_steps}.")
        check_choice("warmup_mode", warmup_mode, WARMUP_MODES)
        if isinstance(warmup, float) and not warmup.is_integer() and not 0 < warmup < 1:
            raise ValueError(
                f"`warmup` must be a number of steps >= 0 or a fraction in (0, 1), got {warmup}."
            )
        if warmup < 0:
            raise ValueError(f"`warmup` must be >= 0, got {warmup}.")
        if not 0 < warmup_start_factor <= 1:
            raise ValueError(f"`warmup_start_factor` must be in (0, 1], got {warmup_start_factor}.")
        if base_lr is not None and (not math.isfinite(base_lr) or base_lr <= 0):
            raise ValueError(
                f"`base_lr` must be > 0 and finite (or None to use the optimizer's), got {base_lr}."
            )
        self.schedule = schedule
        self.interval = interval
        self.total_steps = total_steps
        self.warmup = warmup
        self.warmup_mode = warmup_mode
        self.warmup_start_factor = warmup_start_factor
        self.base_lr = base_lr
        self.log_momentum = log_momentum
        if total_steps is not None:
            self._check_warmup(self._warmup_steps(total_steps), total_steps)
            schedule.check_total(total_steps - self._warmup_steps(total_steps))
        # set when training starts (or restored from a checkpoint)
        self.base_lrs: list[list[float]] | None = None
        self.total: int | None = None
        self.warmup_steps: int = 0
        self.last_lrs: list[list[float]] = []
        self._last_position: int | None = None
        self._checked_monitor = False

    # ----------------------------------------------------------------------------------------- identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(schedule=type(self.schedule).__name__, interval=self.interval)

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lrs": self.base_lrs,
            "total": self.total,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = state_dict.get("base_lrs")
        self.total = state_dict.get("total")
        self.warmup_steps = state_dict.get("warmup_steps", 0)
        self.schedule.load_state_dict(state_dict.get("schedule", {}))
        self._last_position = None

    # ----------------------------------------------------------------------------------------- helpers
    def _warmup_steps(self, total: int) -> int:
        if isinstance(self.warmup, float) and 0 < self.warmup < 1:
            return int(round(self.warmup * total))
        return int(self.warmup)

    def _check_warmup(self, warmup_steps: int, total: int) -> None:
        if warmup_steps >= total:
            raise ValueError(
                f"`warmup` ({warmup_steps} {self.interval}s) must be shorter than the training "
                f"({total} {self.interval}s in all)."
            )

    def _infer_total(self, trainer: pl.Trainer) -> int:
        if self.total_steps is not None:
            return self.total_steps
        if self.interval == "epoch":
            total = trainer.max_epochs
            if total is None or total < 0:
                raise ValueError(
                    "LRScheduling(interval='epoch') needs `Trainer(max_epochs=...)` or `total_steps`."
                )
            return int(total)
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "LRScheduling cannot infer the number of steps of an infinite training; give `total_steps` or set "
                "`max_steps`/`max_epochs` on the Trainer."
            )
        return int(total)

    @staticmethod
    def _optimizer_name(optimizer: Optimizer, index: int, n: int) -> str:
        name = f"lr-{type(optimizer).__name__}"
        return name if n == 1 else f"{name}-{index}"

    # ----------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_setup(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._run_schedule(trainer, trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._run_schedule(trainer, trainer.current_epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.schedule.monitor is not None:
            self._run_metric_update(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # metric-driven schedules without a validation loop look at the training metrics
        if self.schedule.monitor is not None and not self._has_validation(trainer):
            self._run_metric_update(trainer)

    @staticmethod
    def _has_validation(trainer: pl.Trainer) -> bool:
        return bool(trainer.enable_validation) and trainer.limit_val_batches != 0

    # ----------------------------------------------------------------------------------------- logic
    def _run_setup(self, trainer: pl.Trainer) -> None:
        """Read base LRs and the number of steps (unless restored from a checkpoint) and validate them."""
        if trainer.lr_scheduler_configs:
            rank_zero_warn(
                "LRScheduling sets the learning rate itself, but `configure_optimizers` also returned a scheduler; "
                "both change the LR. Remove the scheduler (or this callback)."
            )
        if self.total is None:
            self.total = self._infer_total(trainer)
            self.warmup_steps = self._warmup_steps(self.total)
        self._check_warmup(self.warmup_steps, self.total)
        self.schedule.check_total(self.total - self.warmup_steps)
        if self.base_lrs is None:
            base_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]
            if self.base_lr is not None and base_lrs and base_lrs[0]:
                ref = base_lrs[0][0]
                if ref <= 0:
                    raise ValueError(
                        f"The optimizer's learning rate must be > 0 to scale it to `base_lr`, got {ref}."
                    )
                base_lrs = [[lr * self.base_lr / ref for lr in groups] for groups in base_lrs]
            self.base_lrs = base_lrs
        for groups in self.base_lrs:
            for lr in groups:
                if not lr > 0:
                    raise ValueError(
                        f"Every parameter group needs a learning rate > 0 for LRScheduling to scale, got {lr} "
                        "(set `lr` on the module/optimizer or `base_lr` on LRScheduling)."
                    )
        self._run_check_fits(trainer)
        self._momentum_keys = [self._momentum_key(opt) for opt in trainer.optimizers]
        self._names = [
            self._optimizer_name(opt, i, len(trainer.optimizers)) for i, opt in enumerate(trainer.optimizers)
        ]
        self._last_position = None

    def _run_length(self, trainer: pl.Trainer) -> int | None:
        """The run's length in intervals (steps or epochs; ``None``: unknown or infinite)."""
        if self.interval == "epoch":
            total = trainer.max_epochs
            return int(total) if isinstance(total, int) and total >= 0 else None
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - an unsized loader: nothing to compare with
            return None
        return int(total) if isinstance(total, (int, float)) and math.isfinite(total) else None

    def _run_check_fits(self, trainer: pl.Trainer) -> None:
        """A ``total_steps`` given that differs from the run's length is said, with the LR the run ends at."""
        if self.total_steps is None or self.schedule.monitor is not None or trainer.fast_dev_run:
            return
        run = self._run_length(trainer)
        if run is None or run == self.total or not self.base_lrs or not self.base_lrs[0]:
            return
        base = self.base_lrs[0][0]
        unit = self.interval
        at_end = self.lr_at(max(run - 1, 0), base, base)
        if run < self.total:
            what = (
                f"the run stops at {run / self.total:.0%} of the schedule: its last {unit} runs at LR {at_end:.3g}, "
                f"not at the schedule's end ({self.lr_at(self.total - 1, base, base):.3g})"
            )
        else:
            what = (
                f"its last {run - self.total} {unit}s run past the schedule's end (at {unit} {run - 1} the LR is "
                f"{at_end:.3g})"
            )
        rank_zero_warn(
            f"LRScheduling: `total_steps`={self.total} {unit}s, but the run has {run} {unit}s "
            f"({'max_epochs' if unit == 'epoch' else 'trainer.estimated_stepping_batches'}): {what}, for a base LR of "
            f"{base:.3g}. Leave `total_steps` unset to fit the schedule to the run."
        )

    @staticmethod
    def _momentum_key(optimizer: Optimizer) -> str | None:
        group = optimizer.param_groups[0]
        if "betas" in group:
            return "betas"
        if "momentum" in group:
            return "momentum"
        return None

    def _values_at(
        self, position: int, base_lrs: list[float], ref_lr: float | None = None
    ) -> ScheduledValues:
        """The LRs of ``base_lrs``' groups and the momentum at ``position`` (the one functional composition)."""
        assert self.total is not None
        return lr_and_momentum_at(
            self.schedule,
            position,
            self.total,
            base_lrs,
            self.warmup_steps,
            self.warmup_mode,
            self.warmup_start_factor,
            ref_lr,
        )

    def lr_at(self, position: int, base_lr: float, ref_lr: float) -> float:
        """The learning rate at ``position`` for a group with base LR ``base_lr`` (reference group: ``ref_lr``)."""
        return self._values_at(position, [base_lr], ref_lr).lrs[0]

    def _run_schedule(self, trainer: pl.Trainer, position: int) -> None:
        """Set the LR (and momentum) of every group for ``position`` (a step or an epoch)."""
        if self.base_lrs is None:  # e.g. hooks called by a tuner's inner loop before training starts
            return
        if position == self._last_position:
            return
        self._last_position = position
        momentum = None
        self.last_lrs = []
        for opt, groups, key in zip(trainer.optimizers, self.base_lrs, self._momentum_keys):
            lrs, momentum = self._values_at(position, groups)
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr
                if momentum is not None and key is not None:
                    if key == "betas":
                        group["betas"] = (momentum, *tuple(group["betas"])[1:])
                    else:
                        group["momentum"] = momentum
            self.last_lrs.append(lrs[: len(opt.param_groups)])
        self._last_momentum = momentum
        self._run_logging(trainer, position)

    def _run_logging(self, trainer: pl.Trainer, position: int) -> None:
        if self.interval == "step" and position % max(trainer.log_every_n_steps, 1) != 0:
            return
        metrics: dict[str, float] = {}
        for name, lrs in zip(self._names, self.last_lrs):
            if len(lrs) == 1:
                metrics[name] = lrs[0]
            else:
                metrics.update({f"{name}/pg{i}": lr for i, lr in enumerate(lrs)})
            if self.log_momentum and self._last_momentum is not None:
                metrics[name.replace("lr-", "momentum-", 1)] = self._last_momentum
        log_metrics(trainer, metrics)

    def _run_metric_update(self, trainer: pl.Trainer) -> None:
        """Feed the monitored metric to a metric-driven schedule (after warm-up) and apply the new LR."""
        monitor = self.schedule.monitor
        logs = trainer.callback_metrics
        if monitor not in logs:
            available = sorted(logs)
            raise RuntimeError(
                f"LRScheduling's schedule {type(self.schedule).__name__} monitors `{monitor}`, which is not logged. "
                f"Set `monitor` to one of the logged metrics: {available}."
            )
        position = trainer.global_step if self.interval == "step" else trainer.current_epoch
        if position < self.warmup_steps:
            return
        value = logs[monitor]
        value = float(
            broadcast_from_rank0(trainer, value.detach().cpu() if hasattr(value, "detach") else value)
        )
        self.schedule.update(value)
        self._last_position = None  # re-apply at the next step/epoch start
