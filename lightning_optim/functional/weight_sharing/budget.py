"""Mixed precision under a size budget: per-layer bit widths (and sparsities) chosen by measured sensitivity.

The question a user asks is "fit this in 20 KB". Every shared layer has a few choices, ``(bits, sparsity)``
pairs: its bit width (``2**bits`` centroids) and, where pruning runs, how many more of its weights are pruned
by magnitude. Each choice has

- a **size**: the exact bytes the layer takes in the ``.lws`` artifact once clustered that way (codebook,
  entropy-coded indices and positions; :func:`layer_choices` encodes the layer to measure it), and
- a **cost**: the damage it does, measured one of two ways (``sensitivity``):

  - ``"hessian"``: HAWQ-V2's sensitivity (Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of
    Neural Networks", NeurIPS 2020, eq. 3): ``mean(diag H) * ||W - Q(W)||^2``, the average Hessian trace of the
    layer's loss (Hutchinson's estimator, :func:`hessian_traces`) times the squared perturbation of the choice;
  - ``"loss"``: the increase of the held-out loss when this layer alone is clustered this way and every other
    layer is left as it is (measured directly; no second-order approximation, one evaluation per choice).

:func:`solve_budget` then picks one choice per layer minimizing the summed cost under the byte budget (a
multiple-choice knapsack, solved exactly by dynamic programming over the budget in small units, sizes rounded
up so the plan never exceeds it). Layers fixed by the user (a per-layer ``bits`` override) have one choice.
A budget below the smallest size the choices allow is refused, with that size (:class:`BudgetError`).

An average bit width is the same problem with the sizes counted as ``bits * non-zero weights / 8``
(:func:`average_bits_budget`).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.functional.weight_sharing.artifact import size_breakdown
from lightning_optim.functional.weight_sharing.codebooks import (
    BITS,
    check_bits,
    cluster_weight,
    shared_values,
)

#: how the cost of a choice is measured (module docstring)
SENSITIVITIES: tuple[str, ...] = ("hessian", "loss")
#: the budget is split into at most this many units for the dynamic programme
DP_UNITS = 4096


class BudgetError(ValueError):
    """A budget no choice of bit widths and sparsities meets (the message gives the smallest size)."""


@dataclass(frozen=True)
class Choice:
    """One way to store one layer: ``bits`` per centroid index, at ``sparsity`` (fraction of zeros)."""

    bits: int
    sparsity: float
    #: the layer's bytes in the artifact this way
    size: int
    #: ``||W - Q(W)||^2`` of this choice
    perturbation: float
    #: the non-zero weights left
    nonzero: int


@dataclass
class LayerChoices:
    """A layer's choices and what its cost is weighted by."""

    name: str
    numel: int
    choices: list[Choice]
    #: HAWQ-V2's average Hessian trace of the layer (1.0 until measured)
    trace: float = 1.0
    #: measured cost per choice (``sensitivity="loss"``), keyed by ``(bits, sparsity)``
    measured: dict[tuple[int, float], float] = field(default_factory=dict)

    def cost(self, choice: Choice) -> float:
        """The choice's cost: the measured loss increase, else the trace-weighted perturbation."""
        key = (choice.bits, choice.sparsity)
        if key in self.measured:
            return self.measured[key]
        return self.trace * choice.perturbation


@dataclass
class BudgetPlan:
    """What :func:`solve_budget` chose."""

    bits: dict[str, int]
    sparsity: dict[str, float]
    #: the chosen layers' bytes, summed (the artifact adds ``fixed_bytes``: header, biases, other tensors)
    layer_bytes: int
    fixed_bytes: int
    cost: float

    @property
    def total_bytes(self) -> int:
        return self.layer_bytes + self.fixed_bytes

    def table(self) -> str:
        """A markdown table of the plan (layer, bits, sparsity)."""
        lines = ["| layer | bits | sparsity |", "|---|---|---|"]
        for name, b in self.bits.items():
            lines.append(f"| {name} | {b} | {100 * self.sparsity[name]:.1f}% |")
        return "\n".join(lines)


def check_sensitivity(sensitivity: str) -> str:
    return check_choice("sensitivity", sensitivity, SENSITIVITIES)


