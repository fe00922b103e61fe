"""Closed-form schedules against their formulas at chosen steps, and against PyTorch's schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_optim.functional.lr_scheduling import formulas as F

BASE = 0.1


def _torch_lrs(make_scheduler, steps: int, lr: float = BASE, momentum: bool = False, **opt_kwargs):
    """LRs (and momenta) PyTorch's scheduler produces for steps 0..steps-1."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr, momentum=0.9, **opt_kwargs)
    sched = make_scheduler(opt)
    lrs, moms = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return (lrs, moms) if momentum else lrs


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.01), (5, 0.01 + 0.99 * 0.5), (9, 0.01 + 0.99 * 0.9), (10, 1.0), (50, 1.0)],
)
def test_linear_warmup_boundaries(step, expected):
    assert F.warmup_factor(step, 10, "linear", 0.01) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.01), (5, 0.1), (10, 1.0)])
def test_exponential_warmup_boundaries(step, expected):
    assert F.warmup_factor(step, 10, "exponential", 0.01) == pytest.approx(expected)


def test_warmup_disabled_and_bad_mode():
    assert F.warmup_factor(0, 0) == 1.0
    with pytest.raises(ValueError, match="mode"):
        F.warmup_factor(0, 10, "cubic")


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, BASE), (9, BASE), (10, BASE * 0.5), (25, BASE * 0.25), (30, BASE * 0.125)],
)
def test_step_lr(step, expected):
    assert F.step_lr(step, BASE, step_size=10, gamma=0.5) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, BASE), (2, BASE), (3, BASE * 0.1), (7, BASE * 0.01), (100, BASE * 0.01)]
)
def test_multistep_lr(step, expected):
    assert F.multistep_lr(step, BASE, [3, 7], gamma=0.1) == pytest.approx(expected)


@pytest.mark.parametrize("step", [0, 1, 17, 100])
def test_exponential_lr(step):
    assert F.exponential_lr(step, BASE, 0.9) == pytest.approx(BASE * 0.9**step)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, BASE), (50, (BASE + 0.001) / 2), (100, 0.001), (150, 0.001)],
)
def test_cosine_without_restarts(step, expected):
    assert F.cosine_lr(step, BASE, period=100, min_lr=0.001) == pytest.approx(expected)


@pytest.mark.parametrize(("period_mult", "steps"), [(1, 45), (2, 70)])
def test_sgdr_matches_torch(period_mult, steps):
    expected = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            o, T_0=10, T_mult=period_mult, eta_min=1e-3
        ),
        steps,
    )
    ours = [F.cosine_lr(t, BASE, 10, 1e-3, restarts=True, period_mult=period_mult) for t in range(steps)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_sgdr_restart_boundaries_and_decay():
    # cycles of 10, 20, 40 steps: restarts at 10 and 30
    assert F.sgdr_position(10, 10, 2.0) == (1, 0.0, 20.0)
    assert F.sgdr_position(29, 10, 2.0) == (1, 19.0, 20.0)
    assert F.sgdr_position(30, 10, 2.0) == (2, 0.0, 40.0)
    assert F.cosine_lr(30, BASE, 10, 0.0, restarts=True, period_mult=2.0, restart_decay=0.5) == pytest.approx(
        BASE * 0.25
    )


@pytest.mark.parametrize(
    ("step", "power", "expected"),
    [(0, 1.0, BASE), (50, 1.0, 0.5 * BASE), (50, 2.0, 0.25 * BASE), (100, 2.0, 0.0), (120, 1.0, 0.0)],
)
def test_polynomial_lr(step, power, expected):
    assert F.polynomial_lr(step, BASE, 100, power) == pytest.approx(expected, abs=1e-15)


def test_polynomial_matches_torch():
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=30, power=2.0), 35)
    assert [F.polynomial_lr(t, BASE, 30, 2.0) for t in range(35)] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("mode", "step", "expected"),
    [
        ("triangular", 0, 0.01),
        ("triangular", 5, 0.055),
        ("triangular", 10, 0.1),
        ("triangular", 15, 0.055),
        ("triangular", 20, 0.01),
        ("triangular2", 30, 0.01 + 0.09 * 0.5),  # second cycle's peak is halved
        ("triangular2", 50, 0.01 + 0.09 * 0.25),
        ("exp_range", 10, 0.01 + 0.09 * 0.9**10),
    ],
)
def test_cyclic_closed_form(mode, step, expected):
    assert F.cyclic_lr(step, 0.01, 0.1, 10, mode=mode, gamma=0.9) == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_matches_torch(mode):
    lrs, moms = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o,
            base_lr=0.01,
            max_lr=0.1,
            step_size_up=7,
            step_size_down=3,
            mode=mode,
            gamma=0.97,
            base_momentum=0.8,
            max_momentum=0.9,
        ),
        45,
        lr=0.01,
        momentum=True,
    )
    ours = [F.cyclic_lr(t, 0.01, 0.1, 7, 3, mode, 0.97) for t in range(45)]
    our_moms = [F.cyclic_momentum(t, 0.8, 0.9, 7, 3, mode, 0.97) for t in range(45)]
    assert ours == pytest.approx(lrs, rel=1e-9)
    assert our_moms == pytest.approx(moms, rel=1e-9)


