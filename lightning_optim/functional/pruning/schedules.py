"""Sparsity schedules: how the pruned fraction rises from an initial to a final target.

A schedule is a function ``(progress, initial, final) -> sparsity`` of the ramp's progress in ``[0, 1]``;
the built-in ones are ramps (:func:`lightning_optim.functional.ramps.ramp`).
:func:`pruning_events` lays out the optimizer steps at which pruning happens (every ``frequency`` steps
from ``start`` to ``end``, the end always included), :func:`event_sparsity` gives a layer's target at a
pruning event (the one formula, per-layer overrides included) and :func:`scheduled_sparsity` the target in
force at any step. The target is always a fraction of the *original* weights (never compounded).

The default is the cubic schedule of Zhu & Gupta 2017 ("To prune, or not to prune"):

.. math:: s_t = s_f + (s_i - s_f) \\left(1 - \\frac{t - t_0}{n \\Delta t}\\right)^3

for ``t`` in ``{t0, t0 + Δt, ..., t0 + nΔt}``: fast pruning while many redundant weights remain, slower
towards the end.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Mapping

from lightning_optim.checks import check_choice
from lightning_optim.functional.ramps import ramp

#: ``(progress in [0, 1], initial sparsity, final sparsity) -> sparsity``
ScheduleFn = Callable[[float, float, float], float]


def cubic_schedule(progress: float, initial: float, final: float) -> float:
    """Zhu & Gupta 2017: ``final + (initial - final) * (1 - progress)^3``."""
    return ramp(progress, initial, final, "cubic")


def linear_schedule(progress: float, initial: float, final: float) -> float:
    """``initial + (final - initial) * progress``."""
    return ramp(progress, initial, final, "linear")


def constant_schedule(progress: float, initial: float, final: float) -> float:
    """One-shot: ``final`` from the first pruning step on (``initial`` is ignored)."""
    return ramp(progress, initial, final, "constant")


#: schedule name -> function
SPARSITY_SCHEDULES: dict[str, ScheduleFn] = {
    "cubic": cubic_schedule,
    "linear": linear_schedule,
    "constant": constant_schedule,
}


def get_sparsity_schedule(schedule: str | ScheduleFn) -> ScheduleFn:
    """Resolve a schedule name (``cubic``, ``linear``, ``constant``), a dotted import path
    (``my_package.my_module.my_schedule``) or a callable into a function.

    Raises:
        ValueError: for an unknown name or a path that does not import to a callable.
    """
    if callable(schedule):
        return schedule
    if not isinstance(schedule, str):
        raise ValueError(f"`schedule` must be a name, a dotted import path or a callable, got {schedule!r}.")
    if schedule in SPARSITY_SCHEDULES:
        return SPARSITY_SCHEDULES[schedule]
    if "." in schedule:
        module_name, _, attr = schedule.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"`schedule` {schedule!r} could not be imported: {err}.") from err
        if not callable(fn):
            raise ValueError(f"`schedule` {schedule!r} is not callable.")
        return fn
    hint = " or a dotted import path to a function (progress, initial, final) -> sparsity"
    return check_choice("schedule", schedule, sorted(SPARSITY_SCHEDULES), hint=hint)  # raises: not a name


def check_sparsity(value: float, name: str) -> float:
    """Validate a sparsity in ``[0, 1)``.

    Raises:
        ValueError: if ``value`` is outside ``[0, 1)``.
    """
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
    return float(value)


def pruning_events(start: int, end: int, frequency: int) -> list[int]:
    """The optimizer steps at which masks are recomputed: ``start, start + frequency, ..., end``.

    ``end`` is always an event, so the final sparsity is reached exactly at ``end``.

    Raises:
        ValueError: if ``start < 0``, ``end < start`` or ``frequency < 1``.
    """
    if start < 0:
        raise ValueError(f"`start` must be >= 0, got {start}.")
    if end < start:
        raise ValueError(f"`end` ({end}) must not be before `start` ({start}).")
    if frequency < 1:
        raise ValueError(f"`frequency` must be >= 1, got {frequency}.")
    events = list(range(start, end, frequency))
    events.append(end)
    return events


def schedule_progress(step: int, start: int, end: int) -> float:
    """Progress of the ramp at ``step``: 0 at ``start``, 1 at and after ``end`` (1 when ``start == end``)."""
    if end <= start:
        return 1.0 if step >= start else 0.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


def layer_final_sparsity(
    layer: str | None, final: float, layer_sparsity: Mapping[str, float] | None = None
) -> tuple[float, bool]:
    """The final sparsity of ``layer``: that of the first ``layer_sparsity`` glob pattern matching its name,
    else ``final``; and whether a pattern matched (``layer=None``, the shared target, matches none)."""
    if layer is not None:
        for pattern, value in (layer_sparsity or {}).items():
            if fnmatch.fnmatchcase(layer, pattern):
                return float(value), True
    return final, False


def event_sparsity(
    event: int,
    start: int,
    end: int,
    initial: float,
    final: float,
    schedule: str | ScheduleFn = "cubic",
    layer: str | None = None,
    layer_sparsity: Mapping[str, float] | None = None,
) -> float:
    """Target sparsity of ``layer`` set at the pruning event at optimizer step ``event``: the schedule at the
    ramp's progress (:func:`schedule_progress`) from ``initial`` to ``final``.

    A layer whose name matches a ``layer_sparsity`` glob pattern (the first that matches) ramps to that
    pattern's value instead, from ``min(initial, value)``. ``layer=None`` gives the target shared by the
    layers without an override.

    Args:
        event: the optimizer step of the pruning event.
        start: the first pruning event (progress 0).
        end: the last pruning event (progress 1).
        initial: sparsity at ``start``.
        final: sparsity at ``end``.
        schedule: a schedule name, dotted import path or function (see :func:`get_sparsity_schedule`).
        layer: the layer's name (as matched by the patterns of ``layer_sparsity``).
        layer_sparsity: ``{glob pattern: final sparsity}`` overrides.

    Raises:
        ValueError: for an unknown schedule, or a schedule value outside ``[0, 1)``.
    """
    fn = get_sparsity_schedule(schedule)
    final, overridden = layer_final_sparsity(layer, final, layer_sparsity)
    if overridden:
        initial = min(initial, final)
    target = float(fn(schedule_progress(event, start, end), initial, final))
    return check_sparsity(target, "schedule(progress, initial_sparsity, final_sparsity)")


def scheduled_sparsity(
    step: int,
    start: int,
    end: int,
    frequency: int,
    initial: float,
    final: float,
    schedule: str | ScheduleFn = "cubic",
    layer: str | None = None,
    layer_sparsity: Mapping[str, float] | None = None,
) -> float:
    """Target sparsity in force at optimizer step ``step``: that of the last pruning event at or before it
    (:func:`event_sparsity`, with the same ``layer``/``layer_sparsity`` overrides).

    Returns 0 before ``start`` (nothing pruned yet) and ``final`` from ``end`` on.
    """
    if step < start:
        return 0.0
    events = pruning_events(start, end, frequency)
    last = max(t for t in events if t <= step)
    return event_sparsity(last, start, end, initial, final, schedule, layer, layer_sparsity)
