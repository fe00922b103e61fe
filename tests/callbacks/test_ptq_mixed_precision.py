"""PostTrainingQuantization(mixed_precision=True): the run-time mixed-precision planner
(functional/quantization/mixed_precision.py) wired into the callback.

As in the planner's own tests (tests/functional/quantization/test_mixed_precision.py), the sensitive layer is made
by a scripted metric (it reads which layers are int8 in the real converted model it is given) and the speed rule by
an injected timer, so every decision is deterministic; the int8 models are real PT2E models. The real top-1 path
runs in the callback matrix (``PostTrainingQuantization[mixed_precision]``).
"""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from lightning_optim.callbacks import PostTrainingQuantization
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.quantization import Pt2eModule, QuantizationError
from lightning_optim.functional.quantization.mixed_precision import MODEL
from lightning_optim.functional.quantization.pt2e import float_layers
from lightning_optim.modules import ClassificationModule
from tests.callbacks.test_quantization_pt2e import DataDependent, StepCounter
from tests.conftest import quiet_trainer_kwargs

QUIET = {"latency_batch_sizes": (), "verbose": False, "calibration_batches": 2, "eval_batches": 2}
LAYERS = ["conv1", "conv2", "head"]


class TinyCNN(nn.Module):
    """Two convolutions and a linear head on the 1x8x8 digits: three layers the PT2E stack quantizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(torch.flatten(x, 1))


def kept_float(model: nn.Module) -> set[str] | None:
    """The conv/linear layers a converted PT2E model keeps in float; ``None`` for a float model."""
    return set(float_layers(model.graph_module)) if isinstance(model, Pt2eModule) else None


class ScriptedPTQ(PostTrainingQuantization):
    """The plan's metric: 0.9, minus ``cost`` for each layer of ``SENSITIVE`` that is int8 in the model."""

    SENSITIVE = {"conv2": 0.4}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scored: list[set[str] | None] = []

    def mixed_precision_metric(self, model, batches) -> float:
        assert batches, "the plan is measured on the validation batches"
        floats = kept_float(model)
        self.scored.append(floats)
        return 0.9 - (0.0 if floats is None else sum(c for n, c in self.SENSITIVE.items() if n not in floats))


class NeverPlans(PostTrainingQuantization):
    def mixed_precision_metric(self, model, batches) -> float:
        raise AssertionError("a restored plan must not be measured again")


class Timer:
    """Each layer 1 ms in float and ``int8_ms`` (default 0.5) in int8; runs (and compiles) nothing."""

    def __init__(self, int8_ms: dict[str, float]) -> None:
        self.int8_ms = int8_ms
        self.layers: list[str] = []

    def __call__(self, name, variant, run, x) -> float:
        if name == MODEL:
            return {"float_eager": 4.0, "float_compiled": 3.0, "int8": 1.0, "mixed": 1.5}[variant]
        self.layers.append(name)
        return 1.0 if variant == "float" else self.int8_ms.get(name, 0.5)


