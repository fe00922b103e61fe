"""Run-time mixed precision (functional/quantization/mixed_precision.py): which layers stay float, by measurement.

The metric is scripted (a fake ``evaluate`` that reads which layers are int8 in the real converted model it is
given) and the timer injected, so every decision is deterministic; the PTQ models are real PT2E int8 models.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lightning_optim.functional.quantization import EagerBackend, Pt2eBackend, Pt2eModule
from lightning_optim.functional.quantization.mixed_precision import (
    MODEL,
    MODEL_VARIANTS,
    MixedPrecisionPlan,
    check_plan_settings,
    choose_float_layers,
)
from lightning_optim.functional.quantization.pt2e import float_layers
from tests.nets import ResidualCNN, SEDepthwiseCNN, TransformerBlock

IMAGE = (4, 3, 16, 16)
TOKENS = (4, 6, 16)

#: (network, input shape, its quantizable layers in model order)
NETS = {
    "residual_cnn": (
        ResidualCNN,
        IMAGE,
        ["stem.0", "blocks.0.0", "blocks.0.3", "blocks.1.0", "blocks.1.3", "head"],
    ),
    "se_depthwise": (
        SEDepthwiseCNN,
        IMAGE,
        ["stem.0", "expand.0", "depthwise.0", "se.fc1", "se.fc2", "project.0", "head"],
    ),
    "transformer_block": (
        TransformerBlock,
        TOKENS,
        ["attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"],
    ),
}


def setup_net(key: str) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor], list[str]]:
    cls, shape, layers = NETS[key]
    torch.manual_seed(0)
    net = cls()
    net.train()
    with torch.no_grad():  # batch-norm statistics as a trained model has
        for _ in range(3):
            net(torch.randn(8, *shape[1:]))
    net.eval()
    return net, torch.randn(shape), [torch.randn(shape) for _ in range(2)], layers


def float_layer_set(model: nn.Module) -> set[str] | None:
    """The conv/linear layers a converted model keeps in float; ``None`` for the float model."""
    return set(float_layers(model.graph_module)) if isinstance(model, Pt2eModule) else None


def scripted_metric(costs: dict[str, float], float_metric: float = 0.9, mode: str = "max"):
    """A fake ``evaluate``: the float metric, worsened by ``costs[layer]`` for each listed layer that is int8 in
    the model it gets; records the float layers of every model it was called with."""
    seen: list[set[str] | None] = []

    def evaluate(model: nn.Module) -> float:
        floats = float_layer_set(model)
        seen.append(floats)
        cost = 0.0 if floats is None else sum(c for name, c in costs.items() if name not in floats)
        return float_metric - cost if mode == "max" else float_metric + cost

    evaluate.seen = seen  # type: ignore[attr-defined]
    return evaluate


class ScriptedTimer:
    """An injected timer: each layer 1.0 ms in float and ``int8_ms[layer]`` (default 0.5) in int8; never runs
    (nor compiles) anything; records what it was asked."""

    def __init__(self, int8_ms: dict[str, float] | None = None) -> None:
        self.int8_ms = int8_ms or {}
        self.calls: list[tuple[str, str, tuple[int, ...]]] = []

    def __call__(self, name, variant, run, x) -> float:
        self.calls.append((name, variant, tuple(x.shape)))
        if name == MODEL:
            return {"float_eager": 4.0, "float_compiled": 3.0, "int8": 1.0, "mixed": 1.5}[variant]
        return 1.0 if variant == "float" else self.int8_ms.get(name, 0.5)


def never_called(model: nn.Module) -> float:
    raise AssertionError("evaluate must not run for a refused setting")


# ----------------------------------------------------------------------------------------- sensitivity
@pytest.mark.parametrize(
    ("net_key", "sensitive"),
    [("residual_cnn", "blocks.0.3"), ("se_depthwise", "depthwise.0"), ("transformer_block", "attn.v")],
)
def test_the_one_sensitive_layer_and_only_it_stays_float(net_key, sensitive):
    net, x, batches, layers = setup_net(net_key)
    evaluate = scripted_metric({sensitive: 0.4})
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, evaluate, max_accuracy_drop=0.01, measure_latency=False
    )
    assert plan.exclude == [sensitive]
    assert [m.name for m in plan.layers] == layers
    assert plan.int8_layers == [n for n in layers if n != sensitive]  # read from the plan's own graph
    assert (plan.metric_float, plan.metric_int8) == pytest.approx((0.9, 0.5))
    assert plan.metric_plan == pytest.approx(0.9) and plan.met
    by_name = {m.name: m for m in plan.layers}
    assert by_name[sensitive].sensitivity == pytest.approx(0.4)
    assert by_name[sensitive].precision == "float" and "sensitive (rank 1)" in by_name[sensitive].reason
    assert all(m.sensitivity == pytest.approx(0.0) for m in plan.layers if m.name != sensitive)
    # int8_alone: each sensitivity model has exactly one int8 layer (the rest float)
    for floats in evaluate.seen[2 : 2 + len(layers)]:
        assert floats is not None and len(set(layers) - floats) == 1
    assert float_layer_set(plan.quantized_model) == {sensitive}
    assert plan.steps == [([], pytest.approx(0.5)), ([sensitive], pytest.approx(0.9))]


def test_float_alone_sensitivity_finds_the_same_layer():
    net, x, batches, layers = setup_net("residual_cnn")
    evaluate = scripted_metric({"blocks.1.0": 0.3})
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, evaluate, sensitivity="float_alone", measure_latency=False
    )
    assert plan.exclude == ["blocks.1.0"]
    by_name = {m.name: m for m in plan.layers}
    assert by_name["blocks.1.0"].metric == pytest.approx(0.9)  # only it float: everything recovered
    assert by_name["blocks.1.0"].sensitivity == pytest.approx(0.3)
    assert by_name["head"].metric == pytest.approx(0.6) and by_name["head"].sensitivity == pytest.approx(0.0)
    for floats in evaluate.seen[2 : 2 + len(layers)]:  # each sensitivity model: exactly one float layer
        assert floats is not None and len(floats) == 1


def test_most_sensitive_first_and_only_as_many_as_the_budget_needs():
    net, x, batches, _ = setup_net("residual_cnn")
    costs = {"stem.0": 0.05, "blocks.1.3": 0.3}
    loose = choose_float_layers(
        net, Pt2eBackend(), x, batches, scripted_metric(costs), max_accuracy_drop=0.1, measure_latency=False
    )
    assert loose.exclude == ["blocks.1.3"] and loose.met  # 0.35 -> 0.05 <= 0.1: stem.0 stays int8
    tight = choose_float_layers(
        net, Pt2eBackend(), x, batches, scripted_metric(costs), max_accuracy_drop=0.01, measure_latency=False
    )
    assert tight.exclude == ["stem.0", "blocks.1.3"]  # model order in the plan...
    assert [added for added, _ in tight.steps] == [[], ["blocks.1.3"], ["stem.0"]]  # ...most sensitive first
    assert {m.name: m.reason.split(":")[0] for m in tight.layers if m.precision == "float"} == {
        "blocks.1.3": "sensitive (rank 1)",
        "stem.0": "sensitive (rank 2)",
    }


def test_the_planner_exports_the_model_once_for_all_its_configurations(monkeypatch):
    """Each configuration the planner tries prepares a copy of one ``torch.export`` program of the model (the
    configurations differ in their quantizer only), and the backend it was given keeps no cache afterwards."""
    net, x, batches, _ = setup_net("residual_cnn")
    calls = []
    export = torch.export.export

    def counting(*args, **kwargs):
        calls.append(1)
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)
    backend = Pt2eBackend()
    costs = {"stem.0": 0.05, "blocks.1.3": 0.3}
    plan = choose_float_layers(
        net, backend, x, batches, scripted_metric(costs), max_accuracy_drop=0.01, measure_latency=False
    )
    assert plan.exclude == [
        "stem.0",
        "blocks.1.3",
    ]  # what the test above finds with an export per configuration
    configurations = len(plan.steps) + len(plan.layers)  # the sensitivity pass and the greedy steps, at least
    assert configurations > 3 and len(calls) == 1, (configurations, len(calls))
    assert "_capture_cache" not in vars(backend)


def test_a_smaller_is_better_metric_with_mode_min():
    net, x, batches, _ = setup_net("se_depthwise")
    evaluate = scripted_metric({"se.fc2": 0.2}, float_metric=0.1, mode="min")
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, evaluate, mode="min", max_accuracy_drop=0.05, measure_latency=False
    )
    assert plan.exclude == ["se.fc2"] and plan.met
    assert plan.drop(plan.metric_int8) == pytest.approx(0.2)


def test_a_real_fidelity_metric_with_no_allowed_drop_keeps_every_layer_float():
    """With a real metric (agreement with the float model's outputs) every int8 layer costs something, so a zero
    budget ends with the whole model float, and the plan says int8 gains nothing."""
    net, x, batches, layers = setup_net("residual_cnn")
    held_out = torch.randn(16, *IMAGE[1:])
    with torch.no_grad():
        reference = net(held_out)

    def fidelity(model: nn.Module) -> float:
        with torch.no_grad():
            return -float((model(held_out) - reference).norm() / reference.norm())

    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, fidelity, max_accuracy_drop=0.0, measure_latency=False
    )
    assert plan.metric_int8 < plan.metric_float == 0.0
    assert plan.exclude == layers and plan.int8_layers == [] and plan.quantized_model is None
    assert plan.met and any("int8 gains nothing" in note for note in plan.notes)


def test_no_accuracy_budget_skips_the_sensitivity_pass():
    net, x, batches, _ = setup_net("residual_cnn")
    evaluate = scripted_metric({"head": 0.4})
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, evaluate, max_accuracy_drop=math.inf, measure_latency=False
    )
    assert plan.exclude == [] and len(evaluate.seen) == 2  # the float model and the all-int8 model only
    assert all(m.metric is None and m.precision == "int8" for m in plan.layers)


# ----------------------------------------------------------------------------------------- CPU gain
def test_a_layer_that_gains_nothing_in_int8_stays_float_by_the_injected_timer():
    net, x, batches, layers = setup_net("residual_cnn")
    timer = ScriptedTimer({"head": 1.25, "blocks.0.0": 0.95})  # 0.8x and 1.05x
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, scripted_metric({}), min_speedup=1.0, timer=timer
    )
    assert plan.exclude == ["head"]
    head = next(m for m in plan.layers if m.name == "head")
    assert head.speedup == pytest.approx(0.8) and head.reason.startswith("no CPU gain")
    assert next(m for m in plan.layers if m.name == "blocks.0.0").precision == "int8"
    # every layer timed float then int8 at its real input shape (the head gets the pooled features)
    layer_calls = [c for c in timer.calls if c[0] != MODEL]
    assert [c[:2] for c in layer_calls] == [(n, v) for n in layers for v in ("float", "int8")]
    assert dict((c[0], c[2]) for c in layer_calls)["head"] == (4, 8)
    assert dict((c[0], c[2]) for c in layer_calls)["stem.0"] == IMAGE
    assert [c[1] for c in timer.calls if c[0] == MODEL] == list(MODEL_VARIANTS)
    assert plan.latency_ms == {"float_eager": 4.0, "float_compiled": 3.0, "int8": 1.0, "mixed": 1.5}
    assert plan.steps[1] == (["head"], pytest.approx(0.9))

    # the other thresholds, by the speed rule alone: with a metric that no layer changes the sensitivity pass
    # (one PTQ per layer) adds nothing, as the default-budget run above checks, so these two skip it
    stricter = choose_float_layers(
        net,
        Pt2eBackend(),
        x,
        batches,
        scripted_metric({}),
        max_accuracy_drop=math.inf,
        min_speedup=1.1,
        timer=ScriptedTimer(timer.int8_ms),
    )
    assert stricter.exclude == ["blocks.0.0", "head"]  # 1.05x is not enough at 1.1
    never = choose_float_layers(
        net,
        Pt2eBackend(),
        x,
        batches,
        scripted_metric({}),
        max_accuracy_drop=math.inf,
        min_speedup=0.0,
        timer=ScriptedTimer(timer.int8_ms),
    )
    assert never.exclude == []


def test_without_latency_measurement_nothing_is_timed_and_no_layer_is_dropped_for_speed():
    net, x, batches, _ = setup_net("transformer_block")
    timer = ScriptedTimer({name: 10.0 for name in NETS["transformer_block"][2]})
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, scripted_metric({}), measure_latency=False, timer=timer
    )
    assert timer.calls == [] and plan.exclude == [] and plan.latency_ms == {}
    assert all(m.speedup is None for m in plan.layers)


def test_speed_and_sensitivity_together():
    net, x, batches, _ = setup_net("se_depthwise")
    plan = choose_float_layers(
        net,
        Pt2eBackend(),
        x,
        batches,
        scripted_metric({"project.0": 0.2}),
        timer=ScriptedTimer({"depthwise.0": 2.0}),
    )
    assert plan.exclude == ["depthwise.0", "project.0"]
    assert [added for added, _ in plan.steps] == [[], ["depthwise.0"], ["project.0"]]


# ----------------------------------------------------------------------------------------- the plan is usable
def test_the_plan_builds_with_pt2e_exclude_and_keeps_the_backend_own_exclusions():
    net, x, batches, layers = setup_net("residual_cnn")
    base = Pt2eBackend(exclude=["stem.0"])
    plan = choose_float_layers(
        net, base, x, batches, scripted_metric({"blocks.1.3": 0.3}), measure_latency=False
    )
    assert plan.exclude == ["stem.0", "blocks.1.3"]
    assert "stem.0" not in [m.name for m in plan.layers]  # not a candidate: the backend keeps it float
    final = Pt2eBackend(example_input=x, exclude=plan.exclude)
    observed, _ = final.prepare_ptq(net)
    final.calibrate(observed, batches)
    int8 = final.convert(observed)
    assert float_layer_set(int8) == {"stem.0", "blocks.1.3"}
    with torch.no_grad():  # the same PTQ as the plan measured: the same int8 model
        assert torch.equal(int8(x), plan.quantized_model(x))
    assert base.exclude == ["stem.0"] and base.example_input is None  # the caller's backend is left alone


def test_a_backend_factory_works_like_a_backend():
    net, x, batches, _ = setup_net("transformer_block")
    built: list[list[str]] = []

    def factory(exclude):
        built.append(list(exclude))
        return Pt2eBackend(exclude=exclude)

    plan = choose_float_layers(
        net, factory, x, batches, scripted_metric({"mlp.fc1": 0.3}), measure_latency=False
    )
    assert plan.exclude == ["mlp.fc1"] and ["mlp.fc1"] in built


def test_plan_tables_and_dict_round_trip():
    net, x, batches, layers = setup_net("residual_cnn")
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, scripted_metric({"head": 0.3}), timer=ScriptedTimer({"stem.0": 2.0})
    )
    table = plan.table()
    assert table.count("\n") == len(layers) + 1 and "`head`" in table and "no CPU gain" in table
    summary = plan.summary()
    assert "mixed (this plan)" in summary and "met" in summary and "batch 4" in summary
    data = json.loads(json.dumps(plan.to_dict()))
    again = MixedPrecisionPlan.from_dict(data)
    assert again == plan and again.quantized_model is None
    assert again.layers[0].speedup == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        (
            {"layers": ["blocks.0.9"]},
            ValueError,
            "Unknown mixed-precision `layers` 'blocks.0.9'; allowed: ['stem.0'",
        ),
        ({"layers": ["blocks.0.1"]}, ValueError, "`layers` 'blocks.0.1'"),  # a batch norm, not a layer
        ({"layers": ["head", "head"]}, ValueError, "names a layer twice"),
        ({"layers": "head"}, ValueError, "`layers` must be a non-empty list"),
        ({"max_accuracy_drop": -0.01}, ValueError, "`max_accuracy_drop` must be >= 0"),
        ({"max_accuracy_drop": math.nan}, ValueError, "`max_accuracy_drop` must be >= 0"),
        ({"max_accuracy_drop": "1%"}, TypeError, "`max_accuracy_drop` must be a number"),
        ({"min_speedup": -1.0}, ValueError, "`min_speedup` must be a finite number >= 0"),
        ({"sensitivity": "hessian"}, ValueError, "Unknown mixed-precision `sensitivity` 'hessian'; allowed:"),
        ({"mode": "up"}, ValueError, "Unknown mixed-precision `mode` 'up'; allowed: ['max', 'min']"),
        ({"repeats": 0}, ValueError, "`repeats` must be an integer >= 1"),
        ({"threads": 0}, ValueError, "`threads` must be an integer >= 1"),
    ],
)
def test_bad_settings_are_refused_before_any_measurement(kwargs, error, says):
    net, x, batches, _ = setup_net("residual_cnn")
    with pytest.raises(error) as info:
        choose_float_layers(net, Pt2eBackend(), x, batches, never_called, measure_latency=False, **kwargs)
    assert says in str(info.value)


def test_settings_check_alone_for_a_callback_init():
    assert check_plan_settings(max_accuracy_drop=0, min_speedup=1) == (0.0, 1.0)
    assert check_plan_settings(max_accuracy_drop=math.inf) == (math.inf, 1.0)
    with pytest.raises(ValueError, match="`max_accuracy_drop` must be >= 0"):
        check_plan_settings(max_accuracy_drop=-1e-9)
    with pytest.raises(ValueError, match="`min_speedup` must be a finite number >= 0"):
        check_plan_settings(min_speedup=math.inf)
    with pytest.raises(ValueError, match="`warmup` must be an integer >= 0"):
        check_plan_settings(warmup=-1)


def test_a_layer_the_backend_keeps_float_is_no_candidate():
    net, x, batches, _ = setup_net("residual_cnn")
    with pytest.raises(
        ValueError, match=r"Unknown mixed-precision `layers` 'head'; allowed: \['stem.0'.*quantizes"
    ):
        choose_float_layers(
            net,
            Pt2eBackend(exclude=["head"]),
            x,
            batches,
            scripted_metric({}),
            layers=["head"],
            measure_latency=False,
        )


@pytest.mark.filterwarnings("ignore:.*backend='eager'.*:FutureWarning")
def test_bad_backends_data_and_metrics():
    net, x, batches, _ = setup_net("residual_cnn")
    with pytest.raises(TypeError, match="Pt2eBackend"):
        choose_float_layers(net, EagerBackend(), x, batches, never_called, measure_latency=False)
    with pytest.raises(TypeError, match="factory must return a Pt2eBackend"):
        choose_float_layers(
            net, lambda exclude: EagerBackend(), x, batches, never_called, measure_latency=False
        )
    with pytest.raises(ValueError, match="factory ignored the layers"):
        choose_float_layers(
            net,
            lambda exclude: Pt2eBackend(),
            x,
            batches,
            scripted_metric({"head": 0.3}),
            measure_latency=False,
        )
    with pytest.raises(ValueError, match="`calibration_batches` is empty"):
        choose_float_layers(net, Pt2eBackend(), x, [], never_called, measure_latency=False)
    with pytest.raises(ValueError, match="`evaluate` returned nan"):
        choose_float_layers(net, Pt2eBackend(), x, batches, lambda m: math.nan, measure_latency=False)
    with pytest.raises(TypeError, match="`evaluate` must return a number"):
        choose_float_layers(net, Pt2eBackend(), x, batches, lambda m: "good", measure_latency=False)


# ----------------------------------------------------------------------------------------- the real timer
@pytest.mark.slow
def test_the_default_timer_compiles_and_times_the_layer_alone_and_the_models():
    """The isolated float and int8 layers and the whole models really compile and run (no figure asserted)."""
    net, x, batches, _ = setup_net("residual_cnn")
    plan = choose_float_layers(
        net, Pt2eBackend(), x, batches, scripted_metric({}), layers=["blocks.1.0"], repeats=2, warmup=1
    )
    (entry,) = plan.layers
    assert entry.float_ms is not None and entry.float_ms > 0
    assert entry.int8_ms is not None and entry.int8_ms > 0
    assert set(plan.latency_ms) == set(MODEL_VARIANTS) and all(v > 0 for v in plan.latency_ms.values())
    assert plan.threads == 1 and plan.batch_size == 4
