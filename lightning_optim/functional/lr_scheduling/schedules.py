"""Learning-rate schedules for :class:`~lightning_optim.callbacks.LRScheduling`: small, typed, picklable
classes (no lambdas), so a LightningCLI YAML can build them and ``ddp_spawn`` can send them to workers.

Each schedule gives the learning rate at step ``t`` of ``total`` steps for a base learning rate (the
parameter group's own, or the LR finder's), by calling the closed forms in
:mod:`lightning_optim.functional.lr_scheduling.formulas`. Warm-up is not a schedule but an option of the callback,
so it combines with any of them. In YAML::

    schedule:
      class_path: OneCycle
      init_args: {pct_start: 0.25, cycle_momentum: true}

or by short name with default arguments: ``schedule: cosine``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from lightning_optim._deprecation import moved
from lightning_optim.checks import check_choice
from lightning_optim.functional.lr_scheduling.formulas import (
    ANNEAL_STRATEGIES,
    CYCLIC_MODES,
    PLATEAU_MODES,
    THRESHOLD_MODES,
    PlateauState,
    constant_lr,
    cosine_lr,
    cyclic_lr,
    cyclic_momentum,
    exponential_lr,
    multistep_lr,
    one_cycle_lr,
    one_cycle_momentum,
    plateau_initial_state,
    plateau_lr,
    plateau_update,
    polynomial_lr,
    step_lr,
    warmup_factor,
)


def _check_positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}.")


class LRSchedule:
    """Base class of the schedules: the learning rate (and optionally the momentum) at step ``t``.

    Subclasses implement :meth:`lr`; schedules that cycle momentum implement :meth:`momentum`; schedules
    driven by a metric set ``monitor`` and implement :meth:`update`.
    """

    #: metric a metric-driven schedule watches (``None`` for step-driven schedules)
    monitor: str | None = None

    def lr(self, step: int, total: int, base_lr: float) -> float:
        """Learning rate at ``step`` (from 0) of ``total`` steps, for base learning rate ``base_lr``."""
        raise NotImplementedError

    def momentum(self, step: int, total: int) -> float | None:
        """Momentum (SGD ``momentum`` / Adam ``beta1``) at ``step``, or ``None`` to leave it alone."""
        return None

    def check_total(self, total: int) -> None:
        """Raise ``ValueError`` if the schedule cannot run over ``total`` steps."""
        if total < 1:
            raise ValueError(f"A schedule needs at least one step, got total={total}.")

    def update(self, metric: float) -> None:
        """Feed one value of the monitored metric (metric-driven schedules only)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Constant(LRSchedule):
    """The base learning rate at every step (with the callback's ``warmup``: warm-up then constant)."""

    def lr(self, step: int, total: int, base_lr: float) -> float:
        return constant_lr(step, base_lr)


class StepDecay(LRSchedule):
    """Piecewise constant: multiply by ``gamma`` every ``step_size`` steps.

    Args:
        step_size: steps (or epochs, with ``interval="epoch"``) between decays, >= 1.
        gamma: decay factor, in ``(0, 1]``.
    """

    def __init__(self, step_size: int = 30, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ValueError(f"`step_size` must be >= 1, got {step_size}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}.")
        self.step_size = step_size
        self.gamma = gamma

    def lr(self, step: int, total: int, base_lr: float) -> float:
        return step_lr(step, base_lr, self.step_size, self.gamma)


class MultiStep(LRSchedule):
    """Multiply by ``gamma`` at each milestone.

    Args:
        milestones: increasing steps (or epochs) at which the LR drops.
        gamma: decay factor, in ``(0, 1]``.
    """

    def __init__(self, milestones: list[int] = (30, 60, 90), gamma: float = 0.1) -> None:  # type: ignore[assignment]
        milestones = list(milestones)
        if not milestones or any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(f"`milestones` must be strictly increasing positive steps, got {milestones}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}.")
        self.milestones = milestones
        self.gamma = gamma

    def lr(self, step: int, total: int, base_lr: float) -> float:
        return multistep_lr(step, base_lr, self.milestones, self.gamma)


class ExponentialDecay(LRSchedule):
    """Multiply by ``gamma`` every step: ``base_lr * gamma ** t``.

    Args:
        gamma: decay factor per step (or epoch), in ``(0, 1]``.
    """

    def __init__(self, gamma: float = 0.95) -> None:
        if not 0 < gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}.")
        self.gamma = gamma

    def lr(self, step: int, total: int, base_lr: float) -> float:
        return exponential_lr(step, base_lr, self.gamma)