def check_budget(size_budget_bytes: int | None, average_bits: float | None) -> None:
    """At most one of the two, each in range (a budget in bytes >= 1, an average in (0, 8])."""
    if size_budget_bytes is not None and average_bits is not None:
        raise ValueError("Give `size_budget_bytes` or `average_bits`, not both.")
    if size_budget_bytes is not None and (
        isinstance(size_budget_bytes, bool) or not isinstance(size_budget_bytes, int) or size_budget_bytes < 1
    ):
        raise ValueError(
            f"`size_budget_bytes` must be a whole number of bytes >= 1, got {size_budget_bytes!r}."
        )
    if average_bits is not None and not (
        isinstance(average_bits, (int, float))
        and not isinstance(average_bits, bool)
        and 0 < average_bits <= 8
    ):
        raise ValueError(f"`average_bits` must be a number in (0, 8], got {average_bits!r}.")


def prune_smallest(weight: Tensor, sparsity: float) -> Tensor:
    """``weight`` with its smallest-magnitude entries zeroed to ``sparsity`` (never fewer zeros than it has)."""
    w = weight.detach()
    target = int(round(sparsity * w.numel()))
    zeros = int((w == 0).sum())
    if target <= zeros:
        return w.clone()
    order = torch.argsort(w.abs().flatten(), stable=True)
    out = w.clone().flatten()
    out[order[:target]] = 0
    return out.view_as(w)


def clustered(weight: Tensor, bits: int, sparsity: float = 0.0, init: str = "linear") -> Tensor:
    """``weight`` pruned to ``sparsity`` (magnitude; existing zeros kept) and shared through ``2**bits``
    centroids (k-means of its non-zero entries): the values the artifact would store."""
    pruned = prune_smallest(weight, sparsity)
    shared = cluster_weight(pruned, bits, init)
    return shared_values(shared.codebook, shared.index).to(weight.dtype)


def layer_choices(
    named_weights: Mapping[str, Tensor],
    bits: Iterable[int] = BITS,
    sparsities: Iterable[float] | None = None,
    overrides: Mapping[str, int] | None = None,
    init: str = "linear",
    codebook_dtype: str = "float16",
) -> list[LayerChoices]:
    """Every layer's choices with their exact artifact sizes and perturbations.

    Args:
        named_weights: the tensors to share, by state-dict name (pruned ones hold exact zeros).
        bits: the bit widths to consider (each in 1..8); a width with more centroids than a layer has non-zero
            weights is skipped for that layer.
        sparsities: extra sparsities to consider (fractions in [0, 1)); ``None``: only each layer's own. A choice
            never has fewer zeros than the layer already has.
        overrides: per-layer bit widths fixed by the user (by exact state-dict name): those layers have one
            bit width.
        init: the k-means initialisation.
        codebook_dtype: the codebooks' storage type in the artifact (as :func:`save_shared`).

    Raises:
        ValueError: a bit width outside 1..8, a sparsity outside [0, 1), an override naming no given layer, or a
            layer for which no choice is possible (fewer non-zero weights than 2 centroids).
    """
    widths = sorted({check_bits(b) for b in bits})
    overrides = dict(overrides or {})
    for name, b in overrides.items():
        check_choice("bits", name, sorted(named_weights), kind="per-layer")
        check_bits(b)
    extra = sorted({float(s) for s in (sparsities or ())})
    for s in extra:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"`sparsities` must lie in [0, 1), got {s}.")
    out = []
    for name, weight in named_weights.items():
        w = weight.detach().float().cpu()
        own = float((w == 0).sum()) / w.numel()
        levels = sorted({round(own, 6), *[s for s in extra if s > own]})
        layer_bits = [overrides[name]] if name in overrides else widths
        choices = []
        for s in levels:
            pruned = prune_smallest(w, s)
            nonzero = int((pruned != 0).sum())
            for b in layer_bits:
                if nonzero < (1 << b):
                    if name in overrides:
                        raise ValueError(
                            f"The per-layer `bits` {b} of {name!r} asks {1 << b} centroids, but it has "
                            f"{nonzero} non-zero weights at sparsity {100 * s:.1f}%: use at most "
                            f"{max(1, int(math.log2(max(nonzero, 1))))} bits."
                        )
                    continue
                values = clustered(pruned, b)
                size = size_breakdown({name: values}, codebook_dtype=codebook_dtype).entries[0].total
                perturbation = float(((w - values) ** 2).sum())
                choices.append(Choice(b, s, int(size), perturbation, nonzero))
        if not choices:
            raise ValueError(f"{name!r} has fewer than 2 non-zero weights: leave it out of weight sharing.")
        out.append(LayerChoices(name, w.numel(), choices))
    return out


