"""The LR at step t, warm-up included: the one composition of warm-up and schedule that LRScheduling sets."""

from __future__ import annotations

import pytest

from lightning_optim.functional.lr_scheduling import formulas as F
from lightning_optim.functional.lr_scheduling.schedules import (
    LR_SCHEDULES,
    Constant,
    CosineAnnealing,
    Cyclic,
    OneCycle,
    ReduceOnPlateau,
    create_schedule,
    lr_and_momentum_at,
)

TOTAL, WARMUP = 40, 6
BASE_LRS = [0.05, 0.005, 0.2]


@pytest.mark.parametrize(("mode", "start"), [("linear", 0.1), ("exponential", 0.01)])
def test_warmup_then_one_cycle_for_every_group(mode, start):
    for position in range(TOTAL + 3):
        lrs, momentum = lr_and_momentum_at(
            OneCycle(pct_start=0.25), position, TOTAL, BASE_LRS, WARMUP, mode, start
        )
        t = max(position - WARMUP, 0)
        factor = F.warmup_factor(position, WARMUP, mode, start)
        main = F.one_cycle_lr(t, TOTAL - WARMUP, BASE_LRS[0], 0.25) * factor
        # bit for bit: the reference group's schedule value, the warm-up factor, then each group's ratio
        assert lrs == [main * (base / BASE_LRS[0]) for base in BASE_LRS], position
        assert momentum == F.one_cycle_momentum(t, TOTAL - WARMUP, 0.85, 0.95, 0.25), position
    first = lr_and_momentum_at(OneCycle(pct_start=0.25), 0, TOTAL, BASE_LRS, WARMUP, mode, start)
    assert first.lrs[0] == pytest.approx(start * BASE_LRS[0] / 25.0)
    # the schedule waits at its step 0 through the warm-up: momentum held at its start value
    assert (
        first.momentum
        == lr_and_momentum_at(OneCycle(pct_start=0.25), WARMUP, TOTAL, BASE_LRS, WARMUP).momentum
    )


def test_groups_keep_their_ratio_and_absolute_bounds_apply_to_the_reference_group():
    schedule = Cyclic(max_lr=0.2, min_lr=0.01, step_size_up=3)
    for position in range(12):
        lrs, momentum = lr_and_momentum_at(schedule, position, 12, [0.05, 0.5])
        assert lrs[0] == F.cyclic_lr(position, 0.01, 0.2, 3)
        assert lrs[1] == lrs[0] * (0.5 / 0.05)
        assert momentum is None  # Cyclic without cycle_momentum leaves the momentum alone


def test_ref_lr_is_the_reference_group_of_a_single_group():
    schedule = CosineAnnealing(min_lr=1e-3)
    alone = lr_and_momentum_at(schedule, 9, 20, [0.01], 4, ref_lr=0.1).lrs[0]
    together = lr_and_momentum_at(schedule, 9, 20, [0.1, 0.01], 4).lrs[1]
    assert alone == together == F.cosine_lr(5, 0.1, 16, 1e-3) * F.warmup_factor(9, 4) * (0.01 / 0.1)


def test_without_warmup_it_is_the_schedule():
    for position in range(10):
        assert lr_and_momentum_at(Constant(), position, 10, [0.3]).lrs == [0.3]
    plateau = ReduceOnPlateau(factor=0.5, patience=0)
    plateau.update(1.0)
    plateau.update(2.0)
    assert lr_and_momentum_at(plateau, 3, 10, [0.4, 0.04]).lrs == [0.2, 0.2 * (0.04 / 0.4)]


def test_unknown_warmup_mode():
    with pytest.raises(
        ValueError, match=r"Unknown warm-up `mode` 'cubic'; allowed: \['linear', 'exponential'\]\."
    ):
        lr_and_momentum_at(Constant(), 0, 10, [0.1], 2, "cubic")


def test_short_names_and_unknown_name():
    assert {type(create_schedule(name)) for name in LR_SCHEDULES} == set(LR_SCHEDULES.values())
    assert isinstance(create_schedule("OneCycle"), OneCycle)
    with pytest.raises(ValueError) as err:
        create_schedule("zigzag")
    assert str(err.value) == (
        f"Unknown `schedule` 'zigzag'; allowed: {sorted(LR_SCHEDULES)} (or a schedule instance)."
    )
