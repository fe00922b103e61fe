"""Sparsity schedules against their formulas: the ramps, the pruning events and the one target formula."""

from __future__ import annotations

import pytest

from lightning_optim.functional.pruning.schedules import (
    constant_schedule,
    cubic_schedule,
    event_sparsity,
    get_sparsity_schedule,
    layer_final_sparsity,
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


@pytest.mark.parametrize("progress", [-0.5, 0.0, 0.1, 0.37, 0.5, 0.9, 1.0, 1.5])
def test_schedules_are_the_ramps(progress):
    from lightning_optim.functional.ramps import ramp

    for fn, kind in ((cubic_schedule, "cubic"), (linear_schedule, "linear"), (constant_schedule, "constant")):
        assert fn(progress, 0.1, 0.8) == ramp(progress, 0.1, 0.8, kind)
    p = min(max(progress, 0.0), 1.0)
    assert cubic_schedule(progress, 0.1, 0.8) == 0.8 + (0.1 - 0.8) * (1.0 - p) ** 3
    assert linear_schedule(progress, 0.1, 0.8) == 0.1 + (0.8 - 0.1) * p


def test_layer_final_sparsity_first_matching_pattern():
    overrides = {"fc2": 0.5, "fc*": 0.2}
    assert layer_final_sparsity("fc2", 0.9, overrides) == (0.5, True)
    assert layer_final_sparsity("fc1", 0.9, overrides) == (0.2, True)
    assert layer_final_sparsity("conv1", 0.9, overrides) == (0.9, False)
    assert layer_final_sparsity(None, 0.9, overrides) == (0.9, False)
    assert layer_final_sparsity("fc1", 0.9) == (0.9, False)


def test_event_sparsity_follows_the_schedule_to_each_layers_target():
    start, end, si, sf = 10, 30, 0.1, 0.8
    overrides = {"fc2": 0.5, "features.*": 0.05}
    for event in (10, 15, 20, 30):
        p = (event - start) / (end - start)
        shared = event_sparsity(event, start, end, si, sf)
        assert shared == pytest.approx(sf + (si - sf) * (1 - p) ** 3, abs=1e-12)
        # a layer without an override gets the shared target
        assert event_sparsity(event, start, end, si, sf, layer="fc1", layer_sparsity=overrides) == shared
        # an override ramps from min(initial, its final) to its final
        fc2 = event_sparsity(event, start, end, si, sf, "cubic", "fc2", overrides)
        assert fc2 == pytest.approx(0.5 + (0.1 - 0.5) * (1 - p) ** 3, abs=1e-12)
        low = event_sparsity(event, start, end, si, sf, "linear", "features.conv", overrides)
        assert low == pytest.approx(0.05)  # min(0.1, 0.05) = 0.05 at both ends
    assert event_sparsity(30, start, end, si, sf, "linear", "fc2", overrides) == 0.5
    # the shared target is not clipped: an initial above the final ramps down
    assert event_sparsity(10, start, end, 0.6, 0.3, "linear") == pytest.approx(0.6)


def test_scheduled_sparsity_is_the_last_events_target():
    overrides = {"fc2": 0.5}
    for step in range(0, 40):
        expected = (
            0.0
            if step < 4
            else event_sparsity(min(4 + (step - 4) // 8 * 8, 20), 4, 20, 0.0, 0.9, "cubic", "fc2", overrides)
        )
        assert scheduled_sparsity(step, 4, 20, 8, 0.0, 0.9, "cubic", "fc2", overrides) == expected


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_event_sparsity_checks_the_schedules_value(value):
    with pytest.raises(ValueError, match=r"schedule\(progress, initial_sparsity, final_sparsity\)"):
        event_sparsity(0, 0, 10, 0.0, 0.5, lambda p, i, f: value)
    # also for a layer with an override
    with pytest.raises(ValueError, match="must be in"):
        event_sparsity(5, 0, 10, 0.0, 0.5, lambda p, i, f: value, "fc1", {"fc*": 0.3})


def test_unknown_schedule_message():
    with pytest.raises(ValueError) as err:
        get_sparsity_schedule("quadratic")
    assert str(err.value) == (
        "Unknown `schedule` 'quadratic'; allowed: ['constant', 'cubic', 'linear'] or a dotted import path to a "
        "function (progress, initial, final) -> sparsity."
    )
