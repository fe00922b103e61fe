"""The size-budget search: exact multiple-choice knapsack, exact sizes, HAWQ-V2 traces, clear refusals."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_optim.functional.weight_sharing import save_shared, size_breakdown
from lightning_optim.functional.weight_sharing.budget import (
    BudgetError,
    Choice,
    LayerChoices,
    apply_plan,
    artifact_bytes,
    check_budget,
    clustered,
    fit_budget,
    hessian_traces,
    layer_choices,
    measure_loss_costs,
    solve_budget,
)


def _layers(spec):
    return [
        LayerChoices(
            f"l{i}", 100, [Choice(b, 0.0, size, cost, 100) for b, (size, cost) in enumerate(opts, 1)]
        )
        for i, opts in enumerate(spec)
    ]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    spec=st.lists(
        st.lists(st.tuples(st.integers(1, 60), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    ),
    extra=st.integers(0, 120),
)
def test_the_plan_is_the_brute_force_optimum(spec, extra):
    layers = _layers(spec)
    smallest = sum(min(size for size, _ in opts) for opts in spec)
    budget = smallest + extra  # small budgets: one byte a unit, the programme is exact
    plan = solve_budget(layers, budget)
    best = min(
        sum(cost for _, cost in combo)
        for combo in itertools.product(*spec)
        if sum(size for size, _ in combo) <= budget
    )
    assert plan.cost == pytest.approx(best, abs=1e-9)
    assert plan.layer_bytes <= budget


def test_a_budget_below_the_smallest_size_is_refused_with_that_size():
    layers = _layers([[(30, 1.0), (10, 5.0)], [(20, 0.0), (7, 2.0)]])
    with pytest.raises(BudgetError, match=r"smallest artifact these settings allow: 117 bytes"):
        solve_budget(layers, 116, fixed_bytes=100)
    assert solve_budget(layers, 117, fixed_bytes=100).bits == {"l0": 2, "l1": 2}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size_budget_bytes": 0, "average_bits": None}, "size_budget_bytes"),
        ({"size_budget_bytes": 10.5, "average_bits": None}, "size_budget_bytes"),
        ({"size_budget_bytes": None, "average_bits": 9}, "average_bits"),
        ({"size_budget_bytes": 10, "average_bits": 4}, "not both"),
    ],
)
def test_budget_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_budget(**kwargs)


def test_sizes_are_the_artifacts_own_and_overrides_fix_the_bits():
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    w[w.abs() < 0.5] = 0
    layers = layer_choices({"fc.weight": w}, bits=[2, 3, 4], sparsities=[0.8])
    (layer,) = layers
    assert {(c.bits, c.sparsity) for c in layer.choices} == {
        (b, s) for b in (2, 3, 4) for s in (round(float((w == 0).float().mean()), 6), 0.8)
    }
    for c in layer.choices:
        values = clustered(w, c.bits, c.sparsity)
        assert c.size == size_breakdown({"fc.weight": values}, codebook_dtype="float16").entries[0].total
        assert c.nonzero == int((values != 0).sum())
        assert len(values[values != 0].unique()) <= 2**c.bits
        assert c.perturbation == pytest.approx(float(((w - values) ** 2).sum()), rel=1e-6)
    # more sparsity: fewer non-zeros and fewer bytes at the same bits
    by = {(c.bits, c.sparsity): c for c in layer.choices}
    assert by[(3, 0.8)].size < min(c.size for (b, s), c in by.items() if b == 3 and s != 0.8)
    (fixed,) = layer_choices({"fc.weight": w}, bits=[2, 3, 4], overrides={"fc.weight": 3})
    assert {c.bits for c in fixed.choices} == {3}
    with pytest.raises(ValueError, match="per-layer `bits`"):
        layer_choices({"fc.weight": w}, overrides={"fc.wieght": 3})
    tiny = torch.zeros(4, 4)
    tiny[0, :3] = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="use at most 1 bits"):
        layer_choices({"t": tiny}, overrides={"t": 2})


def test_hessian_traces_are_exact_for_a_diagonal_quadratic():
    """For loss = 1/2 sum a_i w_i^2 the Hessian is diag(a): v^T H v = sum a_i for every Rademacher v."""

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.randn(5, 4))
            self.b = nn.Parameter(torch.randn(7))

        def forward(self, _):
            return None

    model = Quadratic()
    ca, cb = torch.rand(5, 4) + 0.5, torch.full((7,), 3.0)

    def loss(m, _):
        return 0.5 * (ca * m.a**2).sum() + 0.5 * (cb * m.b**2).sum()

    traces = hessian_traces(
        model, loss, [None, None], ["a", "b"], samples=3, generator=torch.Generator().manual_seed(1)
    )
    assert traces["a"] == pytest.approx(float(ca.mean()), rel=1e-5)
    assert traces["b"] == pytest.approx(3.0, rel=1e-5)
    with pytest.raises(ValueError, match="Unknown parameter `names` 'c'"):
        hessian_traces(model, loss, [None], ["c"])


def _tiny_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 12, generator=g)
    teacher = torch.randn(12, 3, generator=g)
    y = (x @ teacher).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_fit_budget_on_a_tiny_model_meets_the_budget_with_the_whole_file_and_beats_uniform_bits():
    model, x, y = _tiny_task()
    names = ["0.weight", "2.weight", "4.weight"]

    def loss(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    traces = hessian_traces(
        model, loss, [(x, y)], names, samples=8, generator=torch.Generator().manual_seed(0)
    )
    uniform = dict(model.state_dict())
    for n in names:
        uniform[n] = clustered(uniform[n], 3)
    budget = artifact_bytes(uniform)  # the size of uniform 3-bit sharing
    plan = fit_budget(model, names, budget, bits=range(1, 9), traces=traces)
    mixed = nn.Sequential(
        *[type(m)(*([m.in_features, m.out_features] if isinstance(m, nn.Linear) else [])) for m in model]
    )
    mixed.load_state_dict(model.state_dict())
    apply_plan(mixed, plan)
    written = save_shared(mixed, codebook_dtype="float16")
    assert len(written) <= plan.total_bytes <= budget  # total_bytes: the bound (raw unshared tensors)
    assert len(set(plan.bits.values())) > 1  # mixed: not one width for all

    def held_out_loss(m):
        with torch.no_grad():
            return float(loss(m, (x, y)))

    uniform_model = nn.Sequential(
        *[type(m)(*([m.in_features, m.out_features] if isinstance(m, nn.Linear) else [])) for m in model]
    )
    uniform_model.load_state_dict(uniform)
    # the plan minimizes the trace-weighted perturbation: it damages the loss less than uniform bits of that size
    assert held_out_loss(mixed) <= held_out_loss(uniform_model)
    with pytest.raises(BudgetError, match="smallest artifact"):
        fit_budget(model, names, 200, bits=[2, 3])


def test_measured_loss_costs_restore_the_model():
    model, x, y = _tiny_task(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = layer_choices({"2.weight": model.state_dict()["2.weight"]}, bits=[1, 4])

    def evaluate(m):
        with torch.no_grad():
            return float(nn.functional.cross_entropy(m(x), y))

    measure_loss_costs(model, layers, evaluate)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    costs = {b: c for (b, _), c in layers[0].measured.items()}
    assert costs[1] >= costs[4] >= 0  # one bit (2 centroids) hurts more than four


# ------------------------------------------------------------------------------------------ size-accuracy curve
def test_size_accuracy_curve_rows_fit_their_budgets_and_evaluate_sees_shared_copies(tmp_path):
    import json
    import re

    from lightning_optim.functional.weight_sharing.budget import (
        curve_markdown,
        plot_curve,
        size_accuracy_curve,
    )

    model, x, y = _tiny_task(2)
    names = ["0.weight", "2.weight", "4.weight"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, big = (
        artifact_bytes({**model.state_dict(), **{n: clustered(model.state_dict()[n], b) for n in names}})
        for b in (2, 3)
    )
    seen = []

    def evaluate(m):
        values = {n: torch.unique(m.state_dict()[n][m.state_dict()[n] != 0]).numel() for n in names}
        seen.append((values, len(save_shared(m, codebook_dtype="float16"))))
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    budgets = [200, small + 400, big + 800]
    rows = size_accuracy_curve(model, names, budgets, evaluate, bits=[2, 3])
    assert [r["budget"] for r in rows] == budgets
    refused, *met = rows
    assert refused["bytes"] is None and refused["metric"] is None and refused["bits"] is None
    assert re.search(r"smallest size, [\d,]+ B", refused["note"])
    assert len(seen) == 2  # the refused budget evaluates nothing
    for row, (values, written) in zip(met, seen):
        assert row["bytes"] == written <= row["budget"]  # the exact artifact size of the evaluated copy
        assert 0.0 <= row["metric"] <= 1.0 and row["note"] is None
        assert set(row["bits"]) == set(names) and set(row["bits"].values()) <= {2, 3}
        for n in names:
            assert values[n] <= 1 << row["bits"][n], n  # at most 2**bits distinct non-zero values
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    json.dumps(rows)  # plain data
    table = curve_markdown(rows, "accuracy", percent=True)
    assert table.count("\n") == 1 + len(rows) and "smallest size" in table
    png = plot_curve(rows, tmp_path / "curve.png", "accuracy")
    assert png is None or png.stat().st_size > 0