def average_bits_budget(
    layers: Sequence[LayerChoices], average_bits: float
) -> tuple[list[LayerChoices], int]:
    """The layers with sizes counted as index bits (``bits * non-zero / 8``, rounded up) and the budget that an
    average of ``average_bits`` per non-zero weight allows."""
    recounted = []
    for layer in layers:
        choices = [
            Choice(c.bits, c.sparsity, math.ceil(c.bits * c.nonzero / 8), c.perturbation, c.nonzero)
            for c in layer.choices
        ]
        recounted.append(LayerChoices(layer.name, layer.numel, choices, layer.trace, dict(layer.measured)))
    own = sum(max(c.nonzero for c in layer.choices) for layer in layers)
    return recounted, int(math.floor(average_bits * own / 8))


def smallest_size(layers: Sequence[LayerChoices]) -> int:
    """The fewest bytes the layers can take (each at its smallest choice)."""
    return sum(min(c.size for c in layer.choices) for layer in layers)


def solve_budget(layers: Sequence[LayerChoices], budget_bytes: int, fixed_bytes: int = 0) -> BudgetPlan:
    """One choice per layer minimizing the summed cost with the layers' bytes within ``budget_bytes - fixed_bytes``.

    Exact up to the budget's discretization (at most :data:`DP_UNITS` units; sizes are rounded up to whole
    units, so the plan's true size never exceeds the budget).

    Raises:
        BudgetError: the budget is below ``fixed_bytes`` plus the smallest size of the layers.
    """
    smallest = smallest_size(layers) + fixed_bytes
    if budget_bytes < smallest:
        raise BudgetError(
            f"`size_budget_bytes`={budget_bytes} is below the smallest artifact these settings allow: {smallest} "
            f"bytes ({fixed_bytes} for the header and unshared tensors, the rest with every shared layer at its "
            "fewest bits and highest allowed sparsity). Raise the budget, allow fewer `bits` or more sparsity."
        )
    room = budget_bytes - fixed_bytes
    unit = max(1, math.ceil(room / DP_UNITS))
    capacity = room // unit
    inf = float("inf")
    # best[c]: the least cost of the layers so far within c units; choice[i][c]: the choice of layer i there
    best = [0.0] * (capacity + 1)
    picks: list[list[int]] = []
    for layer in layers:
        units = [math.ceil(c.size / unit) for c in layer.choices]
        costs = [layer.cost(c) for c in layer.choices]
        new = [inf] * (capacity + 1)
        pick = [-1] * (capacity + 1)
        for c in range(capacity + 1):
            for j, (u, cost) in enumerate(zip(units, costs)):
                if u <= c and best[c - u] + cost < new[c]:
                    new[c] = best[c - u] + cost
                    pick[c] = j
        best = new
        picks.append(pick)
    if best[capacity] == inf:  # rounding sizes up to units can lose a plan that fits only byte-exactly
        raise BudgetError(
            f"`size_budget_bytes`={budget_bytes} is too tight to plan with units of {unit} bytes; the smallest "
            f"artifact these settings allow is {smallest} bytes: give a budget a little above it."
        )
    chosen: list[Choice] = []
    c = capacity
    for layer, pick in zip(reversed(layers), reversed(picks)):
        j = pick[c]
        choice = layer.choices[j]
        chosen.append(choice)
        c -= math.ceil(choice.size / unit)
    chosen.reverse()
    return BudgetPlan(
        bits={layer.name: ch.bits for layer, ch in zip(layers, chosen)},
        sparsity={layer.name: ch.sparsity for layer, ch in zip(layers, chosen)},
        layer_bytes=sum(ch.size for ch in chosen),
        fixed_bytes=fixed_bytes,
        cost=float(best[capacity]),
    )