@pytest.mark.parametrize(("three_phase", "anneal"), [(False, "cos"), (False, "linear"), (True, "cos")])
def test_one_cycle_matches_torch_with_momentum(three_phase, anneal):
    total = 50
    lrs, moms = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=BASE, total_steps=total, pct_start=0.3, anneal_strategy=anneal, three_phase=three_phase
        ),
        total,
        momentum=True,
    )
    ours = [F.one_cycle_lr(t, total, BASE, 0.3, 25.0, 1e4, anneal, three_phase) for t in range(total)]
    our_moms = [F.one_cycle_momentum(t, total, 0.85, 0.95, 0.3, anneal, three_phase) for t in range(total)]
    assert ours == pytest.approx(lrs, rel=1e-9)
    assert our_moms == pytest.approx(moms, rel=1e-9)


@pytest.mark.parametrize(
    ("step", "lr", "momentum"),
    [(0, BASE / 25, 0.95), (29, BASE, 0.85), (99, BASE / 25 / 1e4, 0.95), (500, BASE / 25 / 1e4, 0.95)],
)
def test_one_cycle_boundaries(step, lr, momentum):
    assert F.one_cycle_lr(step, 100, BASE) == pytest.approx(lr)
    assert F.one_cycle_momentum(step, 100) == pytest.approx(momentum)


def test_plateau_matches_torch_on_scripted_metric():
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.79999, 0.5, 0.5, 0.5, 0.5]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=2, cooldown=1, threshold=1e-3
    )
    state = F.plateau_initial_state("min")
    for metric in metrics:
        sched.step(metric)
        state = F.plateau_update(state, metric, "min", patience=2, threshold=1e-3, cooldown=1)
        assert F.plateau_lr(BASE, state.reductions, 0.5) == pytest.approx(opt.param_groups[0]["lr"])
    assert state.reductions >= 3


@pytest.mark.parametrize(
    ("mode", "threshold_mode", "best", "current", "better"),
    [
        ("min", "rel", 1.0, 0.995, False),
        ("min", "rel", 1.0, 0.98, True),
        ("min", "abs", 1.0, 0.985, True),
        ("max", "rel", 1.0, 1.02, True),
        ("max", "abs", 1.0, 1.005, False),
        ("min", "rel", math.inf, 5.0, True),
    ],
)
def test_plateau_improvement_rule(mode, threshold_mode, best, current, better):
    assert F.is_improvement(current, best, mode, 0.01, threshold_mode) is better


def test_plateau_min_lr_floor():
    assert F.plateau_lr(BASE, 10, 0.5, min_lr=1e-3) == 1e-3
