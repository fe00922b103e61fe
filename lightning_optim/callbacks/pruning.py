"""Progressive (gradual) magnitude pruning with masks applied in place after each optimizer step."""

from __future__ import annotations

import fnmatch
import importlib
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_optim.callbacks._trainer import (
    broadcast_from_rank0,
    example_from_batch,
    known_input_shape,
    log_metrics,
)
from lightning_optim.callbacks.phases import PhaseState, target_model
from lightning_optim.checks import check_choice
from lightning_optim.functional.pruning.dependency import (
    DependencyError,
    DependencyGraph,
    build_dependency_graph,
    check_traceable,
)
from lightning_optim.functional.pruning.groups import (
    group_masks,
    groups_kept_whole,
    pruned_units,
    remove_units,
)
from lightning_optim.functional.pruning.importance import check_importance
from lightning_optim.functional.pruning.masks import (
    GRANULARITIES,
    SCOPES,
    apply_masks_,
    cast_masks,
    compute_masks,
    mask_gradients_,
    mask_optimizer_state_,
    mask_sparsity,
    pack_mask,
    unit_masks_with_followers,
    unpack_mask,
)
from lightning_optim.functional.pruning.schedules import (
    check_sparsity,
    event_sparsity,
    get_sparsity_schedule,
    layer_final_sparsity,
    pruning_events,
)

UNITS: tuple[str, ...] = ("epoch", "step")
#: the pin of the network's outputs (logits): a group of them alone is not counted as requested
OUTPUT = "the model's output"
#: why the units of a coupling group none of whose producers is selected are not pruned
EXCLUDED = "its producers are not selected (module_types/include/exclude/keep_first_dense/keep_last_dense)"


def _resolve_module_type(name: str) -> type[nn.Module]:
    """``"Linear"`` -> ``torch.nn.Linear``; a dotted path imports the class."""
    obj = getattr(nn, name, None)
    if obj is None and "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            obj = None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(
            f"Unknown entry {name!r} in `module_types`: give a torch.nn class name (e.g. 'Linear', 'Conv2d') "
            "or the dotted path of an nn.Module class."
        )
    return obj