def hessian_traces(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, object], Tensor],
    batches: Iterable[object],
    names: Sequence[str],
    samples: int = 16,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """HAWQ-V2's average Hessian trace per parameter, ``Tr(H_i) / n_i``, by Hutchinson's estimator
    (``E[v^T H_ii v]`` over Rademacher ``v``, one layer's block at a time), averaged over ``batches`` and
    ``samples`` draws each. A block whose estimate comes out negative (not positive semi-definite there, or
    noise) weighs ``1e-3`` of the largest, never zero: no layer is free to damage.

    Args:
        model: the network (its parameters are not changed).
        loss_fn: ``loss_fn(model, batch)``, a scalar loss twice differentiable in the parameters.
        batches: the calibration batches (a few suffice).
        names: the parameters (``model.named_parameters()`` names) to measure.
        samples: Rademacher draws per batch.
        generator: the random source of the draws.
    """
    params = dict(model.named_parameters())
    for name in names:
        check_choice("names", name, sorted(params), kind="parameter")
    chosen = [params[n] for n in names]
    sums = {n: 0.0 for n in names}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, chosen, create_graph=True)
            for _ in range(samples):
                # one layer at a time (v zero elsewhere): v_i^T H_ii v_i, an unbiased estimate of the block's
                # trace without the cross-layer terms that make a shared v's estimate noisy (and often negative)
                for i, (n, p) in enumerate(zip(names, chosen)):
                    v = (
                        torch.randint(0, 2, p.shape, generator=generator, device="cpu").to(p.device, p.dtype)
                        * 2
                        - 1
                    )
                    (hv,) = torch.autograd.grad(
                        grads[i], p, grad_outputs=v, retain_graph=True, allow_unused=True
                    )
                    sums[n] += 0.0 if hv is None else float((v * hv).sum())
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("`hessian_traces` needs at least one calibration batch.")
    means = {n: sums[n] / count / params[n].numel() for n in names}
    floor = 1e-3 * max(max(means.values()), 1e-12)
    return {n: max(v, floor) for n, v in means.items()}


def measure_loss_costs(
    model: nn.Module,
    layers: Sequence[LayerChoices],
    evaluate: Callable[[nn.Module], float],
) -> None:
    """Fill each layer's ``measured`` costs: the held-out loss (``evaluate(model)``) with that layer alone
    clustered per choice, minus the loss as it is. The model's values are restored afterwards."""
    base = evaluate(model)
    with torch.no_grad():
        for layer in layers:
            target = _state_tensor(model, layer.name)
            original = target.detach().clone()
            try:
                for choice in layer.choices:
                    target.copy_(clustered(original, choice.bits, choice.sparsity).to(target.dtype))
                    layer.measured[(choice.bits, choice.sparsity)] = max(evaluate(model) - base, 0.0)
            finally:
                target.copy_(original)


def _state_tensor(model: nn.Module, name: str) -> Tensor:
    tensors = model.state_dict(keep_vars=True)
    check_choice("layer", name, sorted(tensors), kind="shared")
    return tensors[name]


def artifact_bytes(
    state: Mapping[str, Tensor],
    codebook_dtype: str = "float16",
    other_dtype: str | None = None,
    metadata: Mapping[str, object] | None = None,
    bound: bool = False,
) -> int:
    """The exact size of the ``.lws`` artifact of ``state`` (nothing is written); with ``bound``, the size it can
    reach whatever values its unshared tensors take later (their raw bytes, not what LZMA saved on them now)."""
    breakdown = size_breakdown(
        dict(state), codebook_dtype=codebook_dtype, other_dtype=other_dtype, metadata=metadata
    )
    return breakdown.total + (breakdown.raw_saved if bound else 0)


