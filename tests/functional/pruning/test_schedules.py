"""Sparsity schedules against their formulas."""

from __future__ import annotations

import pytest

from lightning_optim.functional.pruning.schedules import (
    constant_schedule,
    cubic_schedule,
    get_sparsity_schedule,
    linear_schedule,
    pruning_events,
    scheduled_sparsity,
)


@pytest.mark.parametrize(
    "t0,n,dt,si,sf", [(0, 10, 1, 0.0, 0.9), (100, 5, 20, 0.2, 0.75), (3, 1, 7, 0.0, 0.5)]
)
def test_cubic_matches_zhu_gupta_formula(t0, n, dt, si, sf):
    end = t0 + n * dt
    assert pruning_events(t0, end, dt) == [t0 + k * dt for k in range(n + 1)]
    for k in range(n + 1):
        t = t0 + k * dt
        expected = sf + (si - sf) * (1 - (t - t0) / (n * dt)) ** 3
        assert scheduled_sparsity(t, t0, end, dt, si, sf) == pytest.approx(expected, abs=1e-12)
        # between two events the last event's target stays in force
        if k < n:
            assert scheduled_sparsity(t + dt - 1, t0, end, dt, si, sf) == pytest.approx(expected, abs=1e-12)
    assert scheduled_sparsity(end + 1000, t0, end, dt, si, sf) == pytest.approx(sf)
    assert scheduled_sparsity(t0 - 1, t0, end, dt, si, sf) == 0.0 if t0 > 0 else True


def test_cubic_prunes_fastest_at_first():
    values = [cubic_schedule(p / 10, 0.0, 0.9) for p in range(11)]
    increments = [b - a for a, b in zip(values, values[1:])]
    assert all(x > y for x, y in zip(increments, increments[1:]))
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.9)


def test_linear_and_constant():
    assert linear_schedule(0.25, 0.1, 0.9) == pytest.approx(0.3)
    assert constant_schedule(0.0, 0.1, 0.9) == 0.9
    assert scheduled_sparsity(50, 50, 50, 10, 0.0, 0.8, "constant") == 0.8
    assert scheduled_sparsity(49, 50, 50, 10, 0.0, 0.8, "constant") == 0.0
    assert scheduled_sparsity(30, 0, 100, 25, 0.0, 0.8, "linear") == pytest.approx(0.2)


def test_end_is_always_an_event():
    assert pruning_events(0, 10, 4) == [0, 4, 8, 10]
    assert pruning_events(5, 5, 3) == [5]


def test_callable_and_dotted_path():
    fn = get_sparsity_schedule("lightning_optim.functional.pruning.schedules.linear_schedule")
    assert fn is linear_schedule
    assert get_sparsity_schedule(cubic_schedule) is cubic_schedule


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: get_sparsity_schedule("quadratic"), "schedule"),
        (lambda: get_sparsity_schedule("no_such_module.fn"), "schedule"),
        (lambda: pruning_events(10, 5, 1), "end"),
        (lambda: pruning_events(0, 5, 0), "frequency"),
        (lambda: pruning_events(-1, 5, 1), "start"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