class CosineAnnealing(LRSchedule):
    """Cosine annealing to ``min_lr``, optionally with warm restarts (SGDR).

    Args:
        min_lr: the floor, >= 0 (absolute, for the reference group; other groups keep their ratio).
        period: steps of the first cycle; ``None``: the whole training (after warm-up), one cycle.
        restarts: restart from the peak at the end of each cycle (SGDR).
        period_mult: each cycle is ``period_mult`` times longer than the previous (>= 1).
        restart_decay: the peak of cycle ``i`` is ``base_lr * restart_decay ** i`` (in ``(0, 1]``).
    """

    def __init__(
        self,
        min_lr: float = 0.0,
        period: int | None = None,
        restarts: bool = False,
        period_mult: float = 1.0,
        restart_decay: float = 1.0,
    ) -> None:
        _check_positive("min_lr", min_lr, allow_zero=True)
        if period is not None and period < 1:
            raise ValueError(f"`period` must be >= 1 (or None for the whole training), got {period}.")
        if restarts and period is None:
            raise ValueError("`restarts=True` needs a `period` (the length of the first cycle).")
        if period_mult < 1:
            raise ValueError(f"`period_mult` must be >= 1, got {period_mult}.")
        if not 0 < restart_decay <= 1:
            raise ValueError(f"`restart_decay` must be in (0, 1], got {restart_decay}.")
        self.min_lr = min_lr
        self.period = period
        self.restarts = restarts
        self.period_mult = period_mult
        self.restart_decay = restart_decay

    def lr(self, step: int, total: int, base_lr: float) -> float:
        period = self.period if self.period is not None else max(total, 1)
        return cosine_lr(
            step, base_lr, period, self.min_lr, self.restarts, self.period_mult, self.restart_decay
        )


class Polynomial(LRSchedule):
    """Polynomial decay to ``end_lr`` at the end of training (``power=1``: linear decay).

    Args:
        power: exponent, > 0.
        end_lr: final learning rate, >= 0.
        total_steps: length of the decay; ``None``: the whole training (after warm-up).
    """

    def __init__(self, power: float = 1.0, end_lr: float = 0.0, total_steps: int | None = None) -> None:
        _check_positive("power", power)
        _check_positive("end_lr", end_lr, allow_zero=True)
        if total_steps is not None and total_steps < 1:
            raise ValueError(
                f"`total_steps` must be >= 1 (or None for the whole training), got {total_steps}."
            )
        self.power = power
        self.end_lr = end_lr
        self.total_steps = total_steps

    def lr(self, step: int, total: int, base_lr: float) -> float:
        return polynomial_lr(step, base_lr, self.total_steps or max(total, 1), self.power, self.end_lr)


class Cyclic(LRSchedule):
    """Cyclical learning rates between ``min_lr`` and ``max_lr`` (Smith 2017; PyTorch ``CyclicLR``).

    Args:
        max_lr: upper bound of the cycle (absolute, for the reference group), > 0.
        min_lr: lower bound; ``None``: the base learning rate. Must be below ``max_lr``.
        step_size_up: steps from the lower to the upper bound, >= 1.
        step_size_down: steps back down; ``None``: same as up.
        mode: ``"triangular"``, ``"triangular2"`` (amplitude halves each cycle) or ``"exp_range"``
            (amplitude times ``gamma ** step``).
        gamma: the ``exp_range`` factor, in ``(0, 1]``.
        cycle_momentum: cycle momentum (or Adam's beta1) inversely, between the two momentum bounds.
        base_momentum: momentum at the LR peak.
        max_momentum: momentum at the LR trough.

    Raises:
        ValueError: for reversed bounds (``min_lr >= max_lr``), an unknown ``mode``, non-positive sizes.
    """

    def __init__(
        self,
        max_lr: float = 0.01,
        min_lr: float | None = None,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        cycle_momentum: bool = False,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
    ) -> None:
        _check_positive("max_lr", max_lr)
        _check_positive("min_lr", min_lr)
        if min_lr is not None and min_lr >= max_lr:
            raise ValueError(f"Cycle bounds reversed: `min_lr` ({min_lr}) must be below `max_lr` ({max_lr}).")
        if step_size_up < 1 or (step_size_down is not None and step_size_down < 1):
            raise ValueError(
                f"`step_size_up`/`step_size_down` must be >= 1, got {step_size_up}/{step_size_down}."
            )
        check_choice("mode", mode, CYCLIC_MODES)
        if not 0 < gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma}.")
        if cycle_momentum and not 0 <= base_momentum < max_momentum < 1:
            raise ValueError(
                f"Momentum bounds must satisfy 0 <= `base_momentum` < `max_momentum` < 1, got {base_momentum}, {max_momentum}."
            )
        self.max_lr = max_lr
        self.min_lr = min_lr
        self.step_size_up = step_size_up
        self.step_size_down = step_size_down
        self.mode = mode
        self.gamma = gamma
        self.cycle_momentum = cycle_momentum
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum

    def lr(self, step: int, total: int, base_lr: float) -> float:
        low = self.min_lr if self.min_lr is not None else base_lr
        if low >= self.max_lr:
            raise ValueError(
                f"Cycle bounds reversed: the lower bound {low} (`min_lr`, or the base LR when it is None) must be "
                f"below `max_lr` ({self.max_lr})."
            )
        return cyclic_lr(
            step, low, self.max_lr, self.step_size_up, self.step_size_down, self.mode, self.gamma
        )

    def momentum(self, step: int, total: int) -> float | None:
        if not self.cycle_momentum:
            return None
        return cyclic_momentum(
            step,
            self.base_momentum,
            self.max_momentum,
            self.step_size_up,
            self.step_size_down,
            self.mode,
            self.gamma,
        )


