"""Mixed precision at run time: which layers stay in float while the rest of the model runs int8, chosen by
measurement (PT2E).

:func:`choose_float_layers` measures, for each layer the backend quantizes, two things and keeps a layer in
float when either says so:

- **accuracy sensitivity**: the caller's metric (``evaluate``) of a real int8 model in which that layer alone is
  int8 and every other layer float (``sensitivity="int8_alone"``, the default: the layer-by-layer sensitivity
  analysis of the "partial quantization" workflow of Wu et al. 2020, *Integer Quantization for Deep Learning
  Inference: Principles and Empirical Evaluation*, arXiv:2004.09602), or that layer alone float and every other
  layer int8 (``"float_alone"``: the leave-one-out variant, which also sees how a layer's error compounds with
  the others');
- **CPU gain**: the layer alone, timed in isolation at its real input shape (captured from ``example_input``):
  its float version against its int8 version (quantize the input, int8 kernel, float output), both compiled by
  inductor the way the lowered model runs them (:func:`~lightning_optim.functional.quantization.pt2e.lower`),
  median of ``repeats`` runs at a fixed thread count. A layer whose int8 version is not at least
  ``min_speedup`` times faster gains nothing from int8 on this CPU.

The plan is greedy, as in Wu et al.'s workflow: the layers that gain nothing are kept in float first; then, while
the int8 model of the plan loses more than ``max_accuracy_drop`` against the float model, the most sensitive
layer left is added to the float layers and the plan's real int8 model is measured again. Every figure in the
plan is a measurement of a real int8 model (``convert`` of a PTQ-calibrated capture), never a sum of
per-layer estimates; the float layers of the final int8 model are read back from its graph
(:func:`~lightning_optim.functional.quantization.pt2e.float_layers`), so a plan the backend did not honour is
refused.

The plan's :attr:`MixedPrecisionPlan.exclude` is what ``Pt2eBackend(exclude=...)`` takes.

Costs: one PTQ (capture, calibration, convert) and one ``evaluate`` per layer and per greedy step, plus, with
``measure_latency``, two small compiles per layer and three of the whole model. Timings are for the machine and
load they were taken on: plan on an idle machine, at the batch size you serve (``example_input``'s).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.functional.compression_report.markdown import format_cell, markdown_table
from lightning_optim.functional.compression_report.measure import measure_latency as _measure_latency
from lightning_optim.functional.compression_report.measure import num_threads
from lightning_optim.functional.quantization._quiet import quiet_cpu_compiler_import
from lightning_optim.functional.quantization.backend import QuantizationError
from lightning_optim.functional.quantization.fusion import quantizable_layers
from lightning_optim.functional.quantization.pt2e import (
    LoweredInt8,
    Pt2eBackend,
    Pt2eModule,
    _aten_name,
    _module_path,
    float_layers,
    lower,
)

#: how a layer's accuracy sensitivity is measured (see :func:`choose_float_layers`)
SENSITIVITY_METHODS: tuple[str, ...] = ("int8_alone", "float_alone")
#: whether a larger metric is better (``"max"``: accuracy) or a smaller one (``"min"``: error, loss)
METRIC_MODES: tuple[str, ...] = ("max", "min")
#: what a :class:`LayerTimer` is asked to time for one layer
LAYER_VARIANTS: tuple[str, ...] = ("float", "int8")
#: what a :class:`LayerTimer` is asked to time for the whole model (name :data:`MODEL`)
MODEL_VARIANTS: tuple[str, ...] = ("float_eager", "float_compiled", "int8", "mixed")
#: the name a :class:`LayerTimer` gets for whole-model timings
MODEL = "<model>"
#: the ``kind`` of the nodes :func:`_graph_layers` reads (the conv/linear ops of a converted graph)
_LAYER_OPS = ("conv1d", "conv2d", "conv3d", "linear", "conv_transpose2d")

_LOG = logging.getLogger(__name__)


class LayerTimer(Protocol):
    """Times one callable: ``timer(name, variant, run, x) -> milliseconds``.

    ``name`` is a layer name (``variant`` in :data:`LAYER_VARIANTS`) or :data:`MODEL` (``variant`` in
    :data:`MODEL_VARIANTS`); ``run(x)`` runs it (the first call compiles: warm up before timing). Inject one to
    make the speed rule deterministic (tests) or to time on another device; the default is
    :func:`median_timer`.
    """

    def __call__(self, name: str, variant: str, run: Callable[[Tensor], Any], x: Tensor) -> float: ...


def median_timer(repeats: int = 20, warmup: int = 3, threads: int | None = None) -> LayerTimer:
    """The default :class:`LayerTimer`: the median of ``repeats`` runs after ``warmup`` runs, under
    ``torch.inference_mode`` with ``threads`` intra-op threads
    (:func:`~lightning_optim.functional.compression_report.measure.measure_latency`)."""

    def timer(name: str, variant: str, run: Callable[[Tensor], Any], x: Tensor) -> float:
        del name, variant
        result = _measure_latency(
            run, x, repeats=repeats, warmup=max(1, warmup), threads=threads, fresh_copy=False
        )
        return float(result["median_ms"])

    return timer


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class LayerMeasurement:
    """What :func:`choose_float_layers` measured for one layer, and what it decided.

    Attributes:
        name: the layer (``model.named_modules()`` name).
        metric: the metric of the model measured for this layer (``"int8_alone"``: only this layer int8;
            ``"float_alone"``: only this layer float); ``None`` when not measured.
        sensitivity: how much int8 in this layer costs, in metric points (positive: worse): ``"int8_alone"``:
            float metric minus :attr:`metric`; ``"float_alone"``: :attr:`metric` minus the all-int8 metric
            (what keeping it float wins back); sign-adjusted for ``mode="min"``.
        float_ms: the layer alone in float (compiled), milliseconds; ``None`` when not timed.
        int8_ms: the layer alone in int8 (lowered), milliseconds; ``None`` when not timed.
        precision: ``"int8"`` or ``"float"`` in the plan.
        reason: why it is float (or why it was not timed), for the table.
    """

    name: str
    metric: float | None = None
    sensitivity: float | None = None
    float_ms: float | None = None
    int8_ms: float | None = None
    precision: str = "int8"
    reason: str = ""

    @property
    def speedup(self) -> float | None:
        """``float_ms / int8_ms`` (``None`` when not timed)."""
        if self.float_ms is None or self.int8_ms is None or self.int8_ms <= 0:
            return None
        return self.float_ms / self.int8_ms


@dataclass
class MixedPrecisionPlan:
    """The result of :func:`choose_float_layers`: which layers stay float, and the measurements behind it.

    Use it as ``Pt2eBackend(exclude=plan.exclude)``.

    Attributes:
        exclude: the module names to keep in float: the backend's own ``exclude`` first, then the layers chosen
            here (in model order).
        int8_layers: the layers that are int8 in the plan's int8 model (read from its graph).
        layers: one :class:`LayerMeasurement` per candidate layer, in model order.
        sensitivity_method: ``"int8_alone"`` or ``"float_alone"``.
        mode: ``"max"`` (a larger metric is better) or ``"min"``.
        max_accuracy_drop: the allowed drop of the metric against the float model.
        min_speedup: the int8 speed-up below which a layer stays float.
        metric_float: the float model's metric.
        metric_int8: the metric of the int8 model with every candidate layer int8.
        metric_plan: the metric of the plan's int8 model.
        met: whether the plan's drop is within ``max_accuracy_drop``.
        latency_ms: whole-model latency by :data:`MODEL_VARIANTS` key (empty without ``measure_latency``).
        batch_size: the batch size of the timings (``example_input``'s).
        threads: the intra-op thread count of the timings.
        steps: the greedy trail: ``(float layers added, metric)`` for each plan measured.
        notes: what else the user should know (layers left float by the quantizer itself, layers not timed).
        quantized_model: the plan's int8 model (uncompiled; not part of :meth:`to_dict`); ``None`` when no layer
            is left in int8.
    """

    exclude: list[str]
    int8_layers: list[str]
    layers: list[LayerMeasurement]
    sensitivity_method: str
    mode: str
    max_accuracy_drop: float
    min_speedup: float
    metric_float: float
    metric_int8: float
    metric_plan: float
    met: bool
    latency_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    threads: int | None = None
    steps: list[tuple[list[str], float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quantized_model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def float_layers(self) -> list[str]:
        """The candidate layers kept in float by this plan."""
        return [m.name for m in self.layers if m.precision == "float"]

    def drop(self, metric: float) -> float:
        """How much ``metric`` is worse than the float model's (positive: worse)."""
        return _drop(self.metric_float, metric, self.mode)

    def table(self) -> str:
        """The per-layer measurements as a Markdown table."""
        alone = "only this layer int8" if self.sensitivity_method == "int8_alone" else "only this layer float"
        headers = [
            "layer",
            f"metric ({alone})",
            "sensitivity",
            "float ms",
            "int8 ms",
            "int8 speed-up",
            "plan",
            "why",
        ]
        rows = [
            [
                f"`{m.name}`",
                format_cell(m.metric, "float3" if m.metric is None or abs(m.metric) < 100 else "float"),
                format_cell(m.sensitivity, "float3"),
                format_cell(m.float_ms, "float3"),
                format_cell(m.int8_ms, "float3"),
                format_cell(m.speedup, "float") + ("x" if m.speedup is not None else ""),
                m.precision,
                m.reason or "-",
            ]
            for m in self.layers
        ]
        return markdown_table(headers, rows, align=["left", *["right"] * 5, "left", "left"])

    def summary(self) -> str:
        """The plan against all-int8 and float as a Markdown table (metric, drop, latency, speed-up)."""
        reference = self.latency_ms.get("float_eager")

        def row(label: str, layers: str, metric: float | None, key: str | None) -> list[str]:
            ms = self.latency_ms.get(key) if key else None
            speed = reference / ms if ms and reference else None
            return [
                label,
                layers,
                format_cell(metric, "float3"),
                format_cell(self.drop(metric) if metric is not None else None, "float3"),
                format_cell(ms, "float3"),
                format_cell(speed, "float") + ("x" if speed is not None else ""),
            ]

        total = len(self.layers)
        rows = [
            row("float (eager)", f"{total} of {total}", self.metric_float, "float_eager"),
            row("float (torch.compile)", f"{total} of {total}", self.metric_float, "float_compiled"),
            row("int8 (every candidate)", f"0 of {total}", self.metric_int8, "int8"),
            row("mixed (this plan)", f"{len(self.float_layers)} of {total}", self.metric_plan, "mixed"),
        ]
        headers = [
            "model",
            "float candidates",
            "metric",
            "drop vs float",
            "latency ms",
            "speed-up vs float eager",
        ]
        table = markdown_table(headers, rows, align=["left", "right", "right", "right", "right", "right"])
        timed = (
            f"batch {self.batch_size}, {self.threads} thread(s)"
            if self.latency_ms
            else "latency not measured (measure_latency=False)"
        )
        verdict = "met" if self.met else "NOT met"
        return (
            f"{table}\n\nfloat layers: {', '.join(f'`{n}`' for n in self.exclude) or 'none'}; "
            f"max_accuracy_drop {self.max_accuracy_drop:g} {verdict}; min_speedup {self.min_speedup:g}x; "
            f"sensitivity {self.sensitivity_method!r}; {timed}."
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able; a callback's ``state_dict``), without the model; :meth:`from_dict` reads it."""
        data = asdict(self)  # deep copies every field, the model too: dropped below
        data.pop("quantized_model", None)
        data["layers"] = [asdict(m) for m in self.layers]
        data["steps"] = [[list(added), float(metric)] for added, metric in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixedPrecisionPlan:
        """The plan :meth:`to_dict` wrote (without the model)."""
        values = dict(data)
        values["layers"] = [LayerMeasurement(**m) for m in values.get("layers", [])]
        values["steps"] = [(list(added), float(metric)) for added, metric in values.get("steps", [])]
        values.pop("quantized_model", None)
        return cls(**values)


# ------------------------------------------------------------------------------------------- helpers
def _drop(reference: float, metric: float, mode: str) -> float:
    return reference - metric if mode == "max" else metric - reference


def _graph_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """``(int8 layers, float layers)`` of a converted PT2E model: the module paths of its conv/linear nodes
    whose weight is (not) an int8 tensor."""
    graph = model.graph_module if isinstance(model, Pt2eModule) else model
    if not isinstance(graph, torch.fx.GraphModule):
        raise TypeError(f"not a converted PT2E graph: {type(model).__name__}")
    kept = float_layers(graph)
    present = [_module_path(n) for n in graph.graph.nodes if _aten_name(n) in _LAYER_OPS]
    int8 = [p for p in dict.fromkeys(present) if p not in kept]
    return int8, list(dict.fromkeys(kept))


def _check_number(option: str, value: Any, minimum: float, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{option}` must be a number >= {minimum:g}, got {type(value).__name__} {value!r}.")
    number = float(value)
    if math.isnan(number) or number < minimum or (math.isinf(number) and not allow_inf):
        limit = f">= {minimum:g} (or math.inf)" if allow_inf else f"a finite number >= {minimum:g}"
        raise ValueError(f"`{option}` must be {limit}, got {value!r}.")
    return number


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]


class _Lazy:
    """A runner built on its first call (so that an injected timer that never runs it compiles nothing)."""

    def __init__(self, build: Callable[[], Callable[[Tensor], Any]]) -> None:
        self._build = build
        self._run: Callable[[Tensor], Any] | None = None

    def __call__(self, x: Tensor) -> Any:
        if self._run is None:
            self._run = self._build()
        return self._run(x)


def _compiled_float(module: nn.Module, x: Tensor) -> Callable[[Tensor], Any]:
    """``module`` (a copy, eval) compiled by inductor as the lowered int8 model is (freezing, static shape).

    The copy is captured by ``torch.export`` first: a ``GraphModule`` has code of its own, so compiling many
    layers of one class (every ``nn.Conv2d``) does not run into dynamo's recompile limit on the shared
    ``forward``; where export fails the copy is compiled as it is.
    """
    copied = copy.deepcopy(module).cpu().eval()
    try:
        graph: nn.Module = torch.export.export(copied, (x,), strict=False).module(check_guards=False)
    except Exception:  # noqa: BLE001 - compiled as it is
        graph = copied
    quiet_cpu_compiler_import()
    return LoweredInt8(torch.compile(graph, dynamic=False), graph, dynamic=False)


def _rebatch(inputs: Sequence[Tensor], like: Tensor) -> list[Tensor]:
    """``inputs`` concatenated and cut into batches of ``like``'s shape (the isolated layer is captured at a
    static batch, the one it is timed at); inputs of another shape are left out; ``[like]`` when none fits."""
    fitting = [t for t in inputs if t.dim() == like.dim() and t.shape[1:] == like.shape[1:]]
    if not fitting or like.dim() == 0:
        return [like]
    stacked = torch.cat(fitting)
    size = max(1, int(like.shape[0]))
    chunks = [c for c in torch.split(stacked, size) if c.shape[0] == size]
    return chunks or [like]


class _LayerInputs:
    """The input of each candidate layer: at ``example_input`` (what is timed) and on a few calibration batches
    (what the isolated int8 layer is calibrated on), captured by forward pre-hooks on the float model."""

    def __init__(self, model: nn.Module, names: Sequence[str], x: Tensor, batches: Sequence[Tensor]) -> None:
        self.example: dict[str, Tensor] = {}
        self.calibration: dict[str, list[Tensor]] = {n: [] for n in names}
        self.problem: dict[str, str] = {}
        recording: dict[str, Any] = {"into": None}
        handles = []

        def hook(name: str) -> Callable[..., None]:
            def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
                first = args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None
                if first is None:
                    self.problem[name] = "its input is not a single tensor"
                    return
                if recording["into"] == "example":
                    if name in self.example:
                        self.problem.setdefault(
                            name, "called more than once per forward (timed at its first call)"
                        )
                    else:
                        self.example[name] = first.detach().cpu()
                else:
                    self.calibration[name].append(first.detach().cpu())

            return record

        for name in names:
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
        try:
            with torch.no_grad():
                recording["into"] = "example"
                model(x)
                recording["into"] = "calibration"
                for batch in batches:
                    model(batch)
        finally:
            for handle in handles:
                handle.remove()


def check_plan_settings(
    *,
    max_accuracy_drop: float = 0.01,
    min_speedup: float = 1.0,
    sensitivity: str = "int8_alone",
    mode: str = "max",
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    layer_calibration_batches: int = 4,
) -> tuple[float, float]:
    """Check the settings of :func:`choose_float_layers` (a callback calls it in ``__init__``, so that a bad
    setting is refused before any epoch); returns ``(max_accuracy_drop, min_speedup)`` as floats.

    Raises:
        ValueError: ``max_accuracy_drop < 0`` or NaN, ``min_speedup < 0`` (or not finite), an unknown
            ``sensitivity`` or ``mode``, ``repeats``/``layer_calibration_batches``/``threads`` < 1, ``warmup`` < 0.
        TypeError: a setting that is not a number.
    """
    drop = _check_number("max_accuracy_drop", max_accuracy_drop, 0.0, allow_inf=True)
    speedup = _check_number("min_speedup", min_speedup, 0.0)
    check_choice("sensitivity", sensitivity, SENSITIVITY_METHODS, kind="mixed-precision")
    check_choice("mode", mode, METRIC_MODES, kind="mixed-precision")
    for option, value in (("repeats", repeats), ("layer_calibration_batches", layer_calibration_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{option}` must be an integer >= 1, got {value!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`warmup` must be an integer >= 0, got {warmup!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be an integer >= 1 or None (the current count), got {threads!r}.")
    return drop, speedup


# ------------------------------------------------------------------------------------------- the search
class _Planner:
    """One run of :func:`choose_float_layers` (the PTQ of each configuration, cached by its float layers)."""

    def __init__(
        self,
        model: nn.Module,
        make_backend: Callable[[Sequence[str]], Pt2eBackend],
        base_exclude: list[str],
        example_input: Tensor,
        batches: list[Any],
        to_input: Callable[[Any], Any] | None,
        evaluate: Callable[[nn.Module], float],
        mode: str,
    ) -> None:
        self.model = model
        self.make_backend = make_backend
        self.base_exclude = base_exclude
        self.example_input = example_input
        self.batches = batches
        self.to_input = to_input
        self.evaluate = evaluate
        self.mode = mode
        self.metrics: dict[frozenset[str], float] = {}
        #: the model's torch.export programs, made once for every configuration's preparation
        self.captures: dict[Any, Any] = {}
        self.last: tuple[frozenset[str], nn.Module | None] = (frozenset(), None)
        #: the layers int8 in the all-int8 model, and the float model's metric (set by the caller)
        self.quantized: list[str] = []
        self.metric_float = math.nan

    def score(self, model: nn.Module, what: str) -> float:
        value = self.evaluate(model)
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"`evaluate` must return a number, got {type(value).__name__} for {what}."
            ) from err
        if not math.isfinite(number):
            raise ValueError(f"`evaluate` returned {number} for {what}: a metric must be finite.")
        return number

    def quantize(self, float_layers_: Sequence[str]) -> nn.Module:
        """The int8 model with ``float_layers_`` (plus the backend's own ``exclude``) kept in float."""
        backend = self.make_backend([*self.base_exclude, *float_layers_])
        # one torch.export of the model per planning run: every configuration prepares a copy of that program
        # (set for this preparation only: a factory may hand out the same backend for other models later)
        backend.__dict__["_capture_cache"] = self.captures
        try:
            with warnings.catch_warnings():
                # a layer kept float leaves the pooling after it unannotated: what was asked for, said per op
                warnings.filterwarnings("ignore", message=r"The input of \w+ is not quantized, skip annotate")
                observed, _ = backend.prepare_ptq(self.model)
        finally:
            backend.__dict__.pop("_capture_cache", None)
        backend.calibrate(observed, self.batches, self.to_input)
        return backend.convert(observed)

    def all_float(self, float_layers_: Sequence[str]) -> bool:
        """Whether keeping ``float_layers_`` in float leaves no int8 layer (nothing for PT2E to convert)."""
        return set(self.quantized) <= set(float_layers_)

    def metric(self, float_layers_: Sequence[str], what: str) -> float:
        key = frozenset(float_layers_)
        if self.all_float(float_layers_):
            return self.metric_float  # no int8 layer left: the float model
        if key not in self.metrics:
            quantized = self.quantize(float_layers_)
            self.metrics[key] = self.score(quantized, what)
            self.last = (key, quantized)
        return self.metrics[key]

    def model_of(self, float_layers_: Sequence[str]) -> nn.Module:
        key = frozenset(float_layers_)
        if self.last[0] == key and self.last[1] is not None:
            return self.last[1]
        return self.quantize(float_layers_)


def _backend_maker(
    backend: Pt2eBackend | Callable[[Sequence[str]], Pt2eBackend], example_input: Tensor
) -> tuple[Callable[[Sequence[str]], Pt2eBackend], list[str]]:
    """``(make(extra float layers) -> backend, the backend's own exclude)``."""
    if isinstance(backend, Pt2eBackend):
        base = list(backend.exclude)

        def make(exclude: Sequence[str]) -> Pt2eBackend:
            made = copy.copy(backend)
            made.exclude = list(dict.fromkeys(exclude))
            made.set_example_input(example_input)
            return made

        return make, base
    if not callable(backend):
        raise TypeError(
            "`backend` must be a Pt2eBackend or a callable `exclude -> Pt2eBackend` (keeping layers in float "
            f"needs PT2E's `exclude`), got {type(backend).__name__}."
        )
    factory = backend

    def make_from_factory(exclude: Sequence[str]) -> Pt2eBackend:
        made = factory(list(dict.fromkeys(exclude)))
        if not isinstance(made, Pt2eBackend):
            raise TypeError(
                "the `backend` factory must return a Pt2eBackend (keeping layers in float needs PT2E's "
                f"`exclude`; the eager stack has none), got {type(made).__name__}."
            )
        missing = [n for n in exclude if n not in made.exclude]
        if missing:
            raise ValueError(
                f"the `backend` factory ignored the layers to keep in float {missing}: build the backend with "
                "`Pt2eBackend(exclude=exclude)`."
            )
        made.set_example_input(example_input)
        return made

    first = make_from_factory([])
    return make_from_factory, list(first.exclude)


def _time_layers(
    model: nn.Module,
    measurements: list[LayerMeasurement],
    make_backend: Callable[[Sequence[str]], Pt2eBackend],
    example_input: Tensor,
    batches: list[Tensor],
    timer: LayerTimer,
) -> list[str]:
    """Fill ``float_ms``/``int8_ms`` of each measurement (the layer alone, at its real input); returns notes."""
    inputs = _LayerInputs(model, [m.name for m in measurements], example_input, batches)
    notes = []
    for index, entry in enumerate(measurements, 1):
        x = inputs.example.get(entry.name)
        if x is None:
            entry.reason = f"not timed: {inputs.problem.get(entry.name, 'not called by forward')}"
            notes.append(f"`{entry.name}` {entry.reason}")
            continue
        layer = model.get_submodule(entry.name)
        calibration = _rebatch(inputs.calibration[entry.name], x)

        def build_int8(
            layer: nn.Module = layer, x: Tensor = x, calibration: list[Tensor] = calibration
        ) -> Any:
            backend = make_backend([])
            backend.exclude, backend.dynamic_batch = [], False
            backend.set_example_input(x)
            observed, _ = backend.prepare_ptq(nn.Sequential(copy.deepcopy(layer)))
            backend.calibrate(observed, calibration)
            return lower(backend.convert(observed), x, dynamic=False)

        def build_float(layer: nn.Module = layer, x: Tensor = x) -> Any:
            return _compiled_float(layer, x)

        try:
            entry.float_ms = float(timer(entry.name, "float", _Lazy(build_float), x))
            entry.int8_ms = float(timer(entry.name, "int8", _Lazy(build_int8), x))
        except Exception as err:  # noqa: BLE001 - a layer that cannot be compiled alone is not timed, said why
            entry.float_ms = entry.int8_ms = None
            entry.reason = f"not timed: {_first_line(err)}"
            notes.append(f"`{entry.name}` {entry.reason}")
            _LOG.warning("mixed precision: layer %s %s", entry.name, entry.reason)
        if inputs.problem.get(entry.name) and entry.float_ms is not None:
            notes.append(f"`{entry.name}`: {inputs.problem[entry.name]}")
        _LOG.info(
            "mixed precision: timed layer %d/%d %s: float %s ms, int8 %s ms",
            index,
            len(measurements),
            entry.name,
            entry.float_ms,
            entry.int8_ms,
        )
    return notes


def _time_models(
    model: nn.Module,
    int8: nn.Module | None,
    mixed: nn.Module | None,
    same: bool,
    example_input: Tensor,
    timer: LayerTimer,
) -> tuple[dict[str, float], list[str]]:
    """Whole-model latency: float eager, float compiled, all-int8 lowered, the plan lowered."""
    float_model = copy.deepcopy(model).cpu().eval()
    runners: dict[str, Callable[[], Callable[[Tensor], Any]]] = {
        "float_eager": lambda: float_model,
        "float_compiled": lambda: _compiled_float(float_model, example_input),
    }
    if int8 is not None:
        runners["int8"] = lambda: lower(int8, example_input)
    if mixed is not None and not same:
        runners["mixed"] = lambda: lower(mixed, example_input)
    latency: dict[str, float] = {}
    notes: list[str] = []
    for variant, build in runners.items():
        try:
            latency[variant] = float(timer(MODEL, variant, _Lazy(build), example_input))
        except Exception as err:  # noqa: BLE001 - reported in the plan's notes
            notes.append(f"whole model `{variant}` not timed: {_first_line(err)}")
            _LOG.warning("mixed precision: %s", notes[-1])
    if mixed is None and "float_compiled" in latency:
        latency["mixed"] = latency["float_compiled"]  # no int8 layer left: the plan is the float model
    elif same and "int8" in latency:
        latency["mixed"] = latency["int8"]
    return latency, notes


def choose_float_layers(
    model: nn.Module,
    backend: Pt2eBackend | Callable[[Sequence[str]], Pt2eBackend],
    example_input: Tensor,
    calibration_batches: Iterable[Any],
    evaluate: Callable[[nn.Module], float],
    *,
    max_accuracy_drop: float = 0.01,
    min_speedup: float = 1.0,
    layers: Sequence[str] | None = None,
    sensitivity: str = "int8_alone",
    mode: str = "max",
    measure_latency: bool = True,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    timer: LayerTimer | None = None,
    to_input: Callable[[Any], Any] | None = None,
    layer_calibration_batches: int = 4,
) -> MixedPrecisionPlan:
    """Choose, by measurement, the layers that stay in float while the rest of ``model`` runs int8 (PT2E PTQ).

    1. The float model and the all-int8 model (every layer the backend quantizes) are evaluated; the candidates
       are the conv/linear layers that are int8 in the latter (or ``layers``).
    2. Per candidate, the accuracy sensitivity (``sensitivity``) and, with ``measure_latency``, the CPU gain of
       int8 (the layer alone, float vs int8, at its real input shape) are measured.
    3. Greedy plan (Wu et al. 2020's partial quantization): the layers whose int8 speed-up is below
       ``min_speedup`` are kept float; then, most sensitive first, layers are added to the float ones until the
       plan's int8 model is within ``max_accuracy_drop`` of the float model (or every candidate is float).

    Every plan is a real PTQ int8 model calibrated on ``calibration_batches`` and scored by ``evaluate``.

    Args:
        model: the float network (left unchanged; a CPU copy is captured).
        backend: a :class:`~lightning_optim.functional.quantization.pt2e.Pt2eBackend` (its settings are kept,
            its ``exclude`` stays float and is part of the plan) or a factory ``exclude -> Pt2eBackend`` that
            builds one keeping ``exclude`` in float.
        example_input: an input batch at the batch size you serve: the capture, and every timing, use it.
        calibration_batches: the batches each PTQ observes (inputs, or batches that ``to_input`` maps to
            inputs); read once into a list.
        evaluate: ``evaluate(model) -> float``: the metric of a model (top-1 accuracy on a held-out split, say),
            called with the float model and with converted (uncompiled) int8 models on the CPU. With
            ``mode="max"`` larger is better.
        max_accuracy_drop: the largest drop of the metric against the float model the plan may have, in the
            metric's units (0.01 = 1 point of an accuracy in [0, 1]); ``math.inf`` skips the sensitivity
            pass (speed rule only).
        min_speedup: a layer whose int8 version is less than this many times faster than its float version
            stays float (``1.0``: int8 not faster; ``0``: never for speed).
        layers: the candidate layers (default: every layer the backend quantizes); others stay as the backend
            has them.
        sensitivity: ``"int8_alone"`` (default: only this layer int8, the rest float; sensitivity = float
            metric - that metric) or ``"float_alone"`` (only this layer float; sensitivity = that metric -
            all-int8 metric).
        mode: ``"max"`` (accuracy: larger is better) or ``"min"`` (error, loss).
        measure_latency: time each layer and the whole models; ``False``: no timing, no speed rule.
        repeats: timed runs per measurement (median).
        warmup: untimed runs before each measurement (the first compiles).
        threads: intra-op threads for every timing (default: the current count, fixed for the whole run).
        timer: a :class:`LayerTimer` instead of :func:`median_timer` (inject one for deterministic tests).
        to_input: maps a calibration batch to the model input (e.g. ``lambda b: b[0]``).
        layer_calibration_batches: calibration batches the isolated int8 layers are calibrated on (timing only).

    Returns:
        the :class:`MixedPrecisionPlan` (``Pt2eBackend(exclude=plan.exclude)`` builds it).

    Raises:
        ValueError: ``max_accuracy_drop < 0`` (or NaN), ``min_speedup < 0``, ``repeats < 1``, an unknown
            ``sensitivity`` or ``mode``, a ``layers`` name the backend does not quantize in this model (the
            message lists those it does), no calibration batch, a non-finite metric.
        TypeError: a backend that is not PT2E, or ``evaluate`` returning something that is not a number.
        QuantizationError: the model cannot be captured or converted by the backend, or a plan's int8 model
            does not keep in float the layers the plan names.

    Example::

        backend = Pt2eBackend()
        plan = choose_float_layers(model, backend, x, calibration, lambda m: top1(m, val_loader),
                                   max_accuracy_drop=0.005)
        print(plan.table())
        print(plan.summary())
        final = Pt2eBackend(example_input=x, exclude=plan.exclude)
    """
    max_accuracy_drop, min_speedup = check_plan_settings(
        max_accuracy_drop=max_accuracy_drop,
        min_speedup=min_speedup,
        sensitivity=sensitivity,
        mode=mode,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        layer_calibration_batches=layer_calibration_batches,
    )
    if not isinstance(example_input, Tensor):
        raise TypeError(
            f"`example_input` must be a tensor (an input batch), got {type(example_input).__name__}."
        )
    if not callable(evaluate):
        raise TypeError(f"`evaluate` must be a callable `model -> float`, got {type(evaluate).__name__}.")
    if layers is not None and (isinstance(layers, str) or len(layers) == 0):
        raise ValueError(f"`layers` must be a non-empty list of layer names or None (all), got {layers!r}.")
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("`calibration_batches` is empty: PTQ needs at least one batch to observe.")
    example_input = example_input.detach().cpu()
    threads = threads if threads is not None else torch.get_num_threads()

    float_model = copy.deepcopy(model).cpu().eval()
    if layers is not None:  # names that are no conv/linear layer at all: refused before any PTQ
        for name in layers:
            check_choice("layers", name, quantizable_layers(float_model), kind="mixed-precision")
        if len(set(layers)) != len(layers):
            raise ValueError(f"`layers` names a layer twice: {list(layers)}.")
    make_backend, base_exclude = _backend_maker(backend, example_input)
    planner = _Planner(
        float_model, make_backend, base_exclude, example_input, batches, to_input, evaluate, mode
    )

    with num_threads(threads):
        metric_float = planner.score(float_model, "the float model")
        all_int8 = planner.quantize([])
        metric_int8 = planner.score(all_int8, "the all-int8 model")
        planner.metrics[frozenset()] = metric_int8
        quantized, left_float = _graph_layers(all_int8)
        planner.quantized, planner.metric_float = quantized, metric_float
        candidates = [n for n in quantizable_layers(float_model) if n in set(quantized)]
        named = {n for n, _ in float_model.named_modules() if n}
        excludable = [n for n in quantized if n in named]  # int8 layers `exclude` can name
        notes = []
        by_backend = [
            n for n in quantizable_layers(float_model) if n in set(left_float) and n not in base_exclude
        ]
        if by_backend:
            notes.append(f"left in float by the quantizer itself (not candidates): {', '.join(by_backend)}")
        if layers is not None:
            for (
                name
            ) in layers:  # a conv/linear layer the backend keeps in float (its `exclude`, or the quantizer)
                check_choice(
                    "layers",
                    name,
                    candidates,
                    kind="mixed-precision",
                    hint=" (the layers this backend quantizes in this model; the others stay float anyway)",
                )
            chosen = set(layers)
            candidates = [n for n in candidates if n in chosen]
        if not candidates:
            raise QuantizationError(
                f"{type(model).__name__}: the backend quantizes no layer of this model, nothing to choose."
            )
        measurements = [LayerMeasurement(name) for name in candidates]

        # (a) accuracy sensitivity
        if not math.isinf(max_accuracy_drop):
            for index, entry in enumerate(measurements, 1):
                if sensitivity == "int8_alone":
                    others = [n for n in excludable if n != entry.name]
                    entry.metric = planner.metric(others, f"only `{entry.name}` int8")
                    entry.sensitivity = _drop(metric_float, entry.metric, mode)
                else:
                    entry.metric = planner.metric([entry.name], f"only `{entry.name}` float")
                    entry.sensitivity = -_drop(metric_int8, entry.metric, mode)
                _LOG.info(
                    "mixed precision: sensitivity %d/%d %s: metric %.4f, sensitivity %+.4f",
                    index,
                    len(measurements),
                    entry.name,
                    entry.metric,
                    entry.sensitivity,
                )

        # (b) CPU gain of int8, the layer alone
        if measure_latency:
            run_timer = timer if timer is not None else median_timer(repeats, warmup, threads)
            inputs = [b if to_input is None else to_input(b) for b in batches[:layer_calibration_batches]]
            notes += _time_layers(float_model, measurements, make_backend, example_input, inputs, run_timer)

        # (c) the greedy plan
        chosen_float: list[str] = []
        for entry in measurements:
            speed = entry.speedup
            if measure_latency and speed is not None and speed < min_speedup:
                entry.precision = "float"
                entry.reason = f"no CPU gain: int8 {speed:.2f}x < min_speedup {min_speedup:g}x"
                chosen_float.append(entry.name)
        steps: list[tuple[list[str], float]] = [([], metric_int8)]
        metric_plan = metric_int8
        if chosen_float:
            metric_plan = planner.metric(chosen_float, "the plan (speed rule)")
            steps.append((list(chosen_float), metric_plan))
        order = sorted(
            (m for m in measurements if m.precision == "int8" and m.sensitivity is not None),
            key=lambda m: -m.sensitivity,  # type: ignore[operator] - filtered above; stable: model order on ties
        )
        rank = 0
        while _drop(metric_float, metric_plan, mode) > max_accuracy_drop and order:
            entry = order.pop(0)
            rank += 1
            before = _drop(metric_float, metric_plan, mode)
            chosen_float.append(entry.name)
            metric_plan = planner.metric(chosen_float, f"the plan (+ `{entry.name}`)")
            steps.append(([entry.name], metric_plan))
            entry.precision = "float"
            entry.reason = f"sensitive (rank {rank}): plan drop {before:.4g} -> {_drop(metric_float, metric_plan, mode):.4g}"
        met = _drop(metric_float, metric_plan, mode) <= max_accuracy_drop

        # the plan's own int8 model: its float layers read back from the graph
        ordered_float = [n for n in candidates if n in set(chosen_float)]
        exclude = list(dict.fromkeys([*base_exclude, *ordered_float]))
        int8_left = [n for n in quantized if n not in set(ordered_float)]
        plan_model: nn.Module | None = None
        plan_int8: list[str] = []
        if int8_left:
            plan_model = planner.model_of(ordered_float) if ordered_float else all_int8
            plan_int8, plan_float = _graph_layers(plan_model)
            wrong = [n for n in ordered_float if n not in plan_float]
            if wrong:
                raise QuantizationError(
                    f"the backend did not keep {wrong} in float although they are in its `exclude`: the plan "
                    "would not be what was measured."
                )
        else:
            notes.append(
                "every candidate layer is float in the plan: int8 gains nothing here; keep the model float"
            )

        latency: dict[str, float] = {}
        if measure_latency:
            run_timer = timer if timer is not None else median_timer(repeats, warmup, threads)
            latency, timing_notes = _time_models(
                float_model, all_int8, plan_model, not ordered_float, example_input, run_timer
            )
            notes += timing_notes

    plan = MixedPrecisionPlan(
        exclude=exclude,
        int8_layers=plan_int8,
        layers=measurements,
        sensitivity_method=sensitivity,
        mode=mode,
        max_accuracy_drop=max_accuracy_drop,
        min_speedup=min_speedup,
        metric_float=metric_float,
        metric_int8=metric_int8,
        metric_plan=metric_plan,
        met=met,
        latency_ms=latency,
        batch_size=int(example_input.shape[0]) if example_input.dim() > 0 else None,
        threads=threads,
        steps=steps,
        notes=notes,
        quantized_model=plan_model,
    )
    _LOG.info("mixed precision plan:\n%s", plan.summary())
    return plan


__all__ = [
    "LAYER_VARIANTS",
    "METRIC_MODES",
    "MODEL",
    "MODEL_VARIANTS",
    "SENSITIVITY_METHODS",
    "LayerMeasurement",
    "LayerTimer",
    "MixedPrecisionPlan",
    "check_plan_settings",
    "choose_float_layers",
    "median_timer",
]
