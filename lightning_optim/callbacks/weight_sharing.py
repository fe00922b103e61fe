"""Weight sharing (non-linear quantization) with trained centroids, ending in an entropy-coded artifact."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from lightning_optim.callbacks._trainer import (
    DDP_ALTERNATIVE,
    broadcast_from_rank0,
    is_distributed,
    log_metrics,
    refuse_sharded,
    sharded_strategy,
)
from lightning_optim.callbacks.phases import PhaseState, find_phase, phase_done, target_model
from lightning_optim.checks import check_choice
from lightning_optim.functional.pruning.masks import (
    full_tensor,
    is_sharded,
    pack_mask,
    shard_like,
    unpack_mask,
)
from lightning_optim.functional.pruning.schedules import layer_final_sparsity
from lightning_optim.functional.quantization.export import unused_path
from lightning_optim.functional.weight_sharing import (
    BITS,
    STORAGE_DTYPES,
    SUFFIX,
    SharedWeight,
    SizeBreakdown,
    check_bits,
    check_bits_spec,
    check_init,
    cluster_weight,
    dense_state_dict_bytes,
    freeze_gradients_,
    load_shared_state_dict,
    pack_shared,
    select_shared,
    share_gradients_,
    size_breakdown,
    tie_optimizer_state_,
    unmatched_patterns,
    update_codebook_,
    write_shared_,
)
from lightning_optim.functional.weight_sharing.budget import (
    BudgetError,
    BudgetPlan,
    artifact_bytes,
    average_bits_budget,
    check_budget,
    check_sensitivity,
    curve_markdown,
    fit_budget,
    hessian_traces,
    layer_choices,
    measure_loss_costs,
    plot_curve,
    prune_smallest,
    size_accuracy_curve,
    smallest_size,
    solve_budget,
)
from lightning_optim.functional.weight_sharing.sharded import (
    ShardLayout,
    check_row_sharded,
    cluster_sharded,
    gathered_shared,
    local_index,
    local_part,
    share_gradients_sharded_,
    tie_optimizer_states_sharded_,
    update_codebooks_sharded_,
)

#: the metric of the size-accuracy curve (``curve_budgets``)
CURVE_METRIC = "top-1 on recent training batches"


class WeightSharing(Callback):
    r"""Share each layer's weights through a codebook of ``2**bits`` centroids, train the centroids, and save the
    network as a compact entropy-coded artifact (Deep Compression, Han et al. 2016: trained quantization and
    Huffman coding).

    At the start (``start_epoch``, or the first epoch after the phase named ``start_after`` is done, e.g.
    ``"pruning"``) every selected weight is clustered by 1-D k-means over its non-zero entries
    (:func:`~lightning_optim.functional.weight_sharing.cluster_weight`; initialisation ``init``) and replaced by
    its centroid. Entries that are exactly zero then (pruned by
    :class:`~lightning_optim.callbacks.ProgressivePruning`) take no codebook entry and stay zero; so does an
    entry another phase zeroes later. From then on, with ``train_centroids``, each centroid trains with the sum of
    the gradients of the weights that share it: the weights stay plain parameters, every weight of a cluster gets
    its centroid's gradient before the optimizer step (the optimizer's momentum and moments are tied per cluster
    when sharing starts, so that a cluster takes one step), and after the step the centroids are read back as the
    cluster means and written to the weights again; without it, the codebook is frozen. Biases and norms train
    as usual. Distillation and other loss terms act through the gradients, so they train the centroids too.

    At the end of ``fit`` the network is saved as an artifact
    (:func:`~lightning_optim.functional.weight_sharing.save_shared`: codebooks, Huffman-coded indices, coded
    positions of the non-zeros, other tensors raw or LZMA; a header with the state dict's skeleton and a CRC-32)
    into the run's log folder, loaded back into the network (so that what is evaluated afterwards is exactly what
    the file holds, also with float16 codebooks), and its size is reported per layer
    (:attr:`size_breakdown`) beside the dense float32 state dict (:attr:`dense_bytes`).
    ``load_shared(path, <the architecture>)`` rebuilds the model with torch alone.

    It is the ``"weight_sharing"`` compression phase: ``pending`` before the clustering, ``active`` in the epoch of
    the clustering (the network has just changed), ``done`` from the next one (centroid training is fine-tuning).

    Resume: the codebooks and every weight's centroid (packed) are in the callback's ``state_dict``, so a run
    resumed from a checkpoint continues exactly. DDP: every rank clusters the same synchronized weights, and under
    DDP the codebooks are taken from rank 0 after each step, so the ranks stay identical.

    FSDP2 (``ModelParallelStrategy`` with ``ClassificationModule(sharding="fsdp2")``: each weight a ``DTensor``
    split by rows, each rank holding its rows): each weight is gathered whole once to be clustered (the same k-means
    on every rank, rank 0's codebook taken); the codebooks are whole and the same on every rank, and each rank keeps
    its part of every index and writes the centroids into its shard
    (:mod:`~lightning_optim.functional.weight_sharing.sharded`). Each step, the per-cluster gradient sums of the local
    shards are summed over the mesh (one all-reduce for all the layers), and so are the cluster means read back
    after the step (one more) and, when sharing starts, the tied optimizer moments: the run equals one process with
    the ranks' batches together (within float rounding). The checkpoint state holds the whole indices (gathered at
    save; each rank takes its part at resume), and the artifact is packed from the gathered network (rank 0 writes
    it) with the sizes of one process's. Refused at setup under FSDP2, naming the alternative: ``size_budget_bytes``
    / ``average_bits`` and ``curve_budgets`` (they evaluate the whole network; use DDP, or fixed ``bits``), and
    tensor parallelism or FSDP1 (use FSDP2 or DDP).

    Args:
        bits: bits of each codebook (``2**bits`` centroids), an int in 1..8 for every weight with two or more
            dimensions (linear, convolution, embedding, attention projections), or a ``{glob pattern: bits}`` map
            (from YAML too): a parameter whose name (``"fc1.weight"``) or module name (``"fc1"``) matches a pattern
            takes the bits of the first that matches; parameters matching none stay float.
        init: the k-means initialisation: ``"linear"`` (evenly spaced between the smallest and largest weight,
            the best in Han et al.), ``"density"`` (quantiles) or ``"random"`` (Forgy).
        start_epoch: the first epoch with shared weights (0: from the start).
        start_after: the name of a compression phase (e.g. ``"pruning"``): sharing starts at the first epoch
            ``>= start_epoch`` at which that phase is done.
        train_centroids: train the centroids (else the codebook stays as k-means left it).
        include: glob patterns of parameters (or modules) to share; ``None``: all that ``bits`` selects.
        exclude: glob patterns of parameters (or modules) left float.
        max_iter: k-means (Lloyd) iterations at most per layer.
        seed: the random source of ``init="random"``.
        codebook_dtype: the artifact's codebook type: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (rounded
            at the export; the network is then loaded back from the file).
        other_dtype: the artifact's type for other floating values (biases, norms): ``None`` (their own),
            ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        export: save the artifact at the end of ``fit`` (and load it back into the network).
        export_path: the artifact's file; default ``<trainer.log_dir>/weight_sharing/model.lws``, versioned
            (``model-v1.lws``...), never overwriting an earlier file.
        attribute: the network is ``pl_module.<attribute>`` where present, else the LightningModule.
        verbose: print the size breakdown at the end.
        size_budget_bytes: the whole artifact's size in bytes: per-layer bit widths (from ``bit_choices``) and,
            with ``sparsity_choices``, per-layer sparsities are chosen when sharing starts to fit it with the least
            damage (:func:`~lightning_optim.functional.weight_sharing.budget.fit_budget`: exact artifact sizes,
            a multiple-choice knapsack). ``bits`` then only selects the layers (and ``fixed_bits`` fixes some).
        average_bits: instead of a byte budget, the average index bits per non-zero shared weight.
        bit_choices: the widths the budget search chooses from (default 1..8).
        fixed_bits: ``{glob pattern: bits}`` for layers whose width the user fixes under a budget (from YAML).
        sparsity_choices: extra sparsities (fractions) the budget search may give a layer (magnitude pruning of
            its smallest non-zero weights; the layer's own zeros are always kept); ``None``: none.
        sensitivity: what a layer's choice costs: ``"hessian"`` (HAWQ-V2: the layer's average Hessian trace x the
            squared perturbation; Dong et al., NeurIPS 2020) or ``"loss"`` (the measured loss increase with that
            layer alone shared that way). Both use the last ``sensitivity_batches`` training batches (cross-entropy
            of ``(input, target)`` batches); without them (sharing from the very first step) every layer weighs the
            same (plain squared perturbation), said in the log.
        sensitivity_batches: how many recent training batches the sensitivity uses.
        curve_budgets: whole-artifact budgets in bytes (e.g. ``[10_000, 20_000, 50_000]``) for a size-accuracy
            curve: when sharing starts, the network as it is then is shared post-training at each budget
            (:func:`~lightning_optim.functional.weight_sharing.budget.size_accuracy_curve`, widths from
            ``bit_choices``, sparsities from ``sparsity_choices``) and each copy's top-1 accuracy is measured on the
            last ``sensitivity_batches`` training batches (``(input, class target)`` batches; without them the
            curve is skipped, said in the log). The rows are in :attr:`curve` (and in checkpoints), printed when
            ``verbose``, and written as ``size_accuracy_curve.md`` (and ``.png`` with matplotlib) beside the
            artifact.

    Raises:
        ValueError: ``bits`` outside 1..8 (or a map with such a value), an unknown ``init``/``codebook_dtype``/
            ``other_dtype``, a negative ``start_epoch``, ``max_iter < 1``. At ``fit`` start (before any epoch):
            ``start_epoch`` not before ``max_epochs``, no phase called ``start_after``, a ``bits`` pattern that
            matches no parameter, no parameter to share, or a layer with fewer (non-zero) weights than centroids,
            counting what a pending ``ProgressivePruning`` named by ``start_after`` will prune (layer scope). Under
            a sharding strategy (at setup): tensor parallelism or FSDP1, and under FSDP2 ``size_budget_bytes``,
            ``average_bits`` or ``curve_budgets``.

    Example::

        from lightning_optim.callbacks import ProgressivePruning, WeightSharing
        pruning = ProgressivePruning(final_sparsity=0.9, start=0, end=4)
        sharing = WeightSharing(bits={"fc3": 5, "*": 4}, start_after="pruning")
        Trainer(max_epochs=8, callbacks=[pruning, sharing]).fit(ClassificationModule(LeNet300100()), datamodule=dm)
        sharing.exported_path, sharing.size_breakdown.total
        model = load_shared(sharing.exported_path, LeNet300100())   # torch alone

    In YAML::

        trainer:
          callbacks:
            - class_path: WeightSharing
              init_args: {bits: {"fc3": 5, "*": 4}, start_after: pruning}
    """

    #: FSDP2 (rows over a 1-D mesh) supported; the budget plan, the curve and tensor parallelism refused at setup
    sharded_parameters = "partial"

    phase_name = "weight_sharing"

    def __init__(
        self,
        bits: int | dict[str, int] = 4,
        init: str = "linear",
        start_epoch: int = 0,
        start_after: str | None = None,
        train_centroids: bool = True,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        max_iter: int = 300,
        seed: int = 0,
        codebook_dtype: str = "float32",
        other_dtype: str | None = None,
        export: bool = True,
        export_path: str | None = None,
        attribute: str = "model",
        verbose: bool = True,
        size_budget_bytes: int | None = None,
        average_bits: float | None = None,
        bit_choices: list[int] | None = None,
        fixed_bits: dict[str, int] | None = None,
        sparsity_choices: list[float] | None = None,
        sensitivity: str = "hessian",
        sensitivity_batches: int = 4,
        curve_budgets: list[int] | None = None,
    ) -> None:
        super().__init__()
        spec = check_bits_spec(bits)
        check_budget(size_budget_bytes, average_bits)
        self.size_budget_bytes = size_budget_bytes
        self.average_bits = average_bits
        self.bit_choices = sorted({check_bits(b, "bit_choices") for b in (bit_choices or BITS)})
        if fixed_bits is not None and size_budget_bytes is None and average_bits is None:
            raise ValueError(
                "`fixed_bits` fixes layers under a budget: give `size_budget_bytes` or `average_bits` too."
            )
        self.fixed_bits = {str(k): check_bits(v, f"fixed_bits[{k!r}]") for k, v in (fixed_bits or {}).items()}
        for x in sparsity_choices or []:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x < 1.0:
                raise ValueError(f"`sparsity_choices` must be fractions in [0, 1), got {x!r}.")
        self.sparsity_choices = [float(x) for x in sparsity_choices] if sparsity_choices else None
        self.sensitivity = check_sensitivity(sensitivity)
        if (
            isinstance(sensitivity_batches, bool)
            or not isinstance(sensitivity_batches, int)
            or sensitivity_batches < 1
        ):
            raise ValueError(f"`sensitivity_batches` must be an int >= 1, got {sensitivity_batches!r}.")
        self.sensitivity_batches = sensitivity_batches
        if curve_budgets is not None and not isinstance(curve_budgets, (list, tuple)):
            raise ValueError(
                f"`curve_budgets` must be a list of whole numbers of bytes >= 1, got {curve_budgets!r}."
            )
        for x in curve_budgets or []:
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ValueError(
                    f"`curve_budgets` must be whole numbers of bytes >= 1 (e.g. [10000, 20000, 50000]), got {x!r}."
                )
        self.curve_budgets = sorted(set(curve_budgets)) if curve_budgets else None
        #: the size-accuracy curve's rows (``curve_budgets``), empty until sharing starts
        self.curve: list[dict[str, Any]] = []
        self.curve_paths: dict[str, Path] = {}
        self.plan: BudgetPlan | None = None
        self._recent: deque = deque(maxlen=sensitivity_batches)
        self.bits: int | dict[str, int] = spec
        self.init = check_init(init)
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"`start_epoch` must be an int >= 0, got {start_epoch!r}.")
        if start_after is not None and (not isinstance(start_after, str) or not start_after):
            raise ValueError(
                f"`start_after` must be a phase name (e.g. 'pruning') or None, got {start_after!r}."
            )
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"`max_iter` must be an int >= 1, got {max_iter!r}.")
        check_choice("codebook_dtype", codebook_dtype, list(STORAGE_DTYPES))
        if other_dtype is not None:
            check_choice("other_dtype", other_dtype, [None, *STORAGE_DTYPES])
        self.start_epoch = start_epoch
        self.start_after = start_after
        self.train_centroids = bool(train_centroids)
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude or [])
        self.max_iter = max_iter
        self.seed = int(seed)
        self.codebook_dtype = codebook_dtype
        self.other_dtype = other_dtype
        self.export = export
        self.export_path = export_path
        self.attribute = attribute
        self.verbose = verbose
        # state
        self.shared: dict[str, SharedWeight] = {}
        self.layer_bits: dict[str, int] = {}
        self.started_epoch: int | None = None
        self._loaded: dict[str, Any] | None = None
        self._last_step = -1
        #: each shared weight's split over the device mesh (FSDP2), ``None`` for a whole one
        self._layouts: dict[str, ShardLayout | None] = {}
        # results
        self.exported_path: Path | None = None
        self.size_breakdown: SizeBreakdown | None = None
        self.dense_bytes: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            bits=self.bits, start_after=self.start_after, attribute=self.attribute
        )

    @property
    def clustered(self) -> bool:
        """Whether the weights are shared (the clustering has run)."""
        return self.started_epoch is not None

    # ------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._refuse_sharded_settings(trainer)
        if stage == "fit":
            self._run_setup(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_restore(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if (self._budgeted or self.curve_budgets) and not self.clustered:  # sensitivity / curve batches
            self._recent.append(_detached(batch))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.clustered and self._should_start(trainer):
            self._run_cluster(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self._run_gradients(pl_module, optimizer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._run_update(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_end(trainer, pl_module)

    # ------------------------------------------------------------------------------------ phase
    def phase_state(self, trainer: Any) -> PhaseState:
        """``"pending"`` before the clustering, ``"active"`` in its epoch, ``"done"`` afterwards."""
        if not self.clustered:
            return "pending"
        return (
            "active" if int(getattr(trainer, "current_epoch", 0)) <= int(self.started_epoch or 0) else "done"
        )

    def describe_phase(self, trainer: Any, finished: bool = False) -> str:
        """What weight sharing does, in plain words: ``"pending (starts after pruning)"``, ``"running (shared at
        epoch 3, 4 bits, training centroids)"``, ``"done (4 bits)"``; ``"never started"`` once finished."""
        if not self.clustered:
            if finished:
                return "never started"
            if self.start_after is None:
                return f"pending (starts at epoch {self.start_epoch})"
            later = f", not before epoch {self.start_epoch}" if self.start_epoch else ""
            return f"pending (starts after {self.start_after}{later})"
        widths = sorted(set(self.layer_bits.values()))
        bits = f"{widths[0]} bits" if len(widths) == 1 else f"{widths[0]}-{widths[-1]} bits"
        if finished:
            return f"done ({bits})"
        training = "training centroids" if self.train_centroids else "codebooks frozen"
        return f"running (shared at epoch {self.started_epoch}, {bits}, {training})"

    # ------------------------------------------------------------------------------------ internals
    def _refuse_sharded_settings(self, trainer: pl.Trainer) -> None:
        """Under a strategy that shards parameters: FSDP2 (rows over a 1-D mesh) is supported; tensor parallelism
        and FSDP1 are refused, and so are the settings that evaluate the whole network (the budget plan, the
        size-accuracy curve), at setup on every rank alike."""
        strategy = sharded_strategy(trainer)
        if strategy is None:
            return
        if "FSDP2" not in strategy:
            refuse_sharded(
                trainer,
                "WeightSharing",
                "its per-cluster sums are taken over weights split by rows over one mesh dimension (FSDP2's "
                "`fully_shard`), not over tensor-parallel or FSDP1 flat parameters",
                f"{DDP_ALTERNATIVE}, or FSDP2 (ModelParallelStrategy(tensor_parallel_size=1) with "
                f'`ClassificationModule(sharding="fsdp2")`)',
            )
        if self._budgeted:
            option = "size_budget_bytes" if self.size_budget_bytes is not None else "average_bits"
            refuse_sharded(
                trainer,
                f"WeightSharing({option})",
                "the budget plan measures every layer's sensitivity (Hessian traces or loss increases) with "
                "forward and backward passes of the whole network on recent batches",
                f"{DDP_ALTERNATIVE}, or fixed per-layer `bits` (a `bits` map) without `{option}`",
            )
        if self.curve_budgets:
            refuse_sharded(
                trainer,
                "WeightSharing(curve_budgets)",
                "the size-accuracy curve evaluates post-training-shared copies of the whole network",
                f"{DDP_ALTERNATIVE}, or `curve_budgets=None` (measure the curve after training, on the saved "
                "network, with `size_accuracy_curve`)",
            )

    def _network(self, pl_module: nn.Module) -> nn.Module:
        return target_model(pl_module, self.attribute)

    def _selection(self, model: nn.Module) -> dict[str, int]:
        params = dict(model.named_parameters())
        if isinstance(self.bits, dict):
            unknown = unmatched_patterns(params, self.bits)
            if unknown:
                raise ValueError(
                    f"WeightSharing `bits` patterns {unknown} match no parameter of the network; parameters: "
                    f"{list(params)[:20]}."
                )
        selected = select_shared(params, self.bits, self.include, self.exclude)
        if not selected:
            raise ValueError(
                f"WeightSharing selected no parameter to share (bits={self.bits}, include={self.include}, "
                f"exclude={self.exclude}); parameters: {list(params)[:20]}."
            )
        return selected

    def _expected_nonzero(self, trainer: pl.Trainer, model: nn.Module, name: str, weight: Tensor) -> int:
        """The non-zero weights ``name`` will have when sharing starts: now, less what a pending pruning phase
        named by ``start_after`` will prune (unstructured, layer scope: its final sparsity for the layer)."""
        nonzero = int((weight != 0).sum())
        phase = find_phase(trainer, self.start_after) if self.start_after else None
        if phase is None or phase.phase_state(trainer) == "done":
            return nonzero
        final = getattr(phase, "final_sparsity", None)
        if (
            not isinstance(final, float)
            or getattr(phase, "granularity", None) != "unstructured"
            or getattr(phase, "scope", None) != "layer"
            or not name.endswith(".weight")
        ):
            return nonzero
        try:
            pruned_modules = phase.select_modules(model)
        except Exception:  # noqa: BLE001 - a phase that cannot say: keep today's count
            return nonzero
        module = name[: -len(".weight")]
        if module not in pruned_modules:
            return nonzero
        sparsity, _ = layer_final_sparsity(module, final, getattr(phase, "layer_sparsity", None))
        return min(nonzero, weight.numel() - round(sparsity * weight.numel()))

    def _run_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs <= self.start_epoch and not self.clustered:
            raise ValueError(
                f"WeightSharing `start_epoch`={self.start_epoch} is not before the Trainer's max_epochs={max_epochs}: "
                "sharing would never start. Allowed: 0 <= start_epoch < max_epochs."
            )
        if self.start_after is not None:
            phase_done(trainer, self.start_after)  # raises ValueError naming the phases present
        if self.clustered or self._loaded is not None:
            return
        model = self._network(pl_module)
        params = dict(model.named_parameters())
        self.layer_bits = self._selection(model)
        if self._budgeted:
            self._check_budget_at_setup(trainer, model)
            return
        for name, b in self.layer_bits.items():
            k = 1 << b
            expected = self._expected_nonzero(trainer, model, name, params[name])
            if expected < k:
                pruned = " after pruning" if expected < int((params[name] != 0).sum()) else ""
                fix = (
                    f"give it at most {int(math.log2(expected))} bits (a `bits` map)"
                    if expected >= 2
                    else "leave it out"
                )
                raise ValueError(
                    f"WeightSharing: {name} {tuple(params[name].shape)} will have {expected} non-zero weights"
                    f"{pruned}, fewer than the {k} centroids of `bits`={b}: {fix} or add it to `exclude`."
                )

    @property
    def _budgeted(self) -> bool:
        return self.size_budget_bytes is not None or self.average_bits is not None

    def _fixed(self, names: list[str]) -> dict[str, int]:
        """``fixed_bits`` resolved to layer names (each pattern must match a shared layer)."""
        unknown = unmatched_patterns(names, self.fixed_bits)
        if unknown:
            raise ValueError(
                f"WeightSharing `fixed_bits` patterns {unknown} match no shared layer; shared layers: {names}."
            )
        out = {}
        for name in names:
            for pattern, b in self.fixed_bits.items():
                if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit(".", 1)[0], pattern):
                    out[name] = b
                    break
        return out

    def _choices(self, weights: dict[str, Tensor]) -> list:
        return layer_choices(
            weights,
            self.bit_choices,
            self.sparsity_choices,
            self._fixed(list(weights)),
            self.init,
            self.codebook_dtype,
        )

    def _check_budget_at_setup(self, trainer: pl.Trainer, model: nn.Module) -> None:
        """A budget below the smallest artifact the settings allow is refused now, with that size (the weights as
        a pending pruning phase will leave them: the smallest magnitudes zeroed to its final sparsity)."""
        state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        projected = {}
        for name in self.layer_bits:
            w = state[name]
            keep = self._expected_nonzero(trainer, model, name, w)
            projected[name] = prune_smallest(w, 1.0 - keep / w.numel()) if keep < int((w != 0).sum()) else w
        layers = self._choices(projected)
        if self.average_bits is not None:
            layers, budget = average_bits_budget(layers, self.average_bits)
            fixed = 0
        else:
            budget = int(self.size_budget_bytes)
            rest = {k: v for k, v in state.items() if k not in self.layer_bits}
            fixed = (
                artifact_bytes(rest, self.codebook_dtype, self.other_dtype, _metadata(model), bound=True)
                if rest
                else 0
            )
        smallest = smallest_size(layers) + fixed
        if smallest <= budget < 1.03 * smallest:
            rank_zero_warn(
                f"WeightSharing: the budget ({budget:,}) is within 3% of the smallest file these settings allow, as "
                f"estimated now ({smallest:,} bytes, from the weights as pruning will leave them): the weights "
                "sharing starts from may encode a few bytes larger, and the budget would then be refused when "
                "sharing starts. Leave a little more room."
            )
        if budget < smallest:
            option = "average_bits" if self.average_bits is not None else "size_budget_bytes"
            raise BudgetError(
                f"WeightSharing `{option}`={self.average_bits if self.average_bits is not None else budget} is below "
                f"the smallest artifact these settings allow: {smallest} bytes ({fixed} for the header and the "
                f"unshared tensors; every shared layer at its fewest `bit_choices` {self.bit_choices[0]} bit(s)"
                f"{' and highest `sparsity_choices`' if self.sparsity_choices else ''}). Raise the budget, allow "
                "fewer bits, more sparsity (`sparsity_choices`), or share more layers."
            )

    def _traces(self, model: nn.Module, names: list[str]) -> dict[str, float] | None:
        """HAWQ-V2 traces on the recent batches (``None`` without usable ``(input, target)`` batches)."""
        batches = [b for b in self._recent if _xy(b) is not None]
        if not batches:
            return None
        device = next(model.parameters()).device

        def loss(m: nn.Module, batch: Any) -> Tensor:
            x, y = _xy(batch)
            return nn.functional.cross_entropy(m(x.to(device)), y.to(device))

        with torch.enable_grad():
            return hessian_traces(
                model, loss, batches, names, samples=8, generator=torch.Generator().manual_seed(self.seed)
            )

    def _plan(self, trainer: pl.Trainer, model: nn.Module) -> BudgetPlan:
        names = list(self.layer_bits)
        if self.average_bits is not None:
            state = {
                n: t.detach().float().cpu() for n, t in model.state_dict().items() if n in self.layer_bits
            }
            layers, budget = average_bits_budget(self._choices(state), self.average_bits)
            traces = self._traces(model, names) if self.sensitivity == "hessian" else None
            for layer in layers:
                layer.trace = 1.0 if traces is None else traces[layer.name]
            if self.sensitivity == "loss":
                self._measure(model, layers)
            return solve_budget(layers, budget)
        if self.sensitivity == "loss":
            state = {
                n: t.detach().float().cpu() for n, t in model.state_dict().items() if n in self.layer_bits
            }
            layers = self._choices(state)
            self._measure(model, layers)
            rest = {k: v for k, v in model.state_dict().items() if k not in self.layer_bits}
            fixed = (
                artifact_bytes(rest, self.codebook_dtype, self.other_dtype, _metadata(model), bound=True)
                if rest
                else 0
            )
            return solve_budget(layers, int(self.size_budget_bytes), fixed)
        return fit_budget(
            model,
            names,
            int(self.size_budget_bytes),
            bits=self.bit_choices,
            sparsities=self.sparsity_choices,
            overrides=self._fixed(names),
            traces=self._traces(model, names),
            init=self.init,
            codebook_dtype=self.codebook_dtype,
            other_dtype=self.other_dtype,
            metadata=_metadata(model),
        )

    def _curve(self, model: nn.Module) -> list[dict[str, Any]]:
        """The size-accuracy curve of ``model`` as it is now (``[]``, said in the log, without usable batches)."""
        batches = [_xy(b) for b in self._recent if _xy(b) is not None]
        if not batches:
            rank_zero_info(
                "WeightSharing: no recent `(input, class target)` training batches to measure the size-accuracy "
                "curve on (sharing started before the first step, or the batches are not classification batches): "
                "`curve_budgets` skipped."
            )
            return []
        names = list(self.layer_bits)
        device = next(model.parameters()).device

        @torch.no_grad()
        def accuracy(m: nn.Module) -> float:
            m.eval()
            correct = total = 0
            for x, y in batches:
                correct += int((m(x.to(device)).argmax(-1) == y.to(device)).sum())
                total += int(y.numel())
            return correct / max(1, total)

        rows = size_accuracy_curve(
            model,
            names,
            self.curve_budgets or [],
            accuracy,
            traces=self._traces(model, names),
            bits=self.bit_choices,
            sparsities=self.sparsity_choices,
            init=self.init,
            codebook_dtype=self.codebook_dtype,
            other_dtype=self.other_dtype,
            metadata=_metadata(model),
        )
        if self.verbose:
            rank_zero_info(
                f"WeightSharing: size-accuracy curve (post-training sharing of the network now, {CURVE_METRIC}):\n"
                + curve_markdown(rows, CURVE_METRIC, percent=True)
            )
        return rows

    def _write_curve(self, folder: Path) -> None:
        """``size_accuracy_curve.md`` (and ``.png`` with matplotlib) in ``folder`` (rank 0)."""
        md = folder / "size_accuracy_curve.md"
        md.write_text(
            "# Size-accuracy curve\n\nPost-training sharing of the network when sharing started (epoch "
            f"{self.started_epoch}), at each budget; metric: {CURVE_METRIC}.\n\n"
            + curve_markdown(self.curve, CURVE_METRIC, percent=True)
            + "\n"
        )
        self.curve_paths = {"markdown": md}
        png = plot_curve(self.curve, folder / "size_accuracy_curve.png", CURVE_METRIC, percent=True)
        if png is not None:
            self.curve_paths["plot"] = png

    def _measure(self, model: nn.Module, layers: list) -> None:
        batches = [_xy(b) for b in self._recent if _xy(b) is not None]
        if not batches:
            return
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()

        def evaluate(m: nn.Module) -> float:
            return sum(float(nn.functional.cross_entropy(m(x.to(device)), y.to(device))) for x, y in batches)

        try:
            measure_loss_costs(model, layers, evaluate)
        finally:
            model.train(was_training)

    def _should_start(self, trainer: pl.Trainer) -> bool:
        if trainer.current_epoch < self.start_epoch:
            return False
        return self.start_after is None or phase_done(trainer, self.start_after)

    @torch.no_grad()
    def _run_cluster(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._network(pl_module)
        params = dict(model.named_parameters())
        self.layer_bits = self._selection(model)
        if self.curve_budgets:
            rows = self._curve(model) if trainer.is_global_zero else None
            self.curve = broadcast_from_rank0(trainer, rows) or []
            if not self._budgeted:
                self._recent.clear()
        if self._budgeted:
            plan = broadcast_from_rank0(
                trainer, self._plan(trainer, model) if trainer.is_global_zero else None
            )
            self.plan = plan
            self.layer_bits = dict(plan.bits)
            for (
                name,
                sparsity,
            ) in plan.sparsity.items():  # extra sparsity the plan chose: the smallest weights
                params[name].copy_(prune_smallest(params[name].detach(), sparsity).to(params[name].dtype))
            self._recent.clear()
            if self.verbose:
                rank_zero_info(
                    f"WeightSharing: per-layer bits for a budget of "
                    f"{self.size_budget_bytes if self.size_budget_bytes is not None else f'{self.average_bits} bits'}"
                    f" (expected {plan.total_bytes:,} bytes):\n{plan.table()}"
                )
        self._layouts = {name: ShardLayout.of(params[name]) for name in self.layer_bits}
        if any(self._layouts.values()):
            used = self._cluster_sharded(trainer, params)
        else:
            used = self._cluster_whole(trainer, params)
        self.started_epoch = int(trainer.current_epoch)
        self._last_step = trainer.global_step
        metrics = {"weight_sharing/start_epoch": float(self.started_epoch)}
        metrics.update({f"weight_sharing/centroids_used/{n}": float(u) for n, u in used.items()})
        log_metrics(trainer, metrics)
        if self.verbose:
            widths = sorted(set(self.layer_bits.values()))
            rank_zero_info(
                f"WeightSharing: {len(self.shared)} weights shared at epoch {self.started_epoch} "
                f"({', '.join(str(w) for w in widths)} bits, init={self.init!r})."
            )

    def _cluster_whole(self, trainer: pl.Trainer, params: dict[str, Tensor]) -> dict[str, int]:
        """Clustering of whole (not sharded) weights: every rank clusters the same synchronized weights; under DDP
        rank 0's codebooks and indices are taken. Returns the centroids each layer uses."""
        shared: dict[str, SharedWeight] = {}
        for i, (name, b) in enumerate(self.layer_bits.items()):
            generator = torch.Generator().manual_seed(self.seed + i)
            shared[name] = cluster_weight(params[name], b, self.init, self.max_iter, generator, name=name)
        if is_distributed(trainer):
            books = broadcast_from_rank0(trainer, {n: s.codebook for n, s in shared.items()}, tensorwise=True)
            index = broadcast_from_rank0(trainer, {n: s.index for n, s in shared.items()}, tensorwise=True)
            shared = {n: SharedWeight(books[n], index[n]) for n in shared}
        self.shared = shared
        for name, s in shared.items():
            write_shared_(params[name], s)
            for optimizer in trainer.optimizers:
                tie_optimizer_state_(optimizer, params[name], s)
        return {n: _used(s) for n, s in shared.items()}

    def _cluster_sharded(self, trainer: pl.Trainer, params: dict[str, Tensor]) -> dict[str, int]:
        """Clustering under FSDP2: each weight gathered whole in turn (a collective), k-means on it (the same on
        every rank: the same values and seed), rank 0's codebooks taken (identical; it makes sure), each rank
        keeping its part of the index and writing the centroids into its shard; the optimizer moments tied over
        the whole tensors (one all-reduce). Returns the centroids each layer uses (of the whole tensor)."""
        for name in self.layer_bits:
            check_row_sharded(name, params[name])
        shared: dict[str, SharedWeight] = {}
        used: dict[str, int] = {}
        for i, (name, b) in enumerate(self.layer_bits.items()):
            generator = torch.Generator().manual_seed(self.seed + i)
            shared[name], whole = cluster_sharded(
                params[name], b, self.init, self.max_iter, generator, name=name
            )
            used[name] = _used(whole)
        if is_distributed(trainer):
            books = broadcast_from_rank0(trainer, {n: s.codebook for n, s in shared.items()}, tensorwise=True)
            shared = {n: SharedWeight(books[n].to(s.index.device), s.index) for n, s in shared.items()}
        self.shared = shared
        for name, s in shared.items():
            write_shared_(local_part(params[name]), s)
        names = list(shared)
        for optimizer in trainer.optimizers:
            tie_optimizer_states_sharded_(
                optimizer,
                [params[n] for n in names],
                [shared[n] for n in names],
                [self._layouts.get(n) for n in names],
            )
        return used

    def _run_restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume: the codebooks and indices of the checkpoint, on the parameters' devices."""
        self._last_step = trainer.global_step
        state, self._loaded = self._loaded, None
        if state is None or state.get("started_epoch") is None:
            return
        params = dict(self._network(pl_module).named_parameters())
        shared = {}
        for name, layer in state["layers"].items():
            if name not in params:
                raise ValueError(
                    f"WeightSharing: the checkpoint shares {name!r}, which the network does not have; resume with "
                    "the network it was saved from."
                )
            whole = _unpack_layer(layer)
            device = local_part(params[name]).device
            shared[name] = SharedWeight(
                whole.codebook.to(device), local_index(whole.index, params[name]).to(device)
            )
            write_shared_(local_part(params[name]), shared[name])
        self._layouts = {name: ShardLayout.of(params[name]) for name in shared}
        self.shared = shared
        self.layer_bits = dict(state.get("layer_bits", {}))
        self.started_epoch = int(state["started_epoch"])

    @torch.no_grad()
    def _run_gradients(self, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Before ``optimizer``'s step: the centroid gradients of the shared weights it holds (each step sums a
        gradient once, also with several optimizers)."""
        if not self.shared:
            return
        params = dict(self._network(pl_module).named_parameters())
        held = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group["params"]}
        names = [n for n in self.shared if id(params[n]) in held]
        if self._sharded:  # per-cluster sums of the local gradients, summed over the mesh in one all-reduce
            if self.train_centroids:
                share_gradients_sharded_(
                    [params[n] for n in names],
                    [self.shared[n] for n in names],
                    [self._layouts.get(n) for n in names],
                )
            else:
                for name in names:
                    if params[name].grad is not None:
                        local_part(params[name].grad).zero_()
            return
        for name in names:
            if self.train_centroids:
                share_gradients_(params[name], self.shared[name])
            else:
                freeze_gradients_(params[name])

    @torch.no_grad()
    def _run_update(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.shared or trainer.global_step == self._last_step:  # no optimizer step (accumulation)
            return
        self._last_step = trainer.global_step
        params = dict(self._network(pl_module).named_parameters())
        if self._sharded:  # cluster means over the whole tensors (one all-reduce): the same on every rank
            self._update_sharded(params, train=self.train_centroids)
            return
        for name, s in self.shared.items():
            self.shared[name] = update_codebook_(params[name], s, train=self.train_centroids)
        if self.train_centroids and is_distributed(trainer):  # rank 0's codebooks on every rank
            books = broadcast_from_rank0(
                trainer, {n: s.codebook for n, s in self.shared.items()}, tensorwise=True
            )
            for name, s in self.shared.items():
                self.shared[name] = SharedWeight(books[name], s.index)
                write_shared_(params[name], self.shared[name])

    @property
    def _sharded(self) -> bool:
        """Whether any shared weight is sharded (FSDP2): its index is this rank's part."""
        return any(self._layouts.get(n) is not None for n in self.shared)

    def _update_sharded(self, params: dict[str, Tensor], train: bool) -> None:
        names = list(self.shared)
        updated = update_codebooks_sharded_(
            [params[n] for n in names],
            [self.shared[n] for n in names],
            [self._layouts.get(n) for n in names],
            train=train,
        )
        self.shared = dict(zip(names, updated, strict=True))

    def _default_path(self, trainer: pl.Trainer) -> Path:
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "weight_sharing"
        return folder / f"model{SUFFIX}"

    def _run_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.clustered:
            rank_zero_warn(
                "WeightSharing never started (start_epoch/start_after not reached): the network is not shared and "
                "no artifact was written."
            )
            return
        if not self.export:
            return
        model = self._network(pl_module)
        if self._sharded:
            blob = self._export_sharded(trainer, model)
        else:
            blob = pack_shared(model, self.codebook_dtype, self.other_dtype, _metadata(model))
            # what the network holds from here on is exactly what the file holds (rounded codebooks included)
            current = model.state_dict()
            model.load_state_dict(
                {n: t.to(current[n].device) for n, t in load_shared_state_dict(blob).items()}
            )
            params = dict(model.named_parameters())
            for name, s in self.shared.items():  # the codebooks as stored (rounded ones included)
                self.shared[name] = update_codebook_(params[name], s, train=True)
            self.dense_bytes = dense_state_dict_bytes(model)
        self.size_breakdown = size_breakdown(blob)
        # every rank asks for the default folder: `trainer.log_dir` is a collective under DDP
        path = Path(self.export_path) if self.export_path else self._default_path(trainer)
        if trainer.is_global_zero:
            path = path if self.export_path else unused_path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            if self.curve:
                self._write_curve(path.parent)
        self.exported_path = broadcast_from_rank0(trainer, path)
        ratio = self.dense_bytes / max(1, len(blob))
        if self.size_budget_bytes is not None and len(blob) > self.size_budget_bytes:
            rank_zero_warn(
                f"WeightSharing: the artifact is {len(blob):,} bytes, {len(blob) - self.size_budget_bytes:,} over "
                f"`size_budget_bytes`={self.size_budget_bytes:,} (planned: "
                f"{self.plan.total_bytes if self.plan is not None else '?'} bytes; the weights changed after the "
                "plan, e.g. another phase pruned or reshaped them). Lower the budget by that much."
            )
        log_metrics(
            trainer,
            {"weight_sharing/artifact_bytes": float(len(blob)), "weight_sharing/compression_ratio": ratio},
        )
        if self.verbose:
            rank_zero_info(
                f"WeightSharing: artifact {self.exported_path} is {len(blob):,} bytes, {ratio:.1f}x smaller than the "
                f"dense float32 state dict ({self.dense_bytes:,} bytes).\n{self.size_breakdown.markdown()}"
            )

    @torch.no_grad()
    def _export_sharded(self, trainer: pl.Trainer, model: nn.Module) -> bytes:
        """The artifact of a sharded network (FSDP2): its whole state dict (every sharded tensor gathered, one at a
        time: a collective) packed as one process would; rank 0's bytes on every rank (buffers are per rank under
        FSDP2); loaded back into each rank's shards; :attr:`dense_bytes` of the whole state dict."""
        current = model.state_dict()
        state = OrderedDict(  # compact copies (a gathered tensor may sit in a larger buffer)
            (key, (full_tensor(value.detach()) if is_sharded(value) else value.detach()).clone())
            for key, value in current.items()
        )
        # the module versions torch.save writes with a state dict: the dense size is one process's
        if hasattr(current, "_metadata"):
            state._metadata = current._metadata  # type: ignore[attr-defined]
        del current
        blob = broadcast_from_rank0(
            trainer, pack_shared(state, self.codebook_dtype, self.other_dtype, _metadata(model))
        )
        self.dense_bytes = broadcast_from_rank0(trainer, dense_state_dict_bytes(state))
        del state
        # what the network holds from here on is exactly what the file holds (rounded codebooks included)
        stored = load_shared_state_dict(blob)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name not in stored:
                continue
            local = local_part(tensor)
            value = stored[name].to(local.device, local.dtype)
            if is_sharded(tensor):
                value = local_part(shard_like(value, tensor))
            local.copy_(value)
        params = dict(model.named_parameters())
        self._update_sharded(params, train=True)  # the codebooks as stored (rounded ones included)
        return blob

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:  # restored, training not started yet: hand it on unchanged
            return dict(self._loaded)
        return {
            "started_epoch": self.started_epoch,
            "plan": None if self.plan is None else dataclasses.asdict(self.plan),
            "layer_bits": dict(self.layer_bits),
            # whole: a sharded layer's index is gathered from the ranks' parts (a collective: Lightning dumps the
            # callback states on every rank, rank 0 writes them), so any run resumes from it, sharded or not
            "layers": {
                n: _pack_layer(gathered_shared(s, self._layouts.get(n))) for n, s in self.shared.items()
            },
            "curve": [dict(row) for row in self.curve],
            # before sharing starts, the batches its budget plan and curve are measured on: a run resumed from here
            # plans exactly as the uninterrupted one (CPU tensors; a few batches, only with a budget or a curve)
            "recent": list(self._recent) if not self.clustered else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._recent = deque(state_dict.get("recent") or [], maxlen=self.sensitivity_batches)
        if state_dict.get("started_epoch") is None:  # saved before sharing started: nothing more to restore
            return
        self._loaded = dict(state_dict)
        self.curve = [dict(row) for row in state_dict.get("curve") or []]
        if state_dict.get("plan") is not None:
            self.plan = BudgetPlan(**state_dict["plan"])
        self.started_epoch = int(state_dict["started_epoch"])
        self.layer_bits = dict(state_dict.get("layer_bits", {}))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_recent"] = deque(maxlen=self.sensitivity_batches)
        state["shared"] = {n: s.to("cpu") for n, s in self.shared.items()}
        state["_layouts"] = {}  # device meshes do not travel (a sharded layer's index is this rank's part)
        return state


def _metadata(model: nn.Module) -> dict[str, str]:
    """The artifact's header metadata (the budget search counts it): the network's own class name (not FSDP2's
    ``FSDP<name>`` subclass of a sharded network)."""
    cls = type(model)
    try:
        from torch.distributed.fsdp import FSDPModule

        cls = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    except ImportError:  # torch without distributed support
        pass
    return {"format": "lightning-optim weight sharing", "network": cls.__name__}


def _detached(batch: Any) -> Any:
    """A training batch kept for the sensitivity: tensors detached and on the CPU (any collection)."""
    return apply_to_collection(batch, Tensor, lambda t: t.detach().cpu())


def _xy(batch: Any) -> tuple[Tensor, Tensor] | None:
    """``(input, class targets)`` of a classification batch, else ``None``."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
        if isinstance(x, Tensor) and isinstance(y, Tensor) and y.dtype == torch.long and y.dim() == 1:
            return x, y
    return None


def _used(shared: SharedWeight) -> int:
    """Centroids that at least one weight uses."""
    return int(torch.unique(shared.index[shared.mask]).numel())


def _pack_layer(shared: SharedWeight) -> dict[str, Any]:
    """A shared weight for a checkpoint: the codebook, the mask of non-zeros (bits) and their indices (uint8)."""
    mask = shared.mask
    return {
        "codebook": shared.codebook.detach().float().cpu().clone(),
        "mask": pack_mask(mask),
        "index": shared.index[mask].to(torch.uint8).cpu(),
        "shape": list(shared.index.shape),
    }


def _unpack_layer(layer: dict[str, Any]) -> SharedWeight:
    codebook = layer["codebook"].float()
    mask = unpack_mask(layer["mask"], tuple(layer["shape"]))
    index = torch.full(tuple(layer["shape"]), codebook.numel(), dtype=torch.int64)
    index[mask] = layer["index"].long()
    return SharedWeight(codebook, index)


__all__ = ["WeightSharing"]