def fit_budget(
    model: nn.Module,
    names: Sequence[str],
    size_budget_bytes: int,
    *,
    bits: Iterable[int] = BITS,
    sparsities: Iterable[float] | None = None,
    overrides: Mapping[str, int] | None = None,
    traces: Mapping[str, float] | None = None,
    init: str = "linear",
    codebook_dtype: str = "float16",
    other_dtype: str | None = None,
    metadata: Mapping[str, object] | None = None,
    max_rounds: int = 6,
) -> BudgetPlan:
    """The plan whose whole artifact (shared layers, every other tensor, header) fits ``size_budget_bytes``.

    The other tensors and the header are first estimated as one fixed cost; the plan is then checked by encoding
    the whole clustered state, and re-planned with the overshoot taken off the budget until it fits (LZMA on the
    raw tensors and the header do not add up exactly). The unshared tensors count at their raw size (what LZMA
    saves on them now is not counted on), so that training them afterwards (biases, norms; trained centroids keep
    every index and position) cannot take the file over the budget.

    Args:
        model: the network (not changed).
        names: the state-dict names of the tensors to share.
        size_budget_bytes: the budget for the whole ``.lws`` file.
        traces: HAWQ-V2 traces by name (:func:`hessian_traces`); ``None``: every layer weighted 1 (plain
            perturbation).
        bits: the bit widths to consider (as :func:`layer_choices`).
        sparsities: extra sparsities to consider (as :func:`layer_choices`).
        overrides: per-layer bit widths fixed by the user (as :func:`layer_choices`).
        init: the k-means initialisation.
        codebook_dtype: the codebooks' storage type (as :func:`layer_choices`).
        other_dtype: the unshared float tensors' storage type (as
            :func:`~lightning_optim.functional.weight_sharing.save_shared`).
        metadata: the header metadata the file will have (it is counted: it is in the header).
        max_rounds: re-plans at most, with the overshoot taken off the budget.

    Raises:
        BudgetError: below the smallest artifact the settings allow (the message gives it).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name in names:
        check_choice("layer", name, sorted(state), kind="shared")
    layers = layer_choices({n: state[n] for n in names}, bits, sparsities, overrides, init, codebook_dtype)
    for layer in layers:
        layer.trace = 1.0 if traces is None else float(traces[layer.name])
    rest = {k: v for k, v in state.items() if k not in set(names)}
    fixed = artifact_bytes(rest, codebook_dtype, other_dtype, metadata, bound=True) if rest else 0
    slack = 0
    plan = None
    for _ in range(max_rounds):
        try:
            plan = solve_budget(layers, size_budget_bytes - slack, fixed)
        except BudgetError:
            if plan is None or slack == 0:
                raise
            break
        shared = dict(state)
        for name in names:
            shared[name] = clustered(state[name], plan.bits[name], plan.sparsity[name], init).to(
                state[name].dtype
            )
        total = artifact_bytes(shared, codebook_dtype, other_dtype, metadata, bound=True)
        plan.fixed_bytes = total - plan.layer_bytes
        if total <= size_budget_bytes:
            return plan
        slack += total - size_budget_bytes
    raise BudgetError(
        f"`size_budget_bytes`={size_budget_bytes}: no plan fits once the whole file is encoded (the closest was "
        f"{plan.total_bytes if plan else 'none'} bytes); raise the budget a little."
    )


def apply_plan(model: nn.Module, plan: BudgetPlan, init: str = "linear") -> None:
    """Prune and cluster ``model``'s layers in place as ``plan`` says (post-training weight sharing)."""
    with torch.no_grad():
        for name, b in plan.bits.items():
            target = _state_tensor(model, name)
            target.copy_(clustered(target.detach(), b, plan.sparsity[name], init).to(target.dtype))


