"""Learning-rate and momentum schedules as pure closed-form functions of the step (no Lightning import).

Every function takes the step index ``step`` (an optimizer step or an epoch, counted from 0) and returns
the value for that step. The formulas follow the papers and match PyTorch's schedulers where one exists
(``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``CosineAnnealingWarmRestarts``, ``PolynomialLR``,
``CyclicLR``, ``OneCycleLR``), but need no optimizer and no state: the value at step ``t`` is computed
directly, which is what makes a resumed run continue with exactly the same sequence.

Reduce-on-plateau is the one schedule driven by a metric rather than the step; its update rule is the pure
function :func:`plateau_update` over an immutable :class:`PlateauState`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

from lightning_optim.checks import check_choice

WARMUP_MODES: tuple[str, ...] = ("linear", "exponential")
CYCLIC_MODES: tuple[str, ...] = ("triangular", "triangular2", "exp_range")
ANNEAL_STRATEGIES: tuple[str, ...] = ("cos", "linear")
PLATEAU_MODES: tuple[str, ...] = ("min", "max")
THRESHOLD_MODES: tuple[str, ...] = ("rel", "abs")


# ------------------------------------------------------------------------------------------------ warm-up
def warmup_factor(step: int, warmup_steps: int, mode: str = "linear", start_factor: float = 0.01) -> float:
    """The factor applied to the learning rate during warm-up (1.0 from ``warmup_steps`` on).

    ``linear``: ``start_factor + (1 - start_factor) * step / warmup_steps``;
    ``exponential``: ``start_factor ** (1 - step / warmup_steps)`` (geometric growth).

    Args:
        step: current step, from 0.
        warmup_steps: length of the warm-up; 0 disables it.
        mode: ``"linear"`` or ``"exponential"``.
        start_factor: factor at step 0, in ``(0, 1]``.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    check_choice("mode", mode, WARMUP_MODES, kind="warm-up")
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    frac = max(step, 0) / warmup_steps
    if mode == "linear":
        return start_factor + (1.0 - start_factor) * frac
    return start_factor ** (1.0 - frac)


# ------------------------------------------------------------------------------------------------ decays
def constant_lr(step: int, base_lr: float) -> float:
    """``base_lr`` at every step."""
    return base_lr


def step_lr(step: int, base_lr: float, step_size: int, gamma: float = 0.1) -> float:
    """Piecewise constant: ``base_lr * gamma ** (step // step_size)`` (PyTorch ``StepLR``)."""
    return base_lr * gamma ** (max(step, 0) // step_size)


def multistep_lr(step: int, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """``base_lr * gamma ** (number of milestones <= step)`` (PyTorch ``MultiStepLR``)."""
    return base_lr * gamma ** bisect_right(sorted(milestones), step)


def exponential_lr(step: int, base_lr: float, gamma: float) -> float:
    """``base_lr * gamma ** step`` (PyTorch ``ExponentialLR``)."""
    return base_lr * gamma ** max(step, 0)


def sgdr_position(step: int, period: int, period_mult: float = 1.0) -> tuple[int, float, float]:
    """Where ``step`` falls in SGDR's cycles: ``(cycle index, steps into the cycle, cycle length)``.

    Cycle ``i`` lasts ``period * period_mult ** i`` steps (Loshchilov & Hutter 2017).
    """
    step = max(step, 0)
    if period_mult == 1.0:
        return step // period, float(step % period), float(period)
    # cycle i starts at period * (mult**i - 1) / (mult - 1)
    i = int(math.floor(math.log(step / period * (period_mult - 1.0) + 1.0, period_mult)))
    start = period * (period_mult**i - 1.0) / (period_mult - 1.0)
    length = period * period_mult**i
    if step - start >= length:  # guard against floating-point rounding at a cycle boundary
        i, start, length = i + 1, start + length, length * period_mult
    elif step < start:
        length = length / period_mult
        i, start = i - 1, start - length
    return i, step - start, length


def cosine_lr(
    step: int,
    base_lr: float,
    period: int,
    min_lr: float = 0.0,
    restarts: bool = False,
    period_mult: float = 1.0,
    restart_decay: float = 1.0,
) -> float:
    """Cosine annealing from ``base_lr`` to ``min_lr`` over ``period`` steps; with ``restarts``, SGDR.

    Without restarts the value stays at ``min_lr`` after ``period``. With restarts the cycle ``i`` lasts
    ``period * period_mult ** i`` steps and starts from ``base_lr * restart_decay ** i`` (PyTorch
    ``CosineAnnealingWarmRestarts`` for ``restart_decay=1``).
    """
    if not restarts:
        t = min(max(step, 0), period)
        return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / period)) / 2.0
    i, t_cur, length = sgdr_position(step, period, period_mult)
    peak = min_lr + (base_lr - min_lr) * restart_decay**i
    return min_lr + (peak - min_lr) * (1.0 + math.cos(math.pi * t_cur / length)) / 2.0


def polynomial_lr(
    step: int, base_lr: float, total_steps: int, power: float = 1.0, end_lr: float = 0.0
) -> float:
    """``(base_lr - end_lr) * (1 - step / total_steps) ** power + end_lr``, held at ``end_lr`` afterwards."""
    t = min(max(step, 0), total_steps)
    return (base_lr - end_lr) * (1.0 - t / total_steps) ** power + end_lr


# ------------------------------------------------------------------------------------------------ cyclic
def cyclic_scale(
    step: int, step_size_up: int, step_size_down: int, mode: str, gamma: float
) -> tuple[float, float]:
    """``(position in [0, 1] of the triangle, amplitude scale)`` for cyclic schedules (Smith 2017)."""
    check_choice("mode", mode, CYCLIC_MODES, kind="cyclic")
    step = max(step, 0)
    total = step_size_up + step_size_down
    cycle = step // total
    x = (step - cycle * total) / total
    ratio = step_size_up / total
    height = x / ratio if x <= ratio else (x - 1.0) / (ratio - 1.0)
    if mode == "triangular":
        scale = 1.0
    elif mode == "triangular2":
        scale = 1.0 / 2.0**cycle
    else:
        scale = gamma**step
    return height, scale