class OneCycle(LRSchedule):
    """The one-cycle policy (Smith & Topin 2019) with momentum cycling; the base LR is the peak.

    The LR rises from ``peak / div_factor`` to the peak over the first ``pct_start`` of training, then
    anneals to ``peak / div_factor / final_div_factor``; momentum (SGD) or beta1 (Adam) moves the other way
    between ``max_momentum`` and ``base_momentum``. The peak is the group's base LR (for example the LR
    finder's suggestion), or ``max_lr`` when given.

    Args:
        max_lr: peak LR for the reference group; ``None``: the base LR.
        pct_start: fraction of the steps spent rising, in ``(0, 1)``.
        div_factor: initial LR = peak / ``div_factor`` (>= 1).
        final_div_factor: final LR = initial / ``final_div_factor`` (>= 1).
        anneal: ``"cos"`` or ``"linear"``.
        three_phase: a third phase annihilates the LR after a symmetric rise and fall (fast.ai style).
        cycle_momentum: cycle SGD momentum / Adam beta1.
        base_momentum: momentum at the LR peak, in ``[0, max_momentum)``.
        max_momentum: momentum at the start and end, in ``(base_momentum, 1)``.
    """

    def __init__(
        self,
        max_lr: float | None = None,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> None:
        _check_positive("max_lr", max_lr)
        if not 0 < pct_start < 1:
            raise ValueError(f"`pct_start` must be in (0, 1), got {pct_start}.")
        if div_factor < 1 or final_div_factor < 1:
            raise ValueError(
                f"`div_factor` and `final_div_factor` must be >= 1, got {div_factor}, {final_div_factor}."
            )
        check_choice("anneal", anneal, ANNEAL_STRATEGIES)
        if cycle_momentum and not 0 <= base_momentum < max_momentum < 1:
            raise ValueError(
                f"Cycle bounds reversed or out of range: need 0 <= `base_momentum` < `max_momentum` < 1, "
                f"got {base_momentum}, {max_momentum}."
            )
        self.max_lr = max_lr
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.anneal = anneal
        self.three_phase = three_phase
        self.cycle_momentum = cycle_momentum
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum

    def check_total(self, total: int) -> None:
        super().check_total(total)
        phases = 3 if self.three_phase else 2
        if self.pct_start * total < 1 or total < phases:
            raise ValueError(
                f"OneCycle over {total} steps with `pct_start`={self.pct_start} leaves no rising phase; "
                "use interval='step' or more epochs."
            )

    def lr(self, step: int, total: int, base_lr: float) -> float:
        peak = self.max_lr if self.max_lr is not None else base_lr
        return one_cycle_lr(
            step,
            total,
            peak,
            self.pct_start,
            self.div_factor,
            self.final_div_factor,
            self.anneal,
            self.three_phase,
        )

    def momentum(self, step: int, total: int) -> float | None:
        if not self.cycle_momentum:
            return None
        return one_cycle_momentum(
            step, total, self.base_momentum, self.max_momentum, self.pct_start, self.anneal, self.three_phase
        )


class ReduceOnPlateau(LRSchedule):
    """Reduce the LR by ``factor`` when a logged metric stops improving (after the callback's warm-up).

    Checked after each validation (or at the end of each training epoch when there is none).

    Args:
        monitor: the logged metric to watch (for example ``val_loss``).
        mode: ``"min"`` or ``"max"``.
        factor: multiply the LR by this on a plateau, in ``(0, 1)``.
        patience: checks without improvement before reducing.
        threshold: minimum improvement that counts.
        threshold_mode: ``"rel"`` (fraction of the best) or ``"abs"``.
        cooldown: checks to wait after a reduction before counting again.
        min_lr: floor of the LR (absolute, for the reference group), >= 0.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if not monitor:
            raise ValueError("`monitor` must name a logged metric, e.g. 'val_loss'.")
        check_choice("mode", mode, PLATEAU_MODES)
        check_choice("threshold_mode", threshold_mode, THRESHOLD_MODES)
        if not 0 < factor < 1:
            raise ValueError(f"`factor` must be in (0, 1), got {factor}.")
        if patience < 0 or cooldown < 0:
            raise ValueError(f"`patience` and `cooldown` must be >= 0, got {patience}, {cooldown}.")
        _check_positive("threshold", threshold, allow_zero=True)
        _check_positive("min_lr", min_lr, allow_zero=True)
        self.monitor = monitor
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        self._state = plateau_initial_state(mode)

    @property
    def reductions(self) -> int:
        """How many times the LR has been reduced."""
        return self._state.reductions

    def update(self, metric: float) -> None:
        self._state = plateau_update(
            self._state,
            float(metric),
            self.mode,
            self.patience,
            self.threshold,
            self.threshold_mode,
            self.cooldown,
        )

    def lr(self, step: int, total: int, base_lr: float) -> float:
        return plateau_lr(base_lr, self._state.reductions, self.factor, self.min_lr)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state._asdict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = PlateauState(**{k: state_dict[k] for k in PlateauState._fields})


#: short name -> schedule class, for ``schedule: <name>`` in code and YAML
LR_SCHEDULES: dict[str, type[LRSchedule]] = {
    "constant": Constant,
    "step": StepDecay,
    "multistep": MultiStep,
    "exponential": ExponentialDecay,
    "cosine": CosineAnnealing,
    "polynomial": Polynomial,
    "cyclic": Cyclic,
    "one_cycle": OneCycle,
    "plateau": ReduceOnPlateau,
}


def create_schedule(name: str) -> LRSchedule:
    """A schedule with default arguments from its short name.

    Raises:
        ValueError: for a name outside :data:`LR_SCHEDULES`.
    """
    key = name.lower().replace("-", "_")
    key = {"onecycle": "one_cycle", "multi_step": "multistep", "reduce_on_plateau": "plateau"}.get(key, key)
    if key not in LR_SCHEDULES:
        check_choice("schedule", name, sorted(LR_SCHEDULES), hint=" (or a schedule instance)")
    return LR_SCHEDULES[key]()


class ScheduledValues(NamedTuple):
    """The learning rate of each parameter group and the momentum (``None``: left alone) at one position."""

    lrs: list[float]
    momentum: float | None


def lr_and_momentum_at(
    schedule: LRSchedule,
    position: int,
    total: int,
    base_lrs: Sequence[float],
    warmup_steps: int = 0,
    warmup_mode: str = "linear",
    warmup_start_factor: float = 0.01,
    ref_lr: float | None = None,
) -> ScheduledValues:
    """The learning rates (one per parameter group) and the momentum at ``position``: warm-up, then ``schedule``.

    The one composition of warm-up and schedule (what :class:`~lightning_optim.callbacks.LRScheduling` sets):

    - the schedule runs over the ``total - warmup_steps`` steps after the warm-up, at
      ``t = max(position - warmup_steps, 0)`` (so it waits at its step 0 during the warm-up);
    - the schedule's LR is computed for the reference group (``ref_lr``, default ``base_lrs[0]``) and
      multiplied by :func:`~lightning_optim.functional.lr_scheduling.formulas.warmup_factor`;
    - each group gets that LR times its ratio ``base_lr / ref_lr``, so groups keep their ratio (and the
      absolute bounds of a schedule, such as ``min_lr`` or ``max_lr``, apply to the reference group);
    - the momentum is the schedule's at ``t`` (its step-0 value during the warm-up), ``None`` for
      schedules that do not cycle it.

    Args:
        schedule: the schedule after the warm-up.
        position: the step (or epoch), from 0, warm-up included.
        total: the number of steps in all, warm-up included.
        base_lrs: the base learning rate of each parameter group.
        warmup_steps: the length of the warm-up (0: none).
        warmup_mode: ``"linear"`` or ``"exponential"``.
        warmup_start_factor: the warm-up factor at step 0, in ``(0, 1]``.
        ref_lr: the reference group's base LR; ``None``: ``base_lrs[0]``.

    Raises:
        ValueError: for an unknown ``warmup_mode``.

    Example::

        lrs, momentum = lr_and_momentum_at(OneCycle(), position=10, total=100, base_lrs=[0.1, 0.01])
    """
    ref = base_lrs[0] if ref_lr is None else ref_lr
    n_main = total - warmup_steps
    t = max(position - warmup_steps, 0)
    factor = warmup_factor(position, warmup_steps, warmup_mode, warmup_start_factor)
    main = schedule.lr(t, n_main, ref) * factor
    return ScheduledValues([main * (base / ref) for base in base_lrs], schedule.momentum(t, n_main))


# deprecated (0.2.x): `SCHEDULES` was one of three constants of that name; removed in 0.3.0
_RENAMED = {"SCHEDULES": f"{__name__}:LR_SCHEDULES"}
_moved = moved(__name__, __name__, renamed=_RENAMED)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
