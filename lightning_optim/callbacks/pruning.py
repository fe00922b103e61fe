"""Progressive (gradual) magnitude pruning with masks applied in place after each optimizer step."""

from __future__ import annotations

import difflib
import fnmatch
import gc
import importlib
import math
import textwrap
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
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
from lightning_optim.functional.pruning.blocks import (
    CHECKPOINT_KEY,
    REMOVED_BLOCKS_KEY,
    BlockPruningError,
    block_importance,
    find_blocks,
    remove_blocks,
)
from lightning_optim.functional.pruning.blocks import _removed as is_removed_block
from lightning_optim.functional.pruning.compaction import (
    TIED,
    CompactedLayer,
    footnote_keys,
    footnotes,
    format_compaction,
    padded_table,
)
from lightning_optim.functional.pruning.dependency import (
    DependencyError,
    DependencyGraph,
    build_dependency_graph,
    check_traceable,
)
from lightning_optim.functional.pruning.groups import (
    apply_layer_norm_masks,
    group_masks,
    groups_kept_whole,
    pruned_units,
    remove_layer_norm_masks,
    remove_units,
    unit_masks,
    zero_units,
)
from lightning_optim.functional.pruning.importance import check_importance, num_pruned
from lightning_optim.functional.pruning.masks import (
    GRANULARITIES,
    SCOPES,
    apply_masks_,
    can_shard_masks,
    cast_masks,
    compute_masks,
    gather_mask,
    is_sharded,
    mask_counts,
    mask_gradients_,
    mask_optimizer_state_,
    mask_sparsity,
    pack_mask,
    shard_like,
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
from lightning_optim.modules.loss_terms import unpack_batch

UNITS: tuple[str, ...] = ("epoch", "step")
#: the granularities of the callback: those of the masks, and ``"blocks"`` (whole residual blocks or
#: transformer layers replaced by identity: :mod:`lightning_optim.functional.pruning.blocks`)
CALLBACK_GRANULARITIES: dict[str, str] = {**GRANULARITIES, "heads": "groups", "blocks": "blocks"}
#: the pin of the network's outputs (logits): a group of them alone is not counted as requested
OUTPUT = "the model's output"
#: why the units of a coupling group none of whose producers is selected are not pruned
EXCLUDED = "its producers are not selected (module_types/include/exclude/keep_first_dense/keep_last_dense)"
#: why channels (not heads) are kept with ``granularity="heads"``
NOT_HEADS = "granularity='heads' prunes attention heads only"


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
    and ``copy.deepcopy``/``torch.save`` of the model work as usual. One exception, with channel groups: a
    layer norm across channels of a feature map (ConvNeXt) that loses some of them gets a forward hook
    (:class:`~lightning_optim.functional.pruning.groups.MaskedLayerNorm`) that normalises over the kept
    channels only, so that the masked network computes what its compacted version computes; the hooks
    follow the masks at every event and on resume, are not carried into the compacted network, and stay
    on a masked network that is not compacted (it was trained with them).

    Sparsity is a target for the whole schedule, a fraction of the selected weights (never compounded).
    Which of several equal weights (or units) a mask prunes is fixed: the lowest scores go first, ties in the
    order of position (flattened index within a tensor; with ``scope="global"``, the layers in registration
    order), the same on every run and every process.
    Masks and schedule position are in the callback's ``state_dict`` (bit-packed), so a resumed run
    continues exactly. A resume from a checkpoint that holds *no* state of this callback (saved by a run without
    it, or with another ``final_sparsity``/``granularity``/``include``/``exclude``, which make its state key)
    keeps the model's zeros: the weights (structured: whole units; channel groups: channels) that are exactly
    zero in the checkpoint become masks that every later pruning step keeps (blocks removed in the checkpoint
    stay removed), the ramp is laid out from the settings, and a warning says so; nothing pruned is revived.
    Before the first epoch, a ramp that does not fit the run is said: one whose pruning steps all fall after the
    end of the run (``max_epochs``/``max_steps``) is refused, one cut short gets a warning with the sparsity it
    reaches and the fix. Under DDP, masks are computed from the synchronized weights and broadcast from rank
    0, so every rank holds the same masks. Under FSDP2 (``ModelParallelStrategy`` with
    ``ClassificationModule(sharding="fsdp2")``) unstructured masks are sharded like the weights: each
    is a ``DTensor`` of which each rank holds the part of its shard, computed shard-wise without gathering any
    weight (:func:`~lightning_optim.functional.pruning.masks.sharded_magnitude_masks`), and equal, once
    gathered (:meth:`gathered_masks`, a collective), to the masks of a single-process run. The checkpoint holds
    them whole (bit-packed, gathered one layer at a time when the state is saved), so a resume, sharded or not,
    continues exactly; each rank keeps its part at the resume. Structured and channel-group masks are computed
    on whole weights (per layer, or on a plain copy of the network gathered from the shards at each pruning
    step: the trace and the scores see the whole network), kept whole on every rank, and applied to each rank's
    shards; compaction (``compact_at_end``, :meth:`compact`) works on a gathered copy and the compacted network
    is sharded again by the LightningModule's ``configure_model``. Under tensor parallelism the masks work the same
    way (neurons and heads split by column- and row-wise layers included); compaction and block pruning are refused
    there, and block pruning under FSDP2.

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
            removes; attention heads are units too (a head's q, k, v rows and output-projection columns go
            together, the module's head count is updated). Or ``"heads"``: the same, attention heads only
            (channels and MLP neurons stay; a network without heads is refused). A coupling group is pruned
            when one of its producers is a selected module
            (``module_types``, ``include``, ``exclude``, ``keep_*_dense``); ``layer_sparsity`` patterns match
            the producers' names, and sparsity is the fraction of a group's channels. Or ``"blocks"``
            (layer pruning): whole residual blocks or transformer layers (the candidates of
            :func:`~lightning_optim.functional.pruning.blocks.find_blocks`: items of an ``nn.Sequential``/
            ``nn.ModuleList`` that map one tensor to one of the same shape with a skip connection from their
            input, e.g. torchvision ResNet's blocks that do not downsample, ViT layers), found at setup (or at
            the first training batch) on an example input. At each event ``round(sparsity x candidates)``
            blocks are removed in all (never fewer than before, never every candidate: one is kept, with a
            warning); the new ones are the candidates whose replacement by identity raises the loss least,
            measured on the training batch of the event (and the ``importance_batches - 1`` batches before it)
            with the LightningModule's ``task_loss`` (else cross-entropy). They are replaced by
            :class:`~lightning_optim.functional.pruning.blocks.SkippedBlock` at once (removal is the
            compaction: the network is smaller and faster from then on), the optimizers are rebuilt for the
            remaining parameters (their state, learning rates and schedulers carried over), a line says what
            was removed, and ``pruning/removed_blocks`` is logged. ``include``/``exclude`` patterns match block
            names, ``keep_first_dense``/``keep_last_dense`` keep the first/last candidate; ``module_types``,
            ``scope`` and ``importance`` do not apply. The removed names are in the callback state and in the
            checkpoint (``checkpoint["lightning_optim"]["removed_blocks"]``, relative to the LightningModule),
            from which ``ClassificationModule.load_from_checkpoint(path, model=<the unpruned architecture>)``
            and ``trainer.fit(..., ckpt_path=path)`` remove the same blocks before the weights load (another
            LightningModule calls :func:`~lightning_optim.functional.pruning.blocks.restore_removed_blocks`
            in its ``on_load_checkpoint``).
        scope: ``"layer"`` (each layer reaches the target) or ``"global"`` (all selected weights ranked together).
        importance: norm that ranks structured units: ``"l1"`` (alias ``"magnitude"``) or ``"l2"``.
        module_types: ``torch.nn`` class names (or dotted class paths) of the modules whose ``weight`` is pruned.
        include: glob patterns of module names (as in ``model.named_modules()``); when given, only matching
            modules are pruned.
        exclude: glob patterns of module names never pruned. With channel groups and heads, a matching module
            is also kept whole when the network is traced (not traced into; the channels it reads and writes
            stay): the way out for a block that ``torch.fx`` cannot trace.
        keep_first_dense: leave the first selected module (in registration order) dense.
        keep_last_dense: leave the last selected module dense (usually the classifier).
        layer_sparsity: ``{glob pattern: final sparsity}`` overrides; matching layers follow the same schedule
            to their own target, pruned layer by layer.
        compact_at_end: at the end of ``fit``, replace the network by its compacted version (structured
            pruning or channel groups); the compacted network is also kept in ``compacted_model``. A summary
            (requested vs removed units per layer, or channels per coupling group, what was kept and why,
            within 100 columns: :meth:`compaction_summary`) is printed once, on rank 0, kept in
            ``compaction_text``, and ``pruning/removed_fraction`` is logged. The optimizers are rebuilt for the
            compacted network (their state restarts), so a checkpoint saved afterwards resumes; it also loads
            with ``ClassificationModule.load_from_checkpoint(path, model=<the unpruned architecture>)``, which
            takes the layer sizes from the file (:func:`lightning_optim.weights.resize_to_state_dict`).
        attribute: the network is ``pl_module.<attribute>`` where present, else the LightningModule.
        verbose: print a summary table (layer, shape, kept, sparsity) at the end of ``fit`` (blocks: block,
            type, parameters, when removed, measured loss increase).
        importance_batches: with ``granularity="blocks"``, the number of training batches the importance of
            the blocks is measured on at each event: the batch of the event and the ``importance_batches - 1``
            batches before it (kept on their device while the ramp lasts).

    Raises:
        ValueError: a sparsity outside ``[0, 1)``, ``end`` before ``start``, ``start < 0``,
            ``frequency < 1``, an unknown ``unit``/``schedule``/``granularity``/``scope``/``importance``/
            ``module_types`` name, ``importance_batches < 1`` (or given without ``granularity="blocks"``),
            ``layer_sparsity`` with ``granularity="blocks"``, or (at setup) no module matched, an ``include``
            pattern that matches no module of ``module_types`` (blocks: no candidate block), an ``exclude``
            pattern that matches no module, a ``layer_sparsity`` key that matches no pruned module (each naming
            the closest names), an ``attribute`` other than ``"model"`` that is not a network of the
            LightningModule; before the first epoch, a ramp entirely after the end of the run; with channel
            groups or blocks, batches without a tensor input to trace (run) the network with; with blocks,
            (at setup) a network without any candidate block.
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

    #: under FSDP2: unstructured masks are computed shard-wise; structured and channel-group masks on the whole
    #: weights (a gathered copy), split as the weights are; compaction on a gathered copy, sharded again. Under
    #: tensor parallelism the same masks, without compaction. Block pruning and compaction under tensor parallelism
    #: are refused at setup
    sharded_parameters = "partial"

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
        importance_batches: int = 1,
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
        check_choice("granularity", granularity, sorted(CALLBACK_GRANULARITIES))
        check_choice("scope", scope, sorted(SCOPES))
        check_importance(importance)
        module_types = list(module_types) if module_types is not None else ["Linear", "Conv2d"]
        if not module_types:
            raise ValueError("`module_types` must name at least one module class.")
        self._module_classes = tuple(_resolve_module_type(t) for t in module_types)
        self.layer_sparsity = {
            str(k): check_sparsity(v, f"layer_sparsity[{k!r}]") for k, v in (layer_sparsity or {}).items()
        }
        if compact_at_end and CALLBACK_GRANULARITIES[granularity] == "unstructured":
            raise ValueError(
                "`compact_at_end=True` needs a structured `granularity` ('structured', 'neuron', 'filter', "
                "'channel', 'channel_groups', 'blocks')."
            )
        by_blocks = CALLBACK_GRANULARITIES[granularity] == "blocks"
        if (
            isinstance(importance_batches, bool)
            or not isinstance(importance_batches, int)
            or importance_batches < 1
        ):
            raise ValueError(f"`importance_batches` must be an int >= 1, got {importance_batches!r}.")
        if importance_batches != 1 and not by_blocks:
            raise ValueError(
                f"`importance_batches` applies to granularity='blocks' only (got granularity={granularity!r})."
            )
        if by_blocks and self.layer_sparsity:
            raise ValueError(
                "`layer_sparsity` does not apply to granularity='blocks' (blocks are ranked together by the "
                "loss their removal costs); select blocks with `include`/`exclude` instead."
            )
        self.start = int(start)
        self.end = int(end)
        self.unit = unit
        self.frequency = frequency
        self.schedule = schedule
        self.granularity = granularity
        self.structured = CALLBACK_GRANULARITIES[granularity] == "structured"
        self.by_groups = CALLBACK_GRANULARITIES[granularity] == "groups"
        self.heads_only = granularity == "heads"
        self.by_blocks = by_blocks
        self.importance_batches = int(importance_batches)
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
        # masks: weight name (relative to the network) -> bool mask (unit mask ``(out, 1, ..)`` when structured);
        # of a sharded weight (FSDP2), a DTensor split as the weight: each rank holds its part
        self.masks: dict[str, Tensor] = {}
        # kept entries of the sharded masks (counted once per change, a collective): name -> (id(mask), count)
        self._sharded_kept: dict[str, tuple[int, int]] = {}
        self._loaded_state: dict[str, Any] | None = None
        # resume: whether the checkpoint held this callback's state (load_state_dict was called), the callback
        # states the checkpoint held (on_load_checkpoint), and the keep-masks of the weights that were zero in a
        # checkpoint without it (kept at zero: every later mask is and-ed with them); None: not resolved yet
        self._state_restored = False
        self._checkpoint_states: list[str] | None = None
        self.kept_zeros: dict[str, Tensor] = {}
        self._kept_zeros_pending = False
        # the network was compacted (by this fit or the checkpoint's): masks no longer apply to it
        self.compacted = False
        self._warned_whole: set[str] = set()
        # caches, rebuilt from the model (not pickled)
        self._modules: dict[str, nn.Module] = {}
        self._followers: dict[str, list[str]] = {}
        # under a sharding strategy (FSDP2): the network's structure on the meta device, taken at setup before it
        # is sharded, into which the gathered copies of structured/channel-group pruning and compaction are built
        self._skeleton: nn.Module | None = None
        # what the masks zero: parameter name -> parameter, and -> its mask in the parameter's dtype/device
        self._params: dict[str, Tensor] = {}
        self._fast_masks: dict[str, Tensor] = {}
        self.example_input: Tensor | None = None
        self.compacted_model: nn.Module | None = None
        # what compaction did (structured: per layer), and the summary it printed
        self.compacted_layers: list[CompactedLayer] | None = None
        self.compaction_text: str | None = None
        self._pruned_units: set[int] | None = None
        # channel groups: the dependency graph of the network, built once per fit (not pickled)
        self.graph: DependencyGraph | None = None
        self._fx_failed = False  # torch.fx could not trace the network at setup: torch.export at train start
        # blocks: the candidates (names relative to the network), found once per fit or restored; the removed
        # ones in order; per candidate {"type", "parameters", "removed_at" (step), "loss_increase" (measured then)}
        self.block_candidates: list[str] | None = None
        self.removed_blocks: list[str] = []
        self.block_records: dict[str, dict[str, Any]] = {}
        self._recent_batches: list[tuple[Any, Any]] = []
        self._warned_keep_one = False

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
            ValueError: if no module matches, or if a pattern of ``include``, ``exclude`` or a key of
                ``layer_sparsity`` matches nothing it could apply to (a misspelled name would otherwise be
                ignored): the message names the pattern and the closest module names.
        """
        typed = []
        for name, module in model.named_modules():
            if not name or not isinstance(module, self._module_classes):
                continue
            if not isinstance(getattr(module, "weight", None), Tensor):
                continue
            typed.append((name, module))
        selected = [
            (name, module)
            for name, module in typed
            if (self.include is None or any(fnmatch.fnmatchcase(name, p) for p in self.include))
            and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
        ]
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
        names = [n for n, _ in model.named_modules() if n]
        self._check_patterns(
            "include", self.include or [], [n for n, _ in typed], names, "module of `module_types`"
        )
        self._check_patterns("exclude", self.exclude, names, names, "module of the network")
        self._check_patterns(
            "layer_sparsity", list(self.layer_sparsity), [n for n, _ in selected], names, "pruned module"
        )
        return dict(selected)

    def _check_patterns(
        self, option: str, patterns: list[str], targets: list[str], names: list[str], what: str
    ) -> None:
        """Refuse the first of ``patterns`` (globs of ``option``) that matches none of ``targets``, naming the
        closest of ``targets`` and, where it matches other modules of the network (``names``), why they are no
        ``what``."""
        for pattern in patterns:
            if any(fnmatch.fnmatchcase(t, pattern) for t in targets):
                continue
            close = difflib.get_close_matches(pattern, targets, n=3, cutoff=0.6)
            elsewhere = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            key = "key" if option == "layer_sparsity" else "pattern"
            why = ""
            if elsewhere:
                why = (
                    f" It matches {elsewhere[:4]}{'...' if len(elsewhere) > 4 else ''}, which "
                    f"{'is' if len(elsewhere) == 1 else 'are'} not pruned (module_types={self.module_types}, "
                    f"include={self.include}, exclude={self.exclude}, keep_first_dense={self.keep_first_dense}, "
                    f"keep_last_dense={self.keep_last_dense})."
                )
            raise ValueError(
                f"ProgressivePruning: `{option}` {key} {pattern!r} matches no {what}, so it would be ignored."
                f"{why}{f' Close matches: {close}.' if close else ''} Candidates: {targets[:20]}"
                f"{'...' if len(targets) > 20 else ''} (glob patterns over the names of `named_modules()` of the "
                "network)."
            )

    # -------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_attribute(pl_module)
        model = target_model(pl_module, self.attribute)
        self._run_sharded_setup(trainer, pl_module, model)
        if self.by_blocks:  # found now when the input shape is known, else at the first training batch
            self.block_candidates = None
            shape = known_input_shape(trainer, pl_module)
            if shape is not None:
                self._find_block_candidates(model, torch.zeros(2, *shape))
            return
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
            else:  # traced at the first training batch; when torch.fx cannot, before any epoch (below)
                self._fx_failed = False
                try:
                    check_traceable(model, self.exclude)
                except DependencyError:
                    self._fx_failed = True

    def _check_attribute(self, pl_module: nn.Module) -> None:
        """An ``attribute`` other than the default must name a network of the LightningModule (else the whole
        LightningModule would be pruned, with other names, and the setting silently ignored)."""
        if self.attribute == "model" or isinstance(getattr(pl_module, self.attribute, None), nn.Module):
            return
        children = [n for n, _ in pl_module.named_children()]
        close = difflib.get_close_matches(self.attribute, children, n=3, cutoff=0.6)
        raise ValueError(
            f"ProgressivePruning: `attribute` {self.attribute!r} is not a network of {type(pl_module).__name__}"
            f"{f'; close matches: {close}' if close else ''}; its submodules: {children[:20]}. Give the name of the "
            "attribute that holds the network (`attribute: model` for ClassificationModule)."
        )

    def _run_sharded_setup(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module
    ) -> None:
        """Under a sharding strategy: refuse what does not run sharded yet (block pruning; compaction under tensor
        parallelism), and keep the network's skeleton (its structure on the ``meta`` device:
        setup runs before ``configure_model`` shards it), from which :meth:`_full_network` builds gathered copies
        for structured and channel-group masks, the trace and compaction."""
        from lightning_optim.callbacks._trainer import refuse_sharded, sharded_strategy
        from lightning_optim.functional.sharding import is_sharded_module, skeleton

        self._skeleton = None
        strategy = sharded_strategy(trainer)
        if strategy is None or not (
            self.structured or self.by_groups or self.by_blocks or self.compact_at_end
        ):
            return
        what = f"ProgressivePruning(granularity={self.granularity!r}, compact_at_end={self.compact_at_end})"
        if strategy == "FSDPStrategy":
            refuse_sharded(
                trainer,
                what,
                "FSDP1 flattens the parameters into flat shards, which the structured masks, the trace and "
                "compaction cannot read (they work on FSDP2's DTensor parameters)",
                'ModelParallelStrategy with ClassificationModule(sharding="fsdp2"), DDP (`strategy="ddp"`), or '
                '`granularity="unstructured"`',
            )
        if self.by_blocks:
            refuse_sharded(
                trainer,
                what,
                "block pruning measures and removes whole blocks of the network during the fit, which is not built "
                "for sharded parameters",
                'DDP instead (`strategy="ddp"`), or `granularity="channel_groups"` (compacted at the end)',
            )
        if "tensor parallel" in strategy and self.compact_at_end:
            refuse_sharded(
                trainer,
                what,
                "compaction under tensor parallelism would have to split the compacted layers over the "
                "tensor-parallel ranks again with the LightningModule's plan, which was written for the original "
                "widths (the masks themselves work: structured, neuron, head and channel-group masks are computed "
                "on whole weights and split as each weight is)",
                "`compact_at_end=False` (compact the saved network afterwards on one device with "
                "`lightning_optim.functional.pruning.compact_model`), FSDP2 (`tensor_parallel_size=1` with "
                'ClassificationModule(sharding="fsdp2")), or DDP (`strategy="ddp"`)',
            )
        if is_sharded_module(model):
            refuse_sharded(
                trainer,
                what,
                "the network was sharded before the callback's setup, so no plain copy of its structure can be "
                "kept for the gathered copies that structured masks and compaction work on",
                "sharding it in `configure_model`, as ClassificationModule(sharding='fsdp2') does, or DDP "
                '(`strategy="ddp"`)',
            )
        if model is pl_module and self.compact_at_end:
            refuse_sharded(
                trainer,
                what,
                "compaction replaces the pruned network, which must then be an attribute of the LightningModule",
                '`attribute` naming the network (ClassificationModule: `model`), or DDP (`strategy="ddp"`)',
            )
        self._skeleton = skeleton(model)

    def _full_network(self, pl_module: pl.LightningModule, model: nn.Module) -> nn.Module:
        """``model``; a sharded one (FSDP2) as a plain CPU copy with its weights gathered from the shards (a
        collective: every rank calls it at the same point), for what needs the whole network (structured and
        channel-group scores, the trace, compaction). The copy is dropped by the caller."""
        from lightning_optim.functional.sharding import gathered_copy, is_sharded_module, matching_skeleton

        if not is_sharded_module(model):
            return model
        plain = matching_skeleton(
            model, getattr(pl_module, "unsharded_skeleton", None), getattr(self, "_skeleton", None)
        )
        if plain is None:
            raise ValueError(
                "ProgressivePruning: the sharded network has no plain skeleton to gather its weights into (shard it "
                "in `configure_model` as ClassificationModule(sharding='fsdp2') does, after the callback's setup)."
            )
        return gathered_copy(model, plain)

    def _run_trace(self, pl_module: pl.LightningModule, model: nn.Module, example: Tensor) -> None:
        """:meth:`_run_build_graph` of ``model``; a sharded one traced on a gathered copy, dropped after (with a
        garbage collection: the trace leaves reference cycles that would otherwise keep the copy's weights, the
        whole network's size, alive on every rank until Python's next full collection)."""
        full = self._full_network(pl_module, model)
        self._run_build_graph(full, example)
        if full is not model:
            del full
            gc.collect()

    def _reshard(self, trainer: pl.Trainer, pl_module: pl.LightningModule, sharded: bool) -> None:
        """After compaction replaced a sharded network by its plain compacted copy: shard it again with the
        LightningModule's ``configure_model`` (``ClassificationModule(sharding="fsdp2")``: idempotent, it shards
        what is not sharded and keeps the new skeleton), so the rest of the fit and its checkpoints stay sharded;
        a ``configure_model`` that does not shard it leaves it whole on every rank, with a warning."""
        from lightning_optim.functional.sharding import is_sharded_module, skeleton

        if not sharded:
            return
        compacted = target_model(pl_module, self.attribute)
        self._skeleton = skeleton(compacted)
        device = trainer.strategy.root_device
        compacted.to(device)
        pl_module.configure_model()
        gc.collect()  # the sharded network it replaces, held by reference cycles: its shards go now
        if not is_sharded_module(target_model(pl_module, self.attribute)):
            rank_zero_warn(
                "ProgressivePruning: the compacted network was not sharded again by the LightningModule's "
                "`configure_model`; every rank holds it whole from now on."
            )

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # which callback states the checkpoint holds: said when it holds none of this callback
        self._checkpoint_states = [str(k) for k in checkpoint.get("callbacks", {})]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.by_groups and self.graph is None and self._fx_failed:
            self._run_graph_from_loader(trainer, pl_module)
        self._run_start(trainer, pl_module)

    def _run_graph_from_loader(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """torch.fx cannot trace the network: trace it with torch.export on a first batch of the training data
        now, before any epoch, so that a network no tracer follows is refused before training."""
        loader = trainer.train_dataloader
        example = None
        if loader is not None:
            try:
                example = example_from_batch(next(iter(loader)))
            except (StopIteration, TypeError):
                example = None
        if example is None:
            return  # the first training batch will say what is missing
        self.example_input = example
        self._run_trace(pl_module, target_model(pl_module, self.attribute), example)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if (
            self.compact_at_end or self.structured or self.by_groups or self.by_blocks
        ) and self.example_input is None:
            self.example_input = example_from_batch(batch)
        if self.by_blocks:
            if self.block_candidates is None:
                if self.example_input is None:
                    raise ValueError(
                        f"ProgressivePruning(granularity={self.granularity!r}) runs the network on an example "
                        "input to find its blocks, and none is known: set `example_input_array` on the "
                        "LightningModule, give the data module an `input_shape`, or use batches whose inputs "
                        "are one tensor."
                    )
                self._find_block_candidates(target_model(pl_module, self.attribute), self.example_input)
                self._run_keep_checkpoint_zeros(trainer, pl_module)
            self._maybe_prune(trainer, pl_module, batch)  # an event due before this batch's step (step 0)
            return
        if self.by_groups and self.graph is None:
            if self.example_input is None:
                raise ValueError(
                    f"ProgressivePruning(granularity={self.granularity!r}"
                    f"{', compact_at_end=True' if self.compact_at_end else ''}) traces the network on an example "
                    "input, and none is known: set `example_input_array` on the LightningModule, give the data "
                    "module an `input_shape`, or use batches whose inputs are one tensor."
                )
            model = target_model(pl_module, self.attribute)
            self._run_trace(pl_module, model, self.example_input)
            self._run_layer_norm_masks(model)  # restored masks (resume) that a layer norm normalises across
            self._run_keep_checkpoint_zeros(trainer, pl_module)
            self._maybe_prune(trainer, pl_module)  # an event held back until the graph was known

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self._run_mask_gradients()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._run_step(trainer, pl_module, batch)
        if self.by_blocks:
            self._keep_recent_batch(batch)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # the removed blocks, relative to the LightningModule: its on_load_checkpoint removes them from the
        # unpruned architecture before the weights load (restore_removed_blocks)
        if self.removed_blocks:
            prefix = self._block_prefix(pl_module)
            entry = checkpoint.setdefault(CHECKPOINT_KEY, {})
            entry[REMOVED_BLOCKS_KEY] = [prefix + n for n in self.removed_blocks]

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

    def done_epoch(self, trainer: Any) -> int | None:
        """The first epoch at whose start the ramp is done by its settings (``end`` with ``unit="epoch"``; the
        epoch that follows the optimizer step ``end`` with ``unit="step"``), or ``None`` when unknown (unsized
        data). A later phase that starts after this one (``start_after``) checks it against ``max_epochs``."""
        if self.unit == "epoch" and self._end_step is None:
            return self.end
        spe = self._steps_per_epoch(trainer)
        if spe is None:
            return None
        end_step = self._end_step if self._end_step is not None else self.end
        return math.ceil(end_step / spe)

    @property
    def phase_steps_done(self) -> int:
        """The pruning steps (events) applied so far."""
        return int(self._events_done)

    def describe_phase(self, trainer: Any, finished: bool = False) -> str:
        """What the ramp does, in plain words (for messages; the contract's word is :meth:`phase_state`):
        ``"pending (first pruning step at epoch 2)"``, ``"running (pruning step 1 of 4, target 35%)"``,
        ``"done (target 80%)"``; with ``finished=True`` also ``"never started"`` or ``"stopped before its end
        (...)"``."""
        target = f"target {self.current_sparsity:.0%}"
        if self._end_step is None or self._events_done == 0:
            if finished:
                return "never started"
            return f"pending (first pruning step at {self.unit} {self.start})"
        steps = len(self._events())
        if self._events_done >= steps:
            return f"done ({target})"
        where = f"pruning step {self._events_done} of {steps}, {target}"
        return f"stopped before its end ({where})" if finished else f"running ({where})"

    def compact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Remove what the masks zero now, during ``fit`` (structured and channel-group granularities): the
        network is replaced by its compacted version (checked against the masked one), the optimizers are
        rebuilt for it (their state carried over where shapes allow is not attempted: it restarts), and under
        DDP the model is wrapped again. Called by a later phase before it starts (quantization-aware training
        compacts first: fused QAT divides by the batch-norm scales that structured pruning zeroes), or by the
        user. The masks stay (the summaries read them) but are no longer applied.

        Returns:
            Whether the network was compacted now (``False``: unstructured or block pruning, nothing pruned yet,
            or compacted already).
        """
        if not (self.structured or self.by_groups) or self.compacted or not self.masks:
            return False
        if not any(not bool(m.all()) for m in self.masks.values()):
            return False
        from lightning_optim.callbacks._trainer import sharded_strategy

        strategy = sharded_strategy(trainer)
        if strategy is not None and "tensor parallel" in strategy:
            raise ValueError(
                f"ProgressivePruning.compact() under {strategy}: compaction would have to split the compacted "
                "layers over the tensor-parallel ranks again with a plan written for the original widths. Keep the "
                "masks and compact the saved network on one device, or use FSDP2 or DDP."
            )
        events = self._events()
        if self._events_done < len(events):
            raise ValueError(
                f"ProgressivePruning.compact() at optimizer step {trainer.global_step}: the ramp has "
                f"{len(events) - self._events_done} pruning steps left (the last at step {events[-1]}), which would "
                "prune the compacted network with the masks of the one before. Compact after the ramp (a later "
                "phase with `start_after: pruning` does), or set `end` earlier."
            )
        self._run_compact(trainer, pl_module)
        if self.compacted:
            self._rewrap_distributed(trainer, pl_module)
            if trainer.optimizers:
                trainer.strategy.setup_optimizers(trainer)
        return self.compacted

    def _run_compact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The compaction of ``compact_at_end``, run now."""
        self._apply_weight_masks()
        if self.by_groups:
            self._run_remove_units(trainer, pl_module)
            return
        from lightning_optim.functional.pruning.compaction import compact_model_report
        from lightning_optim.functional.sharding import is_sharded_module

        original = target_model(pl_module, self.attribute)
        if self.example_input is None:
            rank_zero_warn("ProgressivePruning: no training batch seen; the model was not compacted.")
            return
        sharded = is_sharded_module(original)
        model = self._full_network(
            pl_module, original
        )  # sharded: a gathered copy, compacted whole on every rank
        device = next(model.parameters()).device
        before = sum(p.numel() for p in model.parameters())
        self.compacted_model, self.compacted_layers = compact_model_report(
            model, self.example_input.to(device)
        )
        if original is not pl_module:
            setattr(pl_module, self.attribute, self.compacted_model)
        self._params, self._fast_masks = {}, {}
        self.compacted = True
        self._reshard(trainer, pl_module, sharded)
        self._rebuild_optimizers(trainer)
        after = sum(p.numel() for p in self.compacted_model.parameters())
        self._say_compaction(trainer, f"{before:,} -> {after:,}")

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
            graph = build_dependency_graph(model, example.to(device), leaves=self.exclude)
        except DependencyError as err:
            raise self._trace_error(err) from err
        if self.heads_only:
            if not any(g.kind == "heads" for g in graph.groups):
                raise ValueError(
                    "ProgressivePruning(granularity='heads') found no attention heads in the network (a width "
                    "split into heads feeding q @ k^T, scaled_dot_product_attention or nn.MultiheadAttention); "
                    "use granularity='channel_groups' for its channels and neurons."
                )
            for g in graph.groups:
                free = [u for u in g.units if graph.units[u].pinned is None]
                if g.kind != "heads" and free:
                    for u in free:
                        graph.units[u].pinned = NOT_HEADS
                    graph.pinned[NOT_HEADS] = graph.pinned.get(NOT_HEADS, 0) + len(free)
        if not self._modules:
            self._modules = self.select_modules(model)
        excluded = []
        for g in graph.groups:
            free = [u for u in g.units if graph.units[u].pinned is None]
            # an attention layer (nn.MultiheadAttention) is selected with its output projection
            if free and not any(p in self._modules or f"{p}.out_proj" in self._modules for p in g.producers):
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

    # -------------------------------------------------------------------------------------- blocks
    def _find_block_candidates(self, model: nn.Module, example: Tensor) -> None:
        """The candidate blocks of ``model`` (:func:`find_blocks`), filtered by ``include``/``exclude`` and
        ``keep_first_dense``/``keep_last_dense``; refused when there is none."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            found = find_blocks(model, example.to(device))
        except BlockPruningError as err:
            raise BlockPruningError(f"ProgressivePruning(granularity={self.granularity!r}): {err}") from err
        selected = [
            n
            for n in found
            if (self.include is None or any(fnmatch.fnmatchcase(n, p) for p in self.include))
            and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)
        ]
        if self.keep_first_dense and selected:
            selected = selected[1:]
        if self.keep_last_dense and selected:
            selected = selected[:-1]
        if not selected:
            chosen = (
                f" ({found} before include={self.include}, exclude={self.exclude}, "
                f"keep_first_dense={self.keep_first_dense}, keep_last_dense={self.keep_last_dense})"
                if found
                else ""
            )
            raise ValueError(
                f"ProgressivePruning(granularity={self.granularity!r}) found no block to remove in "
                f"{type(model).__name__}{chosen}: a block is an item of an nn.Sequential or nn.ModuleList, with "
                "parameters, that maps one tensor to one tensor of the same shape with a skip connection from "
                "its input (x + f(x): residual blocks, transformer layers). Prune channels instead with "
                "granularity='channel_groups'."
            )
        names = [n for n, _ in model.named_modules() if n]
        self._check_patterns("include", self.include or [], found, names, "candidate block")
        self._check_patterns("exclude", self.exclude, names, names, "module of the network")
        self.block_candidates = selected
        modules = dict(model.named_modules())
        self.block_records = {
            n: {
                "type": type(modules[n]).__name__,
                "parameters": sum(p.numel() for p in modules[n].parameters()),
                "removed_at": None,
                "loss_increase": None,
            }
            for n in selected
        }

    def _block_prefix(self, pl_module: nn.Module) -> str:
        """The name of the network inside the LightningModule, with a dot (``""`` when it is the module)."""
        return "" if target_model(pl_module, self.attribute) is pl_module else f"{self.attribute}."

    def _keep_recent_batch(self, batch: Any) -> None:
        """The last ``importance_batches - 1`` training batches, while an event is still to come."""
        if self.importance_batches <= 1 or self.phase_state(None) == "done":
            self._recent_batches = []
            return
        try:
            x, y, _ = unpack_batch(batch)
        except (TypeError, KeyError):
            return
        kept = [t.detach() if isinstance(t, Tensor) else t for t in (x, y)]
        self._recent_batches = [*self._recent_batches, tuple(kept)][1 - self.importance_batches :]

    def _prune_blocks(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, event_step: int, batch: Any
    ) -> None:
        """One event: remove the cheapest blocks so that ``round(target x candidates)`` are removed in all."""
        model = target_model(pl_module, self.attribute)
        candidates = self.block_candidates or []
        n = len(candidates)
        target = self._event_sparsity(event_step)
        wanted = num_pruned(n, target)
        if wanted >= n and n and not self._warned_keep_one:
            self._warned_keep_one = True
            rank_zero_warn(
                f"ProgressivePruning: the target sparsity ({target:.2f}) would remove every one of the {n} "
                f"candidate blocks; one is kept ({n - 1} removed)."
            )
        count = max(len(self.removed_blocks), min(wanted, n - 1))
        new = count - len(self.removed_blocks)
        chosen: list[str] = []
        scores: dict[str, float] = {}
        if new > 0:
            if trainer.global_rank == 0:  # the other ranks take rank 0's choice
                remaining = [b for b in candidates if b not in self.removed_blocks]
                scores = block_importance(
                    model, remaining, self._importance_data(batch), self._loss_fn(pl_module)
                )
                chosen = sorted(remaining, key=lambda b: scores[b])[:new]  # stable: ties in candidate order
            chosen, scores = broadcast_from_rank0(trainer, (chosen, scores))
            self._remove_blocks(trainer, pl_module, chosen)
            # the latest measurement of every block; for a removed block, the one that chose it
            for b, increase in scores.items():
                record = self.block_records.setdefault(b, {"type": None, "parameters": None})
                record["loss_increase"] = float(increase)
            for b in chosen:
                self.block_records[b]["removed_at"] = int(event_step)
        self.current_sparsity = target
        removed = len(self.removed_blocks)
        self.history.append(
            {
                "step": float(event_step),
                "target": target,
                "sparsity": removed / n if n else 0.0,
                "removed": float(removed),
            }
        )
        log_metrics(
            trainer,
            {
                "pruning/target_sparsity": target,
                "pruning/sparsity": removed / n if n else 0.0,
                "pruning/removed_blocks": float(removed),
            },
        )
        if chosen and self.verbose:
            increases = ", ".join(f"{b} ({scores[b]:+.4f})" for b in chosen)
            rank_zero_info(
                f"ProgressivePruning: step {event_step}, target {target:.1%} of {n} blocks: removed {increases} "
                f"(loss increase measured on {len(self._recent_batches) + 1} batch(es)); {removed}/{n} removed."
            )

    def _importance_data(self, batch: Any) -> list[tuple[Any, Any]]:
        try:
            x, y, _ = unpack_batch(batch)
        except (TypeError, KeyError) as err:
            raise ValueError(
                f"ProgressivePruning(granularity={self.granularity!r}) measures the loss of the network without "
                "each block on the training batch: batches must be (inputs, targets), (inputs, targets, index) "
                f"or a dict with 'input' and 'target' keys ({err})."
            ) from err
        return [*self._recent_batches, (x, y)]

    @staticmethod
    def _loss_fn(pl_module: nn.Module) -> Callable[[Any, Any], Tensor]:
        """The LightningModule's ``task_loss(outputs, targets)`` where it has one, else cross-entropy."""
        task_loss = getattr(pl_module, "task_loss", None)
        return task_loss if callable(task_loss) else (lambda out, y: F.cross_entropy(out.float(), y))

    def _remove_blocks(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]
    ) -> list[str]:
        """Replace ``names`` by :class:`SkippedBlock` (those not removed yet), then give the trainer a DDP wrapper
        and optimizers of the remaining parameters; returns the names replaced now."""
        model = target_model(pl_module, self.attribute)
        replaced = remove_blocks(model, names)
        self.removed_blocks += [b for b in names if b not in self.removed_blocks]
        if replaced:
            self._rewrap_distributed(trainer, pl_module)
            self._rebuild_optimizers_keeping_state(trainer)
        return replaced

    @staticmethod
    def _rewrap_distributed(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under DDP, wrap the LightningModule again: the old wrapper waits for gradients of removed parameters.
        Every rank removes the same blocks at the same step, so every rank re-wraps together."""
        from torch.nn.parallel import DistributedDataParallel

        strategy = trainer.strategy
        if isinstance(strategy.model, DistributedDataParallel) and callable(
            getattr(strategy, "configure_ddp", None)
        ):
            strategy.model = pl_module
            strategy.configure_ddp()

    @staticmethod
    def _rebuild_optimizers_keeping_state(trainer: pl.Trainer) -> None:
        """Optimizers of the network's current parameters (``configure_optimizers`` again, so that a checkpoint
        resumes), with what the old ones had: per-parameter state (momentum, moments), the param groups' settings
        (learning rates) and the schedulers' positions. Where the structure changed (a param group emptied), the
        optimizer state restarts, with a warning."""
        if not trainer.optimizers:
            return
        old_optimizers = list(trainer.optimizers)
        old_configs = list(trainer.lr_scheduler_configs)
        trainer.strategy.setup_optimizers(trainer)
        restarted = len(old_optimizers) != len(trainer.optimizers)
        for old, new in zip(old_optimizers, trainer.optimizers):
            if type(old) is not type(new) or len(old.param_groups) != len(new.param_groups):
                restarted = True
                continue
            for old_group, new_group in zip(old.param_groups, new.param_groups):
                new_group.update({k: v for k, v in old_group.items() if k != "params"})
                for p in new_group["params"]:
                    if p in old.state:
                        new.state[p] = old.state[p]
        if not restarted and len(old_configs) == len(trainer.lr_scheduler_configs):
            for old_config, new_config in zip(old_configs, trainer.lr_scheduler_configs):
                if type(old_config.scheduler) is type(new_config.scheduler):
                    new_config.scheduler.load_state_dict(old_config.scheduler.state_dict())
        if restarted:
            rank_zero_warn(
                "ProgressivePruning: the optimizers of the network without the removed blocks differ in structure "
                "from the previous ones (param groups); their state and schedules restart."
            )

    def block_summary(self) -> tuple[str, int, int, int]:
        """Blocks: a Markdown table of the candidate blocks (type, parameters, the step each was removed at and
        the loss increase measured then), the total, and ``(text, requested, removed, candidates)``; requested
        is the final target, ``round(final_sparsity x candidates)`` (at most all but one)."""
        candidates = self.block_candidates or []
        n = len(candidates)
        requested = min(num_pruned(n, self.final_sparsity), max(n - 1, 0))
        lines = [
            "| block | type | parameters | removed at step | loss increase without it (last measured) |",
            "|---|---|---:|---:|---:|",
        ]
        total = removed_parameters = 0
        for b in candidates:
            record = self.block_records.get(b, {})
            parameters = record.get("parameters")
            total += parameters or 0
            when, increase = record.get("removed_at"), record.get("loss_increase")
            if b in self.removed_blocks:
                removed_parameters += parameters or 0
            else:
                when = "kept"
            lines.append(
                f"| {b} | {record.get('type') or '-'} | {'-' if parameters is None else parameters} "
                f"| {'-' if when is None else when} | {'-' if increase is None else f'{increase:+.4f}'} |"
            )
        removed = len(self.removed_blocks)
        share = f"{removed / requested:.0%}" if requested else "-"
        lines.append(
            f"| **total** | {removed} of {n} removed, {requested} requested ({share}) "
            f"| {removed_parameters} of {total} removed | | |"
        )
        head = "ProgressivePruning: blocks removed (replaced by identity)"
        return "\n".join([head, *lines]), requested, removed, n

    # -------------------------------------------------------------------------------------- internals
    def _resolve_steps(self, trainer: pl.Trainer) -> None:
        if self.unit == "step":
            start, end = self.start, self.end
            frequency = self.frequency or max(1, (end - start) // 10)
        else:
            steps_per_epoch = self._steps_per_epoch(trainer)
            if steps_per_epoch is None:
                raise ValueError("`unit='epoch'` needs a sized training dataloader; use `unit='step'`.")
            start, end = self.start * steps_per_epoch, self.end * steps_per_epoch
            frequency = self.frequency or steps_per_epoch
        self._start_step, self._end_step, self._frequency_steps = start, end, frequency

    def _run_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = target_model(pl_module, self.attribute)
        if not self._modules and not self.by_blocks:
            self._modules = self.select_modules(model)
        state = self._loaded_state
        if state is not None:
            self._start_step, self._end_step = state["start_step"], state["end_step"]
            self._frequency_steps = state["frequency_steps"]
            self._events_done = state["events_done"]
            self.current_sparsity = state["current_sparsity"]
            self.history = list(state.get("history", []))
            # one mask whole at a time: where the pruning steps keep the masks sharded (FSDP2), each rank keeps
            # the part of its shard
            params = dict(model.named_parameters())
            if not (
                CALLBACK_GRANULARITIES[self.granularity] == "unstructured"
                and can_shard_masks(m.weight for m in self._modules.values())
            ):
                params = {}
            self._set_masks(
                {
                    n: self._like_weight(params, n, unpack_mask(p, state["shapes"][n]))
                    for n, p in state["masks"].items()
                }
            )
            kept, kept_shapes = state.get("kept_zeros", {}), state.get("kept_zeros_shapes", {})
            self.kept_zeros = {
                n: self._like_weight(params, n, unpack_mask(p, kept_shapes[n])) for n, p in kept.items()
            }
            self._loaded_state = None
            if self.removed_blocks:  # already removed by the LightningModule's on_load_checkpoint, if it can
                replaced = self._remove_blocks(trainer, pl_module, list(self.removed_blocks))
                if replaced:
                    rank_zero_info(
                        f"ProgressivePruning: removed the blocks {replaced} as the checkpoint records."
                    )
        elif self._end_step is None:
            self._resolve_steps(trainer)
        self._run_check_fits(trainer)
        if trainer.ckpt_path is not None and not self._state_restored and not self.compacted:
            self._kept_zeros_pending = True  # a resume from a checkpoint without this callback's state
        self._build_targets(model)
        self._apply_weight_masks()
        self._run_layer_norm_masks(model)
        self._run_keep_checkpoint_zeros(trainer, pl_module)
        self._last_step = trainer.global_step
        self._maybe_prune(trainer, pl_module)

    def _steps_per_epoch(self, trainer: pl.Trainer) -> int | None:
        batches = getattr(trainer, "num_training_batches", None)
        if not isinstance(batches, (int, float)) or not math.isfinite(batches):
            return None
        # the last batches of an epoch make an optimizer step even when fewer than accumulate_grad_batches
        return max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))

    def _run_check_fits(self, trainer: pl.Trainer) -> None:
        """Before any epoch: a ramp whose remaining pruning steps all fall after the end of the run is refused
        (nothing would be pruned); one cut short by the end of the run is said with the sparsity it reaches."""
        if trainer.fast_dev_run or self._end_step is None:
            return
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - an unsized loader: nothing to compare with
            return
        if not isinstance(total, (int, float)) or not math.isfinite(total):
            return
        total = int(total)
        remaining = self._events()[self._events_done :]
        inside = [e for e in remaining if e <= total]  # an event at step `total` runs at the last batch's end
        if not remaining or len(inside) == len(remaining):
            return
        spe = self._steps_per_epoch(trainer) if self.unit == "epoch" else None
        epochs = f"{total / spe:g} epoch{'' if total == spe else 's'}" if spe else ""
        run = f"{total} optimizer steps" + (f", {epochs} of {spe} steps" if spe else "")

        def at(step: int) -> str:
            return f"optimizer step {step}" + (f" (epoch {step / spe:g})" if spe else "")

        if spe:
            fix = (
                f"set `end` <= {total // spe} (and `start` <= `end`), or train for `max_epochs` >= {self.end}"
            )
        else:
            fix = f"set `end` <= {total} (and `start` <= `end`), or train for `max_steps` >= {self._end_step}"
        what = "blocks" if self.by_blocks else "weights"
        if not inside and self._events_done == 0:
            raise ValueError(
                f"ProgressivePruning: the first pruning step is at {at(remaining[0])}, after the end of the run "
                f"({run}): no {what} would be pruned (0% of the `final_sparsity` {self.final_sparsity:.0%} "
                f"target). To prune in this run, {fix}."
            )
        reached = self._event_sparsity(inside[-1]) if inside else self.current_sparsity
        last = (
            f"the last pruning step in the run is at {at(inside[-1])}"
            if inside
            else "no pruning step is left"
        )
        rank_zero_warn(
            f"ProgressivePruning: the ramp ends at {at(remaining[-1])} but the run has {run}: {last}, so the "
            f"model ends at {reached:.1%} sparsity, short of the `final_sparsity` {self.final_sparsity:.1%} "
            f"target ({len(remaining) - len(inside)} of {len(self._events())} pruning steps fall after the end). "
            f"To reach the target, {fix}."
        )

    @torch.no_grad()
    def _run_keep_checkpoint_zeros(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A resume from a checkpoint that holds no state of this callback: what the checkpoint holds pruned (weights
        or channels that are exactly zero, removed blocks) is kept as masks that every later pruning step keeps too,
        and a warning says so (the ramp itself is laid out from the settings). Channel groups: once traced."""
        if not self._kept_zeros_pending or (self.by_groups and self.graph is None):
            return
        if self.by_blocks and self.block_candidates is None:
            return
        self._kept_zeros_pending = False
        model = target_model(pl_module, self.attribute)
        held = self._checkpoint_states
        source = (
            f"holds no state of this callback (its state key {self.state_key!r} is not among the checkpoint's "
            f"callback states {held}: saved without it, or with other `final_sparsity`, `granularity`, `include` "
            "or `exclude`)"
            if held is not None
            else "holds no callback states"
        )
        ramp = (
            f"{len(self._events())} pruning steps from optimizer step {self._start_step} to {self._end_step}"
        )
        head = (
            f"ProgressivePruning: resuming from {trainer.ckpt_path}, which {source}. The ramp is laid out from the "
            f"settings ({ramp}), "
        )
        if self.by_blocks:
            removed = [n for n, m in model.named_modules() if n and is_removed_block(m)]
            candidates = set(self.block_candidates or [])
            self.removed_blocks += [b for b in removed if b in candidates and b not in self.removed_blocks]
            rank_zero_warn(
                head
                + f"and the blocks the checkpoint holds removed stay removed ({removed or 'none'}): no pruning "
                "step brings them back."
            )
            return
        weights = {f"{n}.weight": m.weight for n, m in self._modules.items()}
        if self.by_groups:
            assert self.graph is not None
            full = self._full_network(pl_module, model)  # a sharded network: a gathered copy
            units = zero_units(full, self.graph)
            kept = {n: m.cpu() for n, m in unit_masks(full, self.graph, units).items()}
            if full is not model:
                del full
                gc.collect()
            free = sum(u.pinned is None for u in self.graph.units)
            share = len(units) / max(free, 1)
            count = (
                f"{len(units):,} channels that are zero in the checkpoint ({share:.1%} of the prunable ones)"
            )
        else:
            keeps = {}
            for name, w in weights.items():
                keep = w.detach().ne(0)
                if self.structured and w.dim() > 1:
                    keep = keep.flatten(1).any(1).view(-1, *([1] * (w.dim() - 1)))
                # of a sharded weight (FSDP2), the part of its shard
                keeps[name] = keep if is_sharded(keep) else keep.cpu()
            counts = dict(zip(keeps, mask_counts(list(keeps.values()))))  # a collective when sharded
            kept = {n: m for n, m in keeps.items() if counts[n] < m.numel()}
            zeros = sum((m.numel() - counts[n]) * (weights[n].numel() // m.numel()) for n, m in kept.items())
            total = sum(w.numel() for w in weights.values())
            unit = "weights" if not self.structured else "weights (of whole zero units)"
            share = zeros / max(total, 1)
            count = f"{zeros:,} {unit} that are zero in the checkpoint ({share:.1%} of the pruned layers' weights)"
        self.kept_zeros = kept
        if kept:
            self._set_masks(
                self._and_kept(dict(self.masks) if self.masks else {n: m.clone() for n, m in kept.items()})
            )
            self._build_targets(model)
            self._apply_weight_masks()
            self._run_layer_norm_masks(model)
            self._clear_optimizer_state(trainer)
        rank_zero_warn(
            head
            + f"and the {count} are kept at zero as masks: no pruning step revives them (the sparsity may "
            "exceed the schedule's target where the checkpoint holds more zeros). To continue the checkpoint's own "
            "ramp instead, resume with the settings it was saved with."
        )

    def _and_kept(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """``masks`` that also prune what :attr:`kept_zeros` keeps at zero (a resume without this callback's state)."""
        for name, keep in self.kept_zeros.items():
            mask = masks.get(name)
            if mask is None:
                masks[name] = keep.clone()
                continue
            if is_sharded(mask) and not is_sharded(keep):  # a whole keep-mask: this rank's part of it
                keep = shard_like(keep.to(mask.to_local().device), mask)
            elif not is_sharded(mask):  # a whole mask (computed on gathered weights): the whole keep-mask
                keep = gather_mask(keep).to(mask.device) if is_sharded(keep) else keep.to(mask.device)
            masks[name] = mask & (keep if keep.shape == mask.shape else keep.expand_as(mask))
        return masks

    @staticmethod
    def _like_weight(params: dict[str, Tensor], name: str, mask: Tensor) -> Tensor:
        """``mask`` (whole) split as the parameter ``name`` of ``params`` is where that one is sharded: this
        rank's part (a ``DTensor``, on the parameter's device); ``mask`` itself otherwise."""
        param = params.get(name)
        if param is None or not is_sharded(param) or tuple(mask.shape) != tuple(param.shape):
            return mask
        return shard_like(mask.to(param.to_local().device), param)

    def _set_masks(self, masks: dict[str, Tensor]) -> None:
        """Hold ``masks``; the kept entries of the sharded ones are counted now (a collective: every rank sets
        the same masks), so that :meth:`layer_sparsities` never needs one."""
        self.masks = masks
        sharded = {n: m for n, m in masks.items() if is_sharded(m)}
        counts = mask_counts(list(sharded.values())) if sharded else []
        self._sharded_kept = {n: (id(m), c) for (n, m), c in zip(sharded.items(), counts)}

    def gathered_masks(self) -> dict[str, Tensor]:
        """The masks, whole, as plain ``bool`` tensors on the CPU: under FSDP2 each gathered from its parts (a
        collective: call it on every rank), equal to a single-process run's masks; otherwise copies of
        :attr:`masks` on the CPU."""
        return {n: gather_mask(m) for n, m in self.masks.items()}

    def _run_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any = None) -> None:
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self._last_step = step
        self._apply_weight_masks()
        self._maybe_prune(trainer, pl_module, batch)

    def _events(self) -> list[int]:
        """The optimizer steps of the pruning events (computed once per schedule)."""
        key = (self._start_step, self._end_step, self._frequency_steps)
        if getattr(self, "_events_cache", (None, None))[0] != key:
            self._events_cache = (key, pruning_events(*key))
        return self._events_cache[1]

    def _maybe_prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any = None) -> None:
        if self.by_groups and self.graph is None:  # traced at the first training batch, which runs it then
            return
        if self.by_blocks and (
            self.block_candidates is None or batch is None
        ):  # measured on a training batch
            return
        events = self._events()
        step = trainer.global_step
        if self._events_done >= len(events) or events[self._events_done] > step:
            return
        last = self._events_done
        while last + 1 < len(events) and events[last + 1] <= step:
            last += 1
        self._events_done = last + 1
        if self.by_blocks:
            self._prune_blocks(trainer, pl_module, events[last], batch)
        else:
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
        if (
            self.by_groups
        ):  # a sharded network: scored shard-wise (group_unit_scores), masks split at cast_masks
            masks = self._group_masks(model, event_step, target)
        else:
            weights = {f"{n}.weight": m.weight for n, m in self._modules.items()}
            overrides = {
                f"{n}.weight": self._event_sparsity(event_step, n)
                for n in self._modules
                if layer_final_sparsity(n, self.final_sparsity, self.layer_sparsity)[1]
            }
            # sharded weights (FSDP2): sharded masks computed shard-wise, the same on every rank by construction
            masks = compute_masks(
                weights, target, self.granularity, self.scope, self.importance, overrides, shard_masks=True
            )
        if any(is_sharded(m) for m in masks.values()):
            masks = {n: m if is_sharded(m) else m.cpu() for n, m in masks.items()}
        else:
            masks = {n: m.cpu() for n, m in broadcast_from_rank0(trainer, masks, tensorwise=True).items()}
        self._set_masks(self._and_kept(masks))
        self.current_sparsity = target
        self._build_targets(model)
        self._apply_weight_masks()
        self._run_layer_norm_masks(model)
        self._clear_optimizer_state(trainer)
        stats = self.layer_sparsities()
        record = {"step": float(event_step), "target": target, "sparsity": self.global_sparsity()}
        self.history.append(record)
        metrics = {"pruning/target_sparsity": target, "pruning/sparsity": record["sparsity"]}
        metrics.update({f"pruning/sparsity/{name}": s for name, (_, _, s) in stats.items()})
        log_metrics(trainer, metrics)

    def _run_layer_norm_masks(self, model: nn.Module) -> None:
        """Channel groups: the masked layer norms of the current masks on ``model`` (those of earlier masks
        are taken off first; none once the network is compacted)."""
        if not self.by_groups:
            return
        remove_layer_norm_masks(model)
        if self.graph is not None and self.graph.layer_norms and self.masks and not self.compacted:
            apply_layer_norm_masks(model, self.graph, pruned_units(self.graph, self.masks))

    def _build_targets(self, model: nn.Module) -> None:
        """What the masks zero, with each mask pre-cast to its tensor's dtype/device (the fast path): the
        weights, and with structured pruning the unit's bias and the normalization layer that follows (channel
        groups: the masks already name every parameter they zero)."""
        params = dict(model.named_parameters())
        # a network captured for PT2E QAT holds the same parameters under a prefix (``pt2e_graph.``)
        prefix = getattr(model, "parameter_prefix", "")
        if prefix:
            params.update({n[len(prefix) :]: p for n, p in params.items() if n.startswith(prefix)})
        masks = (
            unit_masks_with_followers(self.masks, params, self._followers) if self.structured else self.masks
        )
        self._params = {n: params[n] for n in masks}
        self._fast_masks = {}  # the old ones freed before the new ones are made
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
        self._recent_batches = []
        if self.by_blocks:  # the removed blocks are gone already: nothing to compact
            if self.verbose and self.block_candidates:
                rank_zero_info(self.block_summary()[0])
            if self.compact_at_end:
                self.compacted_model = target_model(pl_module, self.attribute)
            return
        self._apply_weight_masks()
        if self.verbose and self.masks:
            rank_zero_info(self.summary_table())
        if self.compact_at_end and self.compacted:
            rank_zero_info(
                "ProgressivePruning: the network was compacted already (during the fit, or before a resume)."
            )
        elif self.compact_at_end:
            self._run_compact(trainer, pl_module)

    @staticmethod
    def _rebuild_optimizers(trainer: pl.Trainer) -> None:
        """The optimizers of the compacted network (their state restarts): a checkpoint taken from here on holds
        optimizer state of the new shapes, so it resumes."""
        if trainer.optimizers:
            trainer.strategy.setup_optimizers(trainer)

    def _run_remove_units(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Channel groups: remove the pruned units from the network (checked against the masked network), put
        the result in its place, and say what was requested, removed and kept."""
        from lightning_optim.functional.sharding import is_sharded_module

        original = target_model(pl_module, self.attribute)
        if self.graph is None:
            rank_zero_warn(
                "ProgressivePruning: no training batch seen, no graph; the model was not compacted."
            )
            return
        sharded = is_sharded_module(original)
        model = self._full_network(
            pl_module, original
        )  # sharded: a gathered copy, compacted whole on every rank
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        example = self.example_input
        if example is None:
            shape = known_input_shape(trainer, pl_module)
            example = torch.zeros(2, *shape) if shape is not None else None
        pruned = pruned_units(self.graph, self.masks)
        self.compacted_model = remove_units(
            model, self.graph, pruned, example.to(device) if example is not None else None
        )
        if original is not pl_module:
            setattr(pl_module, self.attribute, self.compacted_model)
        self._params, self._fast_masks = {}, {}
        self.compacted = True
        self._reshard(trainer, pl_module, sharded)
        self._rebuild_optimizers(trainer)
        self._pruned_units = pruned
        before = sum(p.numel() for p in model.parameters())
        after = sum(p.numel() for p in self.compacted_model.parameters())
        self._say_compaction(trainer, f"{before:,} -> {after:,}")

    def _say_compaction(self, trainer: pl.Trainer, sizes: str) -> None:
        """Print the compaction summary once, on rank 0 (a warning where nothing could be removed), keep it in
        :attr:`compaction_text`, and log ``pruning/removed_fraction`` and ``pruning/requested_fraction``."""
        report, requested, removed, total = self.compaction_summary()
        self.compaction_text = f"{report}\nParameters: {sizes}."
        if removed == 0 and requested > 0:
            rank_zero_warn(f"ProgressivePruning: nothing could be removed.\n{self.compaction_text}")
        else:
            rank_zero_info(self.compaction_text)
        log_metrics(
            trainer,
            {
                "pruning/removed_fraction": removed / total if total else 0.0,
                "pruning/requested_fraction": requested / total if total else 0.0,
            },
        )

    def compaction_summary(self, pruned: set[int] | None = None) -> tuple[str, int, int, int]:
        """What compaction removed, as text that reads in 100 columns, and ``(text, requested, removed, units)``.

        The text is a headline (removed of requested), a table and the reasons as footnotes (``(a) 12 kept: ...``):
        with channel groups, per coupling group, the channels requested (the final target, per group with
        ``scope="layer"`` or an override, else in total) and removed, over the groups one of whose producers is
        selected (a group of the network's outputs alone is listed, not counted), then the graph's own summary;
        with ``granularity="structured"`` (after compaction), per pruned layer, the units its mask zeroes and
        the units removed (:func:`~lightning_optim.functional.pruning.compaction.format_compaction`); with
        blocks, :meth:`block_summary`.
        """
        if self.by_blocks:
            return self.block_summary()
        if self.structured:
            return self._structured_summary()
        graph = self.graph
        if graph is None:
            return "ProgressivePruning: no dependency graph (no fit yet).", 0, 0, 0
        if pruned is None:
            pruned = self._pruned_units if self.compacted and self._pruned_units is not None else None
        pruned = pruned_units(graph, self.masks) if pruned is None else pruned
        rows: list[list[Any]] = []
        reasons: list[str] = []
        kept: dict[str, int] = {}
        requested_total = removed_total = total = ranked = 0
        names = self._group_names()
        for g in graph.groups:
            units = [graph.units[u] for u in g.units]
            if all(u.pinned in (EXCLUDED, NOT_HEADS) for u in units) or (
                self.heads_only and g.kind != "heads"
            ):
                continue
            layer = self._group_layer(g.producers or [g.name])
            final = layer_final_sparsity(layer, self.final_sparsity, self.layer_sparsity)[0]
            n = len(units)
            removed = sum(u.id in pruned for u in units)
            why = sorted({u.pinned for u in units if u.pinned is not None})
            for reason in why:
                kept[reason] = kept.get(reason, 0) + sum(u.pinned == reason for u in units)
            reasons += why
            name = names.get(g.id, g.name)
            if len(g.producers) > 1:
                name += f" (+{len(g.producers) - 1})"
            if all(u.pinned == OUTPUT for u in units):  # the network's outputs (logits): never asked for
                rows.append([name, n, "-", 0, why])
                continue
            if self.scope == "global" and layer is None:
                ranked += n
                requested: Any = "global"
            else:
                requested = int(round(final * n))
                requested_total += requested
            total += n
            removed_total += removed
            rows.append([name, n, requested, removed, why])
        requested_total += int(round(self.final_sparsity * ranked))
        keys = footnote_keys(reasons)
        limit = 50
        table = padded_table(
            ["coupling group", "channels", "requested", "removed", "kept"],
            [
                [r[0] if len(r[0]) <= limit else "..." + r[0][-(limit - 3) :], r[1], r[2], r[3]]
                + ["".join(keys[w] for w in r[4])]
                for r in rows
            ]
            + [["**total**", total, requested_total, removed_total, ""]],
            right=(1, 2, 3),
        )
        share = f" ({removed_total / requested_total:.0%})" if requested_total else ""
        head = (
            f"ProgressivePruning: compaction removed {removed_total} of the {requested_total} channels requested"
            f"{share}, in coupling groups (channels that must go together; (+n): n more layers write them)."
        )
        notes = footnotes(keys, kept, width=100)
        # the graph's own count, and the reasons of the channels the table does not list
        graph_lines = textwrap.wrap(graph.summary().splitlines()[0], 100)
        for reason, n in sorted(graph.pinned.items(), key=lambda kv: -kv[1]):
            if reason not in keys:
                graph_lines += textwrap.wrap(
                    f"kept {n}: {reason}", 100, initial_indent="  ", subsequent_indent="    "
                )
        text = "\n".join(
            [*textwrap.wrap(head, 100), table, *(["kept because:", *notes] if notes else []), *graph_lines]
        )
        return text, requested_total, removed_total, total

    def _structured_summary(self) -> tuple[str, int, int, int]:
        if self.compacted_layers is None:
            return "ProgressivePruning: not compacted (yet).", 0, 0, 0
        requested = {
            name[: -len(".weight")]: int((~mask).sum())
            for name, mask in self.masks.items()
            if name.endswith(".weight")
        }
        text, asked, removed = format_compaction(
            self.compacted_layers, requested, title="ProgressivePruning: compaction", width=100
        )
        if any(r.kept_because in TIED for r in self.compacted_layers if r.name in requested):
            hint = (
                "granularity='channel_groups' prunes the channels that must go together (a residual stream, a "
                "concatenation) as one, and removes them."
            )
            text += "\n" + "\n".join(textwrap.wrap(hint, 100))
        units = sum(r.units for r in self.compacted_layers if r.name in requested)
        return text, asked, removed, units

    # -------------------------------------------------------------------------------------- reporting
    def layer_sparsities(self) -> dict[str, tuple[tuple[int, ...], int, float]]:
        """``{weight name: (shape, kept entries, sparsity)}`` of the masked weights; with channel groups
        ``{coupling group: ((channels,), kept channels, sparsity)}`` of the groups that can be pruned; with blocks
        ``{block: ((1,), 0 or 1 kept, sparsity)}`` of the candidate blocks."""
        if self.by_blocks:
            return {
                b: ((1,), int(b not in self.removed_blocks), float(b in self.removed_blocks))
                for b in self.block_candidates or []
            }
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
            if is_sharded(
                mask
            ):  # counted when the masks were set (a collective then; none here unless replaced)
                known = self._sharded_kept.get(name)
                count = known[1] if known is not None and known[0] == id(mask) else mask_counts([mask])[0]
                kept = count * (total // mask.numel())
            else:
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
        channels, kept channels, sparsity; blocks: :meth:`block_summary`)."""
        if self.by_blocks:
            return self.block_summary()[0]
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
        # whole and bit-packed (1/32 of float32 weights): a sharded mask is gathered one at a time (a collective:
        # Lightning dumps the callback states on every rank; rank 0 writes them), so any run resumes from them
        return {
            "masks": {n: pack_mask(gather_mask(m)) for n, m in masks.items()},
            "shapes": {n: tuple(m.shape) for n, m in masks.items()},
            "start_step": self._start_step,
            "end_step": self._end_step,
            "frequency_steps": self._frequency_steps,
            "events_done": self._events_done,
            "current_sparsity": self.current_sparsity,
            "history": list(self.history),
            "kept_zeros": {}
            if self.compacted
            else {n: pack_mask(gather_mask(m)) for n, m in self.kept_zeros.items()},
            "kept_zeros_shapes": {}
            if self.compacted
            else {n: tuple(m.shape) for n, m in self.kept_zeros.items()},
            "compacted": self.compacted,
            "block_candidates": None if self.block_candidates is None else list(self.block_candidates),
            "removed_blocks": list(self.removed_blocks),
            "block_records": {n: dict(r) for n, r in self.block_records.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state_restored = True
        if state_dict.get("end_step") is None:  # saved before the start of training: nothing to restore
            return
        self._loaded_state = dict(state_dict)
        self.compacted = bool(state_dict.get("compacted", False))
        self._start_step, self._end_step = state_dict["start_step"], state_dict["end_step"]
        self._frequency_steps = state_dict["frequency_steps"]
        self._events_done = state_dict["events_done"]
        if state_dict.get("block_candidates") is not None:  # the candidates of the unpruned network
            self.block_candidates = list(state_dict["block_candidates"])
        self.removed_blocks = list(state_dict.get("removed_blocks", []))
        self.block_records = {n: dict(r) for n, r in state_dict.get("block_records", {}).items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_params"] = {}
        state["_fast_masks"] = {}
        state["_sharded_kept"] = {}
        state["_modules"] = {}
        state["graph"] = None
        state["_recent_batches"] = []
        state["_skeleton"] = None  # the structure of a sharded network: taken again at setup
        return state