class Recorder(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def fit(root, callbacks, model=None, **overrides):
    pl.seed_everything(0, workers=True)
    module = ClassificationModule(model or TinyCNN(), num_classes=10, optimizer="adam", lr=1e-2)
    dm = ImageClassificationDataModule("digits", batch_size=32)
    kwargs = quiet_trainer_kwargs(root, max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    kwargs.update(overrides)
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=dm)
    return trainer, module, dm


def test_the_sensitive_layer_and_only_it_stays_float(tmp_path):
    ptq = ScriptedPTQ(mixed_precision=True, mixed_precision_latency=False, replace_model=False, **QUIET)
    recorder = Recorder()
    trainer, module, dm = fit(tmp_path, [ptq], logger=recorder)
    plan = ptq.mixed_precision_plan
    assert plan is not None and plan.exclude == ["conv2"]
    assert [m.name for m in plan.layers] == LAYERS and plan.int8_layers == ["conv1", "head"]
    assert (plan.metric_float, plan.metric_int8, plan.metric_plan) == pytest.approx((0.9, 0.5, 0.9))
    assert plan.latency_ms == {} and plan.met
    assert plan.quantized_model is None  # the callback's own int8 model is the one kept
    assert kept_float(ptq.quantized_model) == {"conv2"}  # the callback's int8 model: exactly that layer float
    assert ptq.backend.exclude == ["conv2"]
    assert recorder.metrics["quantization/float_layers"] == 1
    # the plan is in the callback's state, as plain data, and comes back from it
    state = ptq.state_dict()
    assert json.loads(json.dumps(state["mixed_precision_plan"])) == plan.to_dict()
    restored = NeverPlans(mixed_precision=True, mixed_precision_latency=False, replace_model=False, **QUIET)
    restored.load_state_dict(state)
    assert restored.mixed_precision_plan.to_dict() == plan.to_dict()
    assert restored.state_dict() == state
    # a resumed callback quantizes with the restored plan, without measuring again
    trainer = pl.Trainer(
        callbacks=[restored], **quiet_trainer_kwargs(tmp_path / "again", limit_val_batches=2)
    )
    trainer.validate(module, datamodule=dm)
    assert restored.done and kept_float(restored.quantized_model) == {"conv2"}


def test_float_alone_sensitivity_and_a_second_sensitive_layer(tmp_path):
    class TwoSensitive(ScriptedPTQ):
        SENSITIVE = {"conv1": 0.05, "head": 0.3}

    ptq = TwoSensitive(
        mixed_precision=True,
        mixed_precision_latency=False,
        mixed_precision_sensitivity="float_alone",
        max_accuracy_drop=0.01,
        replace_model=False,
        **QUIET,
    )
    fit(tmp_path, [ptq])
    plan = ptq.mixed_precision_plan
    assert plan.sensitivity_method == "float_alone"
    assert plan.exclude == ["conv1", "head"]  # both needed to come within 0.01 of the float metric
    assert [s[0] for s in plan.steps] == [[], ["head"], ["conv1"]]  # the most sensitive first
    assert kept_float(ptq.quantized_model) == {"conv1", "head"}


def test_a_layer_without_cpu_gain_stays_float_by_the_injected_timer(tmp_path):
    class Timed(ScriptedPTQ):
        SENSITIVE = {}
        _mixed_precision_timer = Timer({"head": 2.0})

    ptq = Timed(
        mixed_precision=True, max_accuracy_drop=math.inf, min_int8_speedup=1.0, replace_model=False, **QUIET
    )
    fit(tmp_path, [ptq])
    plan = ptq.mixed_precision_plan
    assert sorted(set(Timed._mixed_precision_timer.layers)) == sorted(LAYERS)
    assert plan.exclude == ["head"] and "no CPU gain" in plan.layers[2].reason
    assert kept_float(ptq.quantized_model) == {"head"}
    assert plan.latency_ms["mixed"] == 1.5
    assert ptq.scored == [None, set()] + [{"head"}]  # float, all-int8, the plan: no sensitivity pass


def test_without_mixed_precision_every_layer_is_int8(tmp_path):
    ptq = ScriptedPTQ(replace_model=False, **QUIET)
    fit(tmp_path, [ptq])
    assert ptq.mixed_precision_plan is None and ptq.scored == []
    assert kept_float(ptq.quantized_model) == set()
    assert ptq.state_dict()["mixed_precision_plan"] is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_accuracy_drop": -0.01}, ValueError, r"`max_accuracy_drop` must be >= 0"),
        ({"max_accuracy_drop": float("nan")}, ValueError, r"`max_accuracy_drop`"),
        ({"min_int8_speedup": -1}, ValueError, r"`min_int8_speedup` must be a finite number >= 0"),
        ({"min_int8_speedup": "fast"}, TypeError, r"`min_int8_speedup`"),
        (
            {"mixed_precision_sensitivity": "hessian"},
            ValueError,
            r"Unknown mixed-precision `mixed_precision_sensitivity` 'hessian'; allowed: \['int8_alone', 'float_alone'\]",
        ),
        ({"mixed_precision_eval_batches": 0}, ValueError, r"`mixed_precision_eval_batches` must be"),
        ({"mixed_precision": "yes"}, TypeError, r"`mixed_precision` must be True or False"),
        ({"mixed_precision_latency": 1}, TypeError, r"`mixed_precision_latency` must be True or False"),
        (
            {"mixed_precision": True, "backend": "eager"},
            ValueError,
            r"`mixed_precision=True` needs `backend='pt2e'`.*`backend='eager'`",
        ),
        ({"mixed_precision": True, "engine": "fbgemm"}, ValueError, r"`mixed_precision=True` needs the PT2E"),
        ({"mixed_precision": True, "export_format": "artifact"}, ValueError, r"`export_format='artifact'`"),
    ],
)
def test_bad_settings_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        PostTrainingQuantization(**kwargs)


def test_auto_choosing_eager_is_refused_at_setup(tmp_path):
    counter = StepCounter()
    ptq = PostTrainingQuantization(mixed_precision=True, **QUIET)
    with pytest.raises(QuantizationError, match=r"`mixed_precision=True` needs backend 'pt2e'.*'eager'"):
        fit(tmp_path, [ptq, counter], DataDependent())
    assert counter.steps == 0  # refused before any epoch