def size_accuracy_curve(
    model: nn.Module,
    names: Sequence[str],
    budgets: Iterable[int],
    evaluate: Callable[[nn.Module], float],
    *,
    traces: Mapping[str, float] | None = None,
    bits: Iterable[int] = BITS,
    sparsities: Iterable[float] | None = None,
    init: str = "linear",
    codebook_dtype: str = "float16",
    other_dtype: str | None = None,
    metadata: Mapping[str, object] | None = None,
) -> list[dict]:
    """What each budget costs: post-training sharing of ``model`` fitted to each budget (:func:`fit_budget`),
    the exact artifact size of the shared copy and ``evaluate(copy)`` (e.g. its accuracy).

    Args:
        model: the network (not changed: each budget shares a ``copy.deepcopy`` of it).
        names: the state-dict names of the tensors to share.
        budgets: the whole artifact's budgets in bytes.
        evaluate: ``evaluate(shared_copy) -> float``, the metric of a row.
        traces: HAWQ-V2 traces by name (as :func:`fit_budget`).
        bits: the bit widths to consider (as :func:`fit_budget`).
        sparsities: extra sparsities to consider (as :func:`fit_budget`).
        init: the k-means initialisation.
        codebook_dtype: the codebooks' storage type.
        other_dtype: the unshared float tensors' storage type.
        metadata: the header metadata the files will have.

    Returns:
        One row per budget, plain JSON-safe data: ``{"budget", "bytes", "metric", "bits", "sparsity", "note"}``
        (``bits``/``sparsity`` per layer). A budget no plan meets (:class:`BudgetError`) gives ``bytes``,
        ``metric``, ``bits`` and ``sparsity`` ``None`` and the smallest size in ``note``.
    """
    widths = list(bits)
    extra = None if sparsities is None else list(sparsities)
    rows: list[dict] = []
    for budget in budgets:
        row: dict = {
            "budget": int(budget),
            "bytes": None,
            "metric": None,
            "bits": None,
            "sparsity": None,
            "note": None,
        }
        try:
            plan = fit_budget(
                model,
                names,
                int(budget),
                bits=widths,
                sparsities=extra,
                traces=traces,
                init=init,
                codebook_dtype=codebook_dtype,
                other_dtype=other_dtype,
                metadata=metadata,
            )
        except BudgetError as err:
            row["note"] = _budget_note(err)
            rows.append(row)
            continue
        shared = copy.deepcopy(model)
        apply_plan(shared, plan, init)
        state = {k: v.detach().cpu() for k, v in shared.state_dict().items()}
        row["bytes"] = artifact_bytes(state, codebook_dtype, other_dtype, metadata)
        row["metric"] = float(evaluate(shared))
        row["bits"] = {n: int(b) for n, b in plan.bits.items()}
        row["sparsity"] = {n: float(v) for n, v in plan.sparsity.items()}
        del shared
        rows.append(row)
    return rows


def _budget_note(err: BudgetError) -> str:
    """A short note from a :class:`BudgetError`: the smallest size it gives, else its message."""
    found = re.search(r"smallest artifact these settings allow(?::| is) (\d+) bytes", str(err))
    if found:
        return f"below the smallest size, {int(found.group(1)):,} B"
    return str(err)


def curve_markdown(rows: Sequence[Mapping[str, object]], metric_name: str, percent: bool = False) -> str:
    """A markdown table of :func:`size_accuracy_curve`'s rows (``percent``: the metric as a percentage)."""
    lines = [
        f"| budget B | artifact B | {metric_name} | bits | sparsity | note |",
        "|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        metric = row.get("metric")
        if metric is None:
            value = "-"
        else:
            value = f"{100 * float(metric):.2f}%" if percent else f"{float(metric):.4g}"
        size = row.get("bytes")
        bits = row.get("bits") or {}
        sparsity = row.get("sparsity") or {}
        lines.append(
            f"| {int(row['budget']):,} | {'-' if size is None else f'{int(size):,}'} | {value} | "
            f"{', '.join(f'{n} {b}' for n, b in bits.items()) or '-'} | "
            f"{', '.join(f'{n} {100 * float(v):.1f}%' for n, v in sparsity.items()) or '-'} | "
            f"{row.get('note') or ''} |"
        )
    return "\n".join(lines)


def plot_curve(
    rows: Sequence[Mapping[str, object]], path: str | Path, metric_name: str, percent: bool = False
) -> Path | None:
    """Draw the curve (artifact size against the metric) into the PNG ``path``; ``None`` (nothing written) without
    matplotlib or without a row that met its budget."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    points = sorted(
        (int(r["bytes"]), float(r["metric"]))
        for r in rows
        if r.get("bytes") is not None and r.get("metric") is not None
    )
    if not points:
        return None
    scale = 100.0 if percent else 1.0
    fig = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([s / 1000 for s, _ in points], [scale * m for _, m in points], marker="o")
    ax.set_xlabel("artifact size (kB)")
    ax.set_ylabel(f"{metric_name}{' (%)' if percent else ''}")
    ax.set_title("Size-accuracy curve")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


__all__ = [
    "DP_UNITS",
    "SENSITIVITIES",
    "BudgetError",
    "BudgetPlan",
    "Choice",
    "LayerChoices",
    "apply_plan",
    "artifact_bytes",
    "fit_budget",
    "average_bits_budget",
    "check_budget",
    "check_sensitivity",
    "clustered",
    "curve_markdown",
    "hessian_traces",
    "layer_choices",
    "measure_loss_costs",
    "plot_curve",
    "prune_smallest",
    "size_accuracy_curve",
    "smallest_size",
    "solve_budget",
]