def cyclic_lr(
    step: int,
    base_lr: float,
    max_lr: float,
    step_size_up: int,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> float:
    """Cyclical learning rate between ``base_lr`` and ``max_lr`` (PyTorch ``CyclicLR``)."""
    height, scale = cyclic_scale(step, step_size_up, step_size_down or step_size_up, mode, gamma)
    return base_lr + (max_lr - base_lr) * height * scale


def cyclic_momentum(
    step: int,
    base_momentum: float,
    max_momentum: float,
    step_size_up: int,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> float:
    """Momentum cycled inversely to :func:`cyclic_lr`: ``max_momentum`` where the LR is lowest."""
    height, scale = cyclic_scale(step, step_size_up, step_size_down or step_size_up, mode, gamma)
    return max_momentum - (max_momentum - base_momentum) * height * scale


# ------------------------------------------------------------------------------------------------ one-cycle
def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return (end - start) * pct + start


def _one_cycle_phases(total_steps: int, pct_start: float, three_phase: bool) -> list[tuple[float, str, str]]:
    """``(end step, start key, end key)`` of each phase, as in PyTorch's ``OneCycleLR``."""
    up = float(pct_start * total_steps) - 1.0
    if three_phase:
        return [(up, "initial", "max"), (2.0 * up, "max", "initial"), (total_steps - 1.0, "initial", "min")]
    return [(up, "initial", "max"), (total_steps - 1.0, "max", "min")]


def _one_cycle_value(
    step: int, total_steps: int, pct_start: float, values: dict[str, float], anneal: str, three_phase: bool
) -> float:
    check_choice("anneal", anneal, ANNEAL_STRATEGIES, kind="one-cycle")
    step = min(max(step, 0), total_steps - 1)
    start_step = 0.0
    phases = _one_cycle_phases(total_steps, pct_start, three_phase)
    for i, (end_step, start_key, end_key) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step) if end_step > start_step else 1.0
            return _anneal(values[start_key], values[end_key], pct, anneal)
        start_step = end_step
    raise AssertionError("unreachable")


def one_cycle_lr(
    step: int,
    total_steps: int,
    max_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal: str = "cos",
    three_phase: bool = False,
) -> float:
    """The one-cycle policy (Smith & Topin 2019; PyTorch ``OneCycleLR``).

    From ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of the steps, then down to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1`` (held there afterwards).
    """
    initial = max_lr / div_factor
    values = {"initial": initial, "max": max_lr, "min": initial / final_div_factor}
    return _one_cycle_value(step, total_steps, pct_start, values, anneal, three_phase)


def one_cycle_momentum(
    step: int,
    total_steps: int,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    pct_start: float = 0.3,
    anneal: str = "cos",
    three_phase: bool = False,
) -> float:
    """Momentum (SGD ``momentum`` or Adam ``beta1``) of the one-cycle policy: ``max_momentum`` down to
    ``base_momentum`` while the LR rises, back up while it falls."""
    values = {"initial": max_momentum, "max": base_momentum, "min": max_momentum}
    return _one_cycle_value(step, total_steps, pct_start, values, anneal, three_phase)


# ------------------------------------------------------------------------------------------------ plateau
class PlateauState(NamedTuple):
    """State of reduce-on-plateau: best metric so far, checks without improvement, cooldown left, and the
    number of reductions applied so far."""

    best: float
    num_bad: int = 0
    cooldown_left: int = 0
    reductions: int = 0


def plateau_initial_state(mode: str = "min") -> PlateauState:
    """The state before the first check."""
    check_choice("mode", mode, PLATEAU_MODES, kind="plateau")
    return PlateauState(best=math.inf if mode == "min" else -math.inf)


def is_improvement(current: float, best: float, mode: str, threshold: float, threshold_mode: str) -> bool:
    """Whether ``current`` beats ``best`` by more than ``threshold`` (relative or absolute), as PyTorch's
    ``ReduceLROnPlateau`` decides it."""
    check_choice("threshold_mode", threshold_mode, THRESHOLD_MODES)
    if not math.isfinite(best):
        return (current < best) if mode == "min" else (current > best)
    if mode == "min":
        bound = best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold
        return current < bound
    bound = best * (1.0 + threshold) if threshold_mode == "rel" else best + threshold
    return current > bound


def plateau_update(
    state: PlateauState,
    metric: float,
    mode: str = "min",
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
) -> PlateauState:
    """One check of reduce-on-plateau: the new state (``reductions`` grows by one when the LR is to drop).

    After ``patience`` checks without improvement the LR is reduced, then ``cooldown`` checks pass before
    bad checks are counted again (PyTorch ``ReduceLROnPlateau``).
    """
    best, num_bad, cooldown_left, reductions = state
    if is_improvement(metric, best, mode, threshold, threshold_mode):
        best, num_bad = metric, 0
    else:
        num_bad += 1
    if cooldown_left > 0:
        cooldown_left -= 1
        num_bad = 0
    if num_bad > patience:
        reductions += 1
        cooldown_left = cooldown
        num_bad = 0
    return PlateauState(best, num_bad, cooldown_left, reductions)


def plateau_lr(base_lr: float, reductions: int, factor: float = 0.1, min_lr: float = 0.0) -> float:
    """``max(base_lr * factor ** reductions, min_lr)``."""
    return max(base_lr * factor**reductions, min_lr)