class ProgressivePruning(Callback):
    r"""Gradual pruning to a target sparsity, cheap during training, ending in a sparse (or compacted) model.

    At every pruning event (every ``frequency`` optimizer steps from ``start`` to ``end``) the masks are
    recomputed from the current weights at the scheduled target sparsity (cubic schedule of Zhu & Gupta
    2017 by default). Between events the masks are held fixed, and after ``end`` training continues as
    fine-tuning with the final masks. Masks are *not* a reparametrization: no forward hook, no
    ``weight_orig``; the weights themselves are zeroed in place after each optimizer step and the gradients
    of pruned entries are zeroed before it, so a training step costs about the same as unpruned training
    and ``copy.deepcopy``/``torch.save`` of the model work as usual.

    Sparsity is a target for the whole schedule, a fraction of the selected weights (never compounded).
    Masks and schedule position are in the callback's ``state_dict`` (bit-packed), so a resumed run
    continues exactly. Under DDP, masks are computed from the synchronized weights and broadcast from rank
    0, so every rank holds the same masks.

    It is the ``"pruning"`` compression phase (:mod:`lightning_optim.callbacks.phases`): ``pending`` before
    ``start``, ``active`` until the final event, then ``done``.

    Args:
        final_sparsity: target fraction pruned at ``end``, in ``[0, 1)``.
        initial_sparsity: fraction pruned at ``start``, in ``[0, 1)``.
        start: first pruning event, in ``unit``\ s (epoch ``e`` means the beginning of epoch ``e``).
        end: last pruning event (reached the final sparsity), in ``unit``\ s; ``end == start`` is one-shot.
        unit: ``"epoch"`` or ``"step"`` (optimizer steps).
        frequency: optimizer steps between pruning events; default once per epoch with ``unit="epoch"``,
            a tenth of the ramp with ``unit="step"``.
        schedule: ``"cubic"`` (Zhu & Gupta), ``"linear"``, ``"constant"`` (one-shot ``final_sparsity`` at
            ``start``), or the dotted import path of a function ``(progress, initial, final) -> sparsity``
            (a callable also works from Python).
        granularity: ``"unstructured"`` (single weights by magnitude), ``"structured"`` (alias ``"neuron"``,
            ``"filter"``, ``"channel"``: whole output units, rows of a ``Linear``, filters of a ``Conv``, by
            their norm; the unit's bias and the normalization layer right after it are masked as well, so the
            model can be compacted with :func:`lightning_optim.functional.pruning.compact_model`), or
            ``"channel_groups"`` (alias ``"groups"``): channels of any ``torch.fx``-traceable network, each with
            every slice that shares it (residual additions, concatenations, depthwise convolutions, gates,
            batch norms, token MLPs), scored and selected per coupling group
            (:mod:`lightning_optim.functional.pruning.groups`); what is masked is exactly what compaction
            removes. A coupling group is pruned when one of its producers is a selected module
            (``module_types``, ``include``, ``exclude``, ``keep_*_dense``); ``layer_sparsity`` patterns match
            the producers' names, and sparsity is the fraction of a group's channels.
        scope: ``"layer"`` (each layer reaches the target) or ``"global"`` (all selected weights ranked together).
        importance: norm that ranks structured units: ``"l1"`` (alias ``"magnitude"``) or ``"l2"``.
        module_types: ``torch.nn`` class names (or dotted class paths) of the modules whose ``weight`` is pruned.
        include: glob patterns of module names (as in ``model.named_modules()``); when given, only matching
            modules are pruned.
        exclude: glob patterns of module names never pruned.
        keep_first_dense: leave the first selected module (in registration order) dense.
        keep_last_dense: leave the last selected module dense (usually the classifier).
        layer_sparsity: ``{glob pattern: final sparsity}`` overrides; matching layers follow the same schedule
            to their own target, pruned layer by layer.
        compact_at_end: at the end of ``fit``, replace the network by its compacted version (structured
            pruning or channel groups); the compacted network is also kept in ``compacted_model``. With
            channel groups, a summary (requested vs removed channels per coupling group, what was kept and
            why) is printed and ``pruning/removed_fraction`` is logged. The optimizers are rebuilt for the
            compacted network (their state restarts), so a checkpoint saved afterwards resumes; it also loads
            with ``ClassificationModule.load_from_checkpoint(path, model=<the unpruned architecture>)``, which
            takes the layer sizes from the file (:func:`lightning_optim.weights.resize_to_state_dict`).
        attribute: the network is ``pl_module.<attribute>`` where present, else the LightningModule.
        verbose: print a summary table (layer, shape, kept, sparsity) at the end of ``fit``.

    Raises:
        ValueError: a sparsity outside ``[0, 1)``, ``end`` before ``start``, ``start < 0``,
            ``frequency < 1``, an unknown ``unit``/``schedule``/``granularity``/``scope``/``importance``/
            ``module_types`` name, or (at setup) no module matched; with channel groups, batches without a
            tensor input to trace the network with.
        DependencyError: (at setup) with channel groups, a network ``torch.fx`` cannot trace.

    Example::

        from lightning_optim.callbacks import ProgressivePruning
        pruning = ProgressivePruning(final_sparsity=0.92, start=2, end=12, scope="global", keep_last_dense=False)
        trainer = Trainer(max_epochs=20, callbacks=[pruning])
        trainer.fit(ClassificationModule(LeNet300100()), datamodule=dm)

    In YAML::

        trainer:
          callbacks:
            - class_path: ProgressivePruning
              init_args: {final_sparsity: 0.5, granularity: filter, module_types: [Conv2d], compact_at_end: true}
    """

    phase_name = "pruning"

    def __init__(
        self,
        final_sparsity: float = 0.9,
        initial_sparsity: float = 0.0,
        start: int = 0,
        end: int = 10,
        unit: str = "epoch",
        frequency: int | None = None,
        schedule: str | Callable[[float, float, float], float] = "cubic",
        granularity: str = "unstructured",
        scope: str = "layer",
        importance: str = "l1",
        module_types: list[str] | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        keep_first_dense: bool = False,
        keep_last_dense: bool = False,
        layer_sparsity: dict[str, float] | None = None,
        compact_at_end: bool = False,
        attribute: str = "model",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        check_choice("unit", unit, sorted(UNITS))
        if start < 0:
            raise ValueError(f"`start` must be >= 0, got {start}.")
        if end < start:
            raise ValueError(f"`end` ({end}) must not be before `start` ({start}).")
        if frequency is not None and frequency < 1:
            raise ValueError(f"`frequency` must be >= 1 optimizer step, got {frequency}.")
        self._schedule_fn = get_sparsity_schedule(schedule)
        check_choice("granularity", granularity, sorted(GRANULARITIES))
        check_choice("scope", scope, sorted(SCOPES))
        check_importance(importance)
        module_types = list(module_types) if module_types is not None else ["Linear", "Conv2d"]
        if not module_types:
            raise ValueError("`module_types` must name at least one module class.")
        self._module_classes = tuple(_resolve_module_type(t) for t in module_types)
        self.layer_sparsity = {
            str(k): check_sparsity(v, f"layer_sparsity[{k!r}]") for k, v in (layer_sparsity or {}).items()
        }
        if compact_at_end and GRANULARITIES[granularity] == "unstructured":
            raise ValueError(
                "`compact_at_end=True` needs a structured `granularity` ('structured', 'neuron', 'filter', "
                "'channel', 'channel_groups')."
            )
        self.start = int(start)
        self.end = int(end)
        self.unit = unit
        self.frequency = frequency
        self.schedule = schedule
        self.granularity = granularity
        self.structured = GRANULARITIES[granularity] == "structured"
        self.by_groups = GRANULARITIES[granularity] == "groups"
        self.scope = scope
        self.importance = importance
        self.module_types = module_types
        self.include = list(include) if include else None
        self.exclude = list(exclude or [])
        self.keep_first_dense = keep_first_dense
        self.keep_last_dense = keep_last_dense
        self.compact_at_end = compact_at_end
        self.attribute = attribute
        self.verbose = verbose

        # schedule position (in optimizer steps), resolved at the start of fit or restored from a checkpoint
        self._start_step: int | None = None
        self._end_step: int | None = None
        self._frequency_steps: int | None = None
        self._events_done = 0
        self._last_step = -1
        self.current_sparsity = 0.0
        self.history: list[dict[str, float]] = []
        # masks: weight name (relative to the network) -> bool mask (unit mask ``(out, 1, ..)`` when structured)
        self.masks: dict[str, Tensor] = {}
        self._loaded_state: dict[str, Any] | None = None
        # the network was compacted (by this fit or the checkpoint's): masks no longer apply to it
        self.compacted = False
        self._warned_whole: set[str] = set()
        # caches, rebuilt from the model (not pickled)
        self._modules: dict[str, nn.Module] = {}
        self._followers: dict[str, list[str]] = {}
        # what the masks zero: parameter name -> parameter, and -> its mask in the parameter's dtype/device
        self._params: dict[str, Tensor] = {}
        self._fast_masks: dict[str, Tensor] = {}
        self.example_input: Tensor | None = None
        self.compacted_model: nn.Module | None = None
        # channel groups: the dependency graph of the network, built once per fit (not pickled)
        self.graph: DependencyGraph | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            final_sparsity=self.final_sparsity,
            granularity=self.granularity,
            include=self.include,
            exclude=self.exclude,
        )

    # -------------------------------------------------------------------------------------- selection
    def select_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules whose ``weight`` is pruned, by type, name patterns and first/last options.

        Raises:
            ValueError: if no module matches.
        """
        selected = []
        for name, module in model.named_modules():
            if not name or not isinstance(module, self._module_classes):
                continue
            if not isinstance(getattr(module, "weight", None), Tensor):
                continue
            if self.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
                continue
            selected.append((name, module))
        if self.keep_first_dense and selected:
            selected = selected[1:]
        if self.keep_last_dense and selected:
            selected = selected[:-1]
        if not selected:
            raise ValueError(
                f"ProgressivePruning matched no module: module_types={self.module_types}, include={self.include}, "
                f"exclude={self.exclude}, keep_first_dense={self.keep_first_dense}, keep_last_dense={self.keep_last_dense}. "
                f"Modules of the network: {[n for n, _ in model.named_modules() if n][:20]}."
            )
        return dict(selected)

    # -------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = target_model(pl_module, self.attribute)
        self._modules = self.select_modules(model)
        self._followers = {}
        if self.structured:
            from lightning_optim.functional.pruning.compaction import channel_followers

            self._followers = channel_followers(model, list(self._modules))
        if self.by_groups:
            self.graph = None
            shape = known_input_shape(trainer, pl_module)
            if shape is not None:
                self._run_build_graph(model, torch.zeros(2, *shape))
            else:  # traced at the first training batch; an untraceable network is refused now
                try:
                    check_traceable(model)
                except DependencyError as err:
                    raise self._trace_error(err) from err

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if (self.compact_at_end or self.by_groups) and self.example_input is None:
            self.example_input = example_from_batch(batch)
        if self.by_groups and self.graph is None:
            if self.example_input is None:
                raise ValueError(
                    f"ProgressivePruning(granularity={self.granularity!r}"
                    f"{', compact_at_end=True' if self.compact_at_end else ''}) traces the network on an example "
                    "input, and none is known: set `example_input_array` on the LightningModule, give the data "
                    "module an `input_shape`, or use batches whose inputs are one tensor."
                )
            self._run_build_graph(target_model(pl_module, self.attribute), self.example_input)
            self._maybe_prune(trainer, pl_module)  # an event held back until the graph was known

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self._run_mask_gradients()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._run_step(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_end(trainer, pl_module)

    # -------------------------------------------------------------------------------------- phase
    def phase_state(self, trainer: Any) -> PhaseState:
        """``"pending"`` before the first event, ``"active"`` until the final event, then ``"done"``."""
        if self._end_step is None:
            return "pending"
        if self._events_done >= len(self._events()):
            return "done"
        return "active" if self._events_done > 0 else "pending"

    # -------------------------------------------------------------------------------------- channel groups
    def _trace_error(self, err: DependencyError) -> DependencyError:
        return DependencyError(
            f"ProgressivePruning(granularity={self.granularity!r}) traces the network to find which channels go "
            f"together: {err} Or prune with granularity='structured' (one layer at a time, compaction where "
            "channels are not shared) or 'unstructured', which need no trace."
        )

    def _run_build_graph(self, model: nn.Module, example: Tensor) -> None:
        """Trace ``model`` once per fit; the channels of groups none of whose producers is selected are pinned."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            graph = build_dependency_graph(model, example.to(device))
        except DependencyError as err:
            raise self._trace_error(err) from err
        if not self._modules:
            self._modules = self.select_modules(model)
        excluded = []
        for g in graph.groups:
            free = [u for u in g.units if graph.units[u].pinned is None]
            if free and not any(p in self._modules for p in g.producers):
                excluded.append(g.name)
                for u in free:
                    graph.units[u].pinned = EXCLUDED
                graph.pinned[EXCLUDED] = graph.pinned.get(EXCLUDED, 0) + len(free)
        self.graph = graph
        if excluded:
            rank_zero_info(
                f"ProgressivePruning: {graph.pinned[EXCLUDED]} channels of {len(excluded)} coupling groups "
                f"({', '.join(excluded[:8])}{', ...' if len(excluded) > 8 else ''}) are kept: {EXCLUDED}."
            )
        if not graph.prunable_groups():
            rank_zero_warn(f"ProgressivePruning: no channel of the network can be pruned.\n{graph.summary()}")

    def _group_names(self) -> dict[int, str]:
        """Group id -> a unique name (its first producer), for the groups that can be pruned."""
        names: dict[int, str] = {}
        seen: set[str] = set()
        for g in self.graph.prunable_groups() if self.graph is not None else []:
            name = g.name if g.name not in seen else f"{g.name}#{g.id}"
            seen.add(name)
            names[g.id] = name
        return names

    def _group_layer(self, producers: list[str]) -> str | None:
        """The producer whose name the first matching ``layer_sparsity`` pattern matches (``None``: no override)."""
        for pattern in self.layer_sparsity:
            for name in producers:
                if fnmatch.fnmatchcase(name, pattern):
                    return name
        return None

    def _group_masks(self, model: nn.Module, event_step: int, target: float) -> dict[str, Tensor]:
        group_sparsity = {}
        for g in self.graph.groups:
            layer = self._group_layer(g.producers or [g.name])
            if layer is not None:
                group_sparsity[g.id] = self._event_sparsity(event_step, layer)
        masks, _ = group_masks(
            model, self.graph, target, self.scope, self.importance, group_sparsity=group_sparsity
        )
        if self.scope == "layer":
            whole = groups_kept_whole(self.graph, target, group_sparsity=group_sparsity)
            new = sorted(set(whole) - self._warned_whole)
            if new:
                self._warned_whole.update(new)
                rank_zero_warn(
                    f"ProgressivePruning: the target sparsity ({target:.2f}) would remove every channel of the "
                    f"coupling group(s) {new}; one channel of each is kept."
                )
        return masks

    # -------------------------------------------------------------------------------------- internals
    def _resolve_steps(self, trainer: pl.Trainer) -> None:
        if self.unit == "step":
            start, end = self.start, self.end
            frequency = self.frequency or max(1, (end - start) // 10)
        else:
            batches = trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError("`unit='epoch'` needs a sized training dataloader; use `unit='step'`.")
            steps_per_epoch = max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))
            start, end = self.start * steps_per_epoch, self.end * steps_per_epoch
            frequency = self.frequency or steps_per_epoch
        self._start_step, self._end_step, self._frequency_steps = start, end, frequency

    def _run_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = target_model(pl_module, self.attribute)
        if not self._modules:
            self._modules = self.select_modules(model)
        state = self._loaded_state
        if state is not None:
            self._start_step, self._end_step = state["start_step"], state["end_step"]
            self._frequency_steps = state["frequency_steps"]
            self._events_done = state["events_done"]
            self.current_sparsity = state["current_sparsity"]
            self.history = list(state.get("history", []))
            self.masks = {n: unpack_mask(p, state["shapes"][n]) for n, p in state["masks"].items()}
            self._loaded_state = None
        elif self._end_step is None:
            self._resolve_steps(trainer)
        self._build_targets(model)
        self._apply_weight_masks()
        self._last_step = trainer.global_step
        self._maybe_prune(trainer, pl_module)

    def _run_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self._last_step = step
        self._apply_weight_masks()
        self._maybe_prune(trainer, pl_module)

    def _events(self) -> list[int]:
        """The optimizer steps of the pruning events (computed once per schedule)."""
        key = (self._start_step, self._end_step, self._frequency_steps)
        if getattr(self, "_events_cache", (None, None))[0] != key:
            self._events_cache = (key, pruning_events(*key))
        return self._events_cache[1]

    def _maybe_prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.by_groups and self.graph is None:  # traced at the first training batch, which runs it then
            return
        events = self._events()
        step = trainer.global_step
        if self._events_done >= len(events) or events[self._events_done] > step:
            return
        last = self._events_done
        while last + 1 < len(events) and events[last + 1] <= step:
            last += 1
        self._events_done = last + 1
        self._prune(trainer, pl_module, events[last])

    def _event_sparsity(self, event_step: int, layer: str | None = None) -> float:
        """The target of ``layer`` (``None``: of the layers without a ``layer_sparsity`` override) at an event."""
        return event_sparsity(
            event_step,
            self._start_step,
            self._end_step,
            self.initial_sparsity,
            self.final_sparsity,
            self._schedule_fn,
            layer,
            self.layer_sparsity,
        )

    @torch.no_grad()
    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event_step: int) -> None:
        model = target_model(pl_module, self.attribute)
        target = self._event_sparsity(event_step)
        if self.by_groups:
            masks = self._group_masks(model, event_step, target)
        else:
            weights = {f"{n}.weight": m.weight for n, m in self._modules.items()}
            overrides = {
                f"{n}.weight": self._event_sparsity(event_step, n)
                for n in self._modules
                if layer_final_sparsity(n, self.final_sparsity, self.layer_sparsity)[1]
            }
            masks = compute_masks(weights, target, self.granularity, self.scope, self.importance, overrides)
        masks = broadcast_from_rank0(trainer, masks, tensorwise=True)
        self.masks = {n: m.cpu() for n, m in masks.items()}
        self.current_sparsity = target
        self._build_targets(model)
        self._apply_weight_masks()
        self._clear_optimizer_state(trainer)
        stats = self.layer_sparsities()
        record = {"step": float(event_step), "target": target, "sparsity": self.global_sparsity()}
        self.history.append(record)
        metrics = {"pruning/target_sparsity": target, "pruning/sparsity": record["sparsity"]}
        metrics.update({f"pruning/sparsity/{name}": s for name, (_, _, s) in stats.items()})
        log_metrics(trainer, metrics)

    def _build_targets(self, model: nn.Module) -> None:
        """What the masks zero, with each mask pre-cast to its tensor's dtype/device (the fast path): the
        weights, and with structured pruning the unit's bias and the normalization layer that follows (channel
        groups: the masks already name every parameter they zero)."""
        params = dict(model.named_parameters())
        masks = (
            unit_masks_with_followers(self.masks, params, self._followers) if self.structured else self.masks
        )
        self._params = {n: params[n] for n in masks}
        self._fast_masks = cast_masks(masks, self._params)

    @property
    def _targets(self) -> list[tuple[Tensor, Tensor]]:
        """``(tensor, mask in its dtype/device)`` pairs of what the masks zero."""
        return [(self._params[n], m) for n, m in self._fast_masks.items()]

    def _apply_weight_masks(self) -> None:
        apply_masks_(self._params, self._fast_masks)

    def _run_mask_gradients(self) -> None:
        mask_gradients_(self._params, self._fast_masks)

    def _clear_optimizer_state(self, trainer: pl.Trainer) -> None:
        """Zero momentum/moment estimates of pruned entries, so they do not push on the masked weights."""
        for optimizer in trainer.optimizers:
            mask_optimizer_state_(optimizer, self._params, self._fast_masks)

    def _run_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_weight_masks()
        if self.verbose and self.masks:
            rank_zero_info(self.summary_table())
        if self.compact_at_end and self.compacted and not self.masks:
            rank_zero_info(
                "ProgressivePruning: the network was compacted already (restored from a checkpoint)."
            )
        elif self.compact_at_end and self.by_groups:
            self._run_remove_units(trainer, pl_module)
        elif self.compact_at_end:
            from lightning_optim.functional.pruning.compaction import compact_model

            model = target_model(pl_module, self.attribute)
            if self.example_input is None:
                rank_zero_warn("ProgressivePruning: no training batch seen; the model was not compacted.")
                return
            device = next(model.parameters()).device
            self.compacted_model = compact_model(model, self.example_input.to(device))
            if model is not pl_module:
                setattr(pl_module, self.attribute, self.compacted_model)
            self._params, self._fast_masks = {}, {}
            self.compacted = True
            self._rebuild_optimizers(trainer)

    @staticmethod
    def _rebuild_optimizers(trainer: pl.Trainer) -> None:
        """The optimizers of the compacted network (their state restarts): a checkpoint taken from here on holds
        optimizer state of the new shapes, so it resumes."""
        if trainer.optimizers:
            trainer.strategy.setup_optimizers(trainer)

    def _run_remove_units(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Channel groups: remove the pruned units from the network (checked against the masked network), put
        the result in its place, and say what was requested, removed and kept."""
        model = target_model(pl_module, self.attribute)
        if self.graph is None:
            rank_zero_warn(
                "ProgressivePruning: no training batch seen, no graph; the model was not compacted."
            )
            return
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        example = self.example_input
        if example is None:
            shape = known_input_shape(trainer, pl_module)
            example = torch.zeros(2, *shape) if shape is not None else None
        pruned = pruned_units(self.graph, self.masks)
        self.compacted_model = remove_units(
            model, self.graph, pruned, example.to(device) if example is not None else None
        )
        if model is not pl_module:
            setattr(pl_module, self.attribute, self.compacted_model)
        self._params, self._fast_masks = {}, {}
        self.compacted = True
        self._rebuild_optimizers(trainer)
        report, requested, removed, total = self.compaction_summary(pruned)
        if removed == 0:
            rank_zero_warn(f"ProgressivePruning: nothing could be removed.\n{report}")
        else:
            rank_zero_info(report)
        log_metrics(
            trainer,
            {
                "pruning/removed_fraction": removed / total if total else 0.0,
                "pruning/requested_fraction": requested / total if total else 0.0,
            },
        )

    def compaction_summary(self, pruned: set[int] | None = None) -> tuple[str, int, int, int]:
        """Channel groups: a Markdown table of the channels requested (the final target, per coupling group
        with ``scope="layer"`` or an override, else in total) and removed per coupling group, the total, and
        every reason a channel was kept, with its count; and ``(text, requested, removed, channels)``, over
        the groups one of whose producers is selected (a group of the network's outputs alone is listed, not
        counted)."""
        graph = self.graph
        if graph is None:
            return "ProgressivePruning: no dependency graph (no fit yet).", 0, 0, 0
        pruned = pruned_units(graph, self.masks) if pruned is None else pruned
        lines = [
            "| coupling group | producers | channels | requested | removed | kept because |",
            "|---|---|---:|---:|---:|---|",
        ]
        requested_total = removed_total = total = ranked = 0
        names = self._group_names()
        for g in graph.groups:
            units = [graph.units[u] for u in g.units]
            if all(u.pinned == EXCLUDED for u in units):
                continue
            layer = self._group_layer(g.producers or [g.name])
            final = layer_final_sparsity(layer, self.final_sparsity, self.layer_sparsity)[0]
            n = len(units)
            removed = sum(u.id in pruned for u in units)
            reasons = sorted({u.pinned for u in units if u.pinned is not None})
            if all(u.pinned == OUTPUT for u in units):  # the network's outputs (logits): never asked for
                producers = ", ".join(g.producers[:4])
                lines.append(f"| {names.get(g.id, g.name)} | {producers} | {n} | - | 0 | {OUTPUT} |")
                continue
            if self.scope == "global" and layer is None:
                ranked += n
                requested = "global"
            else:
                requested = int(round(final * n))
                requested_total += requested
            total += n
            removed_total += removed
            producers = ", ".join(g.producers[:4]) + (", ..." if len(g.producers) > 4 else "")
            lines.append(
                f"| {names.get(g.id, g.name)} | {producers} | {n} | {requested} | {removed} | {'; '.join(reasons)} |"
            )
        requested_total += int(round(self.final_sparsity * ranked))
        share = f"{removed_total / requested_total:.0%}" if requested_total else "-"
        lines.append(
            f"| **total** | | {total} | {requested_total} | {removed_total} ({share} of requested) | |"
        )
        head = "ProgressivePruning: channels removed by compaction (channel groups)"
        text = "\n".join([head, *lines, graph.summary()])
        return text, requested_total, removed_total, total

    # -------------------------------------------------------------------------------------- reporting
    def layer_sparsities(self) -> dict[str, tuple[tuple[int, ...], int, float]]:
        """``{weight name: (shape, kept entries, sparsity)}`` of the masked weights; with channel groups
        ``{coupling group: ((channels,), kept channels, sparsity)}`` of the groups that can be pruned."""
        if self.by_groups:
            if self.graph is None:
                return {}
            pruned = pruned_units(self.graph, self.masks)
            stats = {}
            for gid, name in self._group_names().items():
                units = self.graph.groups[gid].units
                kept = sum(u not in pruned for u in units)
                stats[name] = ((len(units),), kept, 1.0 - kept / len(units))
            return stats
        out = {}
        for name, mask in self.masks.items():
            module = self._modules.get(name[: -len(".weight")])
            shape = tuple(module.weight.shape) if module is not None else tuple(mask.shape)
            total = math.prod(shape)
            kept = int(round(total * (1.0 - mask_sparsity(mask, shape))))
            out[name] = (shape, kept, 1.0 - kept / total)
        return out

    def global_sparsity(self) -> float:
        """Fraction of the selected weights that is pruned."""
        stats = self.layer_sparsities()
        total = sum(math.prod(s) for s, _, _ in stats.values())
        kept = sum(k for _, k, _ in stats.values())
        return 1.0 - kept / total if total else 0.0

    def summary_table(self) -> str:
        """A Markdown table: layer, shape, kept, sparsity; and the total (channel groups: coupling group,
        channels, kept channels, sparsity)."""
        stats = self.layer_sparsities()
        first = "| coupling group | channels |" if self.by_groups else "| layer | shape |"
        lines = [f"{first} kept | sparsity |", "|---|---|---:|---:|"]
        total = kept_total = 0
        for name, (shape, kept, sparsity) in stats.items():
            lines.append(f"| {name} | {'x'.join(map(str, shape))} | {kept} | {sparsity:.2%} |")
            total += math.prod(shape)
            kept_total += kept
        if total:
            lines.append(f"| **total** | {total} | {kept_total} | {1 - kept_total / total:.2%} |")
        return "\n".join(lines)

    # -------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self._loaded_state is not None:  # restored but not started yet: hand it on unchanged
            return dict(self._loaded_state)
        # after compaction the pruned channels are gone: masks of the old shapes are not saved
        masks = {} if self.compacted else self.masks
        return {
            "masks": {n: pack_mask(m) for n, m in masks.items()},
            "shapes": {n: tuple(m.shape) for n, m in masks.items()},
            "start_step": self._start_step,
            "end_step": self._end_step,
            "frequency_steps": self._frequency_steps,
            "events_done": self._events_done,
            "current_sparsity": self.current_sparsity,
            "history": list(self.history),
            "compacted": self.compacted,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("end_step") is None:  # saved before the start of training: nothing to restore
            return
        self._loaded_state = dict(state_dict)
        self.compacted = bool(state_dict.get("compacted", False))
        self._start_step, self._end_step = state_dict["start_step"], state_dict["end_step"]
        self._frequency_steps = state_dict["frequency_steps"]
        self._events_done = state_dict["events_done"]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_params"] = {}
        state["_fast_masks"] = {}
        state["_modules"] = {}
        state["graph"] = None
        return state
