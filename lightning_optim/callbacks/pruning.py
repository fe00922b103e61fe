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

from lightning_optim.callbacks._trainer import broadcast_from_rank0, example_from_batch, log_metrics
from lightning_optim.callbacks.phases import PhaseState, target_model
from lightning_optim.checks import check_choice
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
        granularity: ``"unstructured"`` (single weights by magnitude) or ``"structured"`` (alias ``"neuron"``,
            ``"filter"``, ``"channel"``: whole output units, rows of a ``Linear``, filters of a ``Conv``, by
            their norm; the unit's bias and the normalization layer right after it are masked as well, so the
            model can be compacted with :func:`lightning_optim.functional.pruning.compact_model`).
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
            pruning only); the compacted network is also kept in ``compacted_model``.
        attribute: the network is ``pl_module.<attribute>`` where present, else the LightningModule.
        verbose: print a summary table (layer, shape, kept, sparsity) at the end of ``fit``.

    Raises:
        ValueError: a sparsity outside ``[0, 1)``, ``end`` before ``start``, ``start < 0``,
            ``frequency < 1``, an unknown ``unit``/``schedule``/``granularity``/``scope``/``importance``/
            ``module_types`` name, or (at setup) no module matched.

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
        if compact_at_end and GRANULARITIES[granularity] != "structured":
            raise ValueError(
                "`compact_at_end=True` needs a structured `granularity` ('structured', 'neuron', 'filter')."
            )
        self.start = int(start)
        self.end = int(end)
        self.unit = unit
        self.frequency = frequency
        self.schedule = schedule
        self.granularity = granularity
        self.structured = GRANULARITIES[granularity] == "structured"
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
        # caches, rebuilt from the model (not pickled)
        self._modules: dict[str, nn.Module] = {}
        self._followers: dict[str, list[str]] = {}
        # what the masks zero: parameter name -> parameter, and -> its mask in the parameter's dtype/device
        self._params: dict[str, Tensor] = {}
        self._fast_masks: dict[str, Tensor] = {}
        self.example_input: Tensor | None = None
        self.compacted_model: nn.Module | None = None

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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.compact_at_end and self.example_input is None:
            self.example_input = example_from_batch(batch)

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
        weights, and with structured pruning the unit's bias and the normalization layer that follows."""
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
        if self.compact_at_end:
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

    # -------------------------------------------------------------------------------------- reporting
    def layer_sparsities(self) -> dict[str, tuple[tuple[int, ...], int, float]]:
        """``{weight name: (shape, kept entries, sparsity)}`` of the masked weights."""
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
        """A Markdown table: layer, shape, kept, sparsity; and the total."""
        stats = self.layer_sparsities()
        lines = ["| layer | shape | kept | sparsity |", "|---|---|---:|---:|"]
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
        return {
            "masks": {n: pack_mask(m) for n, m in self.masks.items()},
            "shapes": {n: tuple(m.shape) for n, m in self.masks.items()},
            "start_step": self._start_step,
            "end_step": self._end_step,
            "frequency_steps": self._frequency_steps,
            "events_done": self._events_done,
            "current_sparsity": self.current_sparsity,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("end_step") is None:  # saved before the start of training: nothing to restore
            return
        self._loaded_state = dict(state_dict)
        self._start_step, self._end_step = state_dict["start_step"], state_dict["end_step"]
        self._frequency_steps = state_dict["frequency_steps"]
        self._events_done = state_dict["events_done"]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_params"] = {}
        state["_fast_masks"] = {}
        state["_modules"] = {}
        return state
