r"""
Early stopping
^^^^^^^^^^^^^^

Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` with what its users keep asking for:
restoring the best weights, a start epoch, no conflict with ``min_epochs``, a relative ``min_delta``, a
resumable best score, and holding off while a compression phase is still changing the model.
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_optim.callbacks._trainer import (
    DDP_ALTERNATIVE,
    broadcast_from_rank0,
    log_metrics,
    refuse_sharded,
    sharded_strategy,
)
from lightning_optim.callbacks.phases import model_is_changing, phase_states, phases
from lightning_optim.checks import check_choice

log = logging.getLogger(__name__)

MIN_DELTA_MODES: tuple[str, ...] = ("abs", "rel")
BEST_WEIGHTS_SOURCES: tuple[str, ...] = ("memory", "checkpoint")


class EarlyStopping(LightningEarlyStopping):
    r"""Stop training when a monitored metric stops improving, and optionally restore the best weights.

    Subclasses Lightning's ``EarlyStopping`` (same arguments, thresholds and ``stopping_reason``) and adds:

    - ``restore_best_weights``: when fit ends, the module gets the weights of the best-scoring check, from a
      copy in memory (kept in the checkpoint, so it survives a resume) or from the best checkpoint of a
      ``ModelCheckpoint`` monitoring the same metric. Rank 0's weights are broadcast, so every DDP rank ends
      identical. The improvement decision itself uses rank 0's metric value on every rank.
    - ``start_epoch``: no stop before this epoch; checks before it track the best score (and weights) but do
      not count towards ``patience``. A stop decided while the Trainer's ``min_epochs``/``min_steps`` are
      not yet met is not signalled (Lightning would otherwise stop at exactly ``min_epochs`` even if the
      metric had recovered); the wait count carries on, so the stop happens at the first allowed check that
      still sees no improvement.
    - ``min_delta_mode="rel"``: ``min_delta`` is a fraction of the best score (``0.01`` = 1% better).
    - the best score, its epoch, the wait count and the best weights are saved in checkpoints.
    - hold-off: while any compression phase on the Trainer (pruning ramp, QAT start...; see
      :mod:`lightning_optim.callbacks.phases`) is pending or active, checks are skipped and the tracking
      (best score, its epoch, best weights and the wait count, which reads 0 while held off) restarts from
      scratch once every phase is done -- scores of a model that is still being compressed
      are not compared with those of the final one, and the restored weights are always compressed ones.
    - sharded training (FSDP2 through ``ModelParallelStrategy``, ``ClassificationModule(sharding="fsdp2")``):
      the stop decision is unchanged. With ``best_weights_source="memory"`` each rank keeps a CPU copy of its
      own local shards (``DTensor.to_local()``) and of the unsharded tensors (buffers) at each improvement, and
      the restore copies them back into its shards (buffers: rank 0's, so every rank ends identical); nothing is
      gathered then. Lightning writes callback state from rank 0 only, so when a checkpoint is saved (every rank
      calls :meth:`state_dict`) the shards are gathered into whole tensors, one at a time, and the checkpoint holds
      the best weights whole, as an unsharded run's does: a resumed run restores them into its shards, on any
      number of ranks. (A :meth:`state_dict` without a process group, after the fit, cannot gather: it holds no
      best weights and a resume from it says so.) ``best_weights_source="checkpoint"`` also survives any resume: it loads the model weights of the best checkpoint, sharded (a folder, read with
      ``torch.distributed.checkpoint``) or a single file. Lightning's ``FSDPStrategy`` with
      ``restore_best_weights`` is refused at setup.
    - a message when it stops, naming the metric, the best value and its epoch (logged at INFO, and in
      ``stopping_reason_message``); ``early_stopping/wait_count`` and ``early_stopping/best`` go to the
      logger at each check.

    Args:
        monitor: quantity to be monitored.
        min_delta: minimum change that counts as an improvement (absolute, or relative with ``min_delta_mode``).
        patience: number of checks without improvement after which training stops.
        verbose: log every improvement.
        mode: ``"min"`` or ``"max"``.
        strict: raise if ``monitor`` is not logged (naming the metrics that are).
        check_finite: stop when the monitored value is NaN or infinite.
        stopping_threshold: stop once the monitored value reaches this.
        divergence_threshold: stop once the monitored value is worse than this.
        check_on_train_epoch_end: check at the end of the training epoch (``None``: decided from the Trainer).
        log_rank_zero_only: log status messages from rank 0 only.
        min_delta_mode: ``"abs"`` or ``"rel"``.
        restore_best_weights: load the best weights into the module when fit ends.
        best_weights_source: ``"memory"`` (a CPU copy taken at each improvement, in the checkpoint; under FSDP2
            each rank's own shards, gathered whole when a checkpoint is saved) or ``"checkpoint"`` (the ``best_model_path`` of a ``ModelCheckpoint`` with the
            same ``monitor`` and ``mode``).
        start_epoch: first epoch (from 0) at which training may be stopped.
        hold_off_while_compressing: skip checks while any compression phase is not done.
        ignore_phases: phase names that do not hold early stopping off.

    Raises:
        ValueError: for an unknown ``mode``, ``min_delta_mode`` or ``best_weights_source``, a negative
            ``min_delta``/``patience``/``start_epoch``, or (at setup) ``best_weights_source="checkpoint"``
            without a matching ``ModelCheckpoint``, an ``ignore_phases`` name that is no phase on the Trainer, or
            ``restore_best_weights`` under Lightning's ``FSDPStrategy`` (FSDP2 through ``ModelParallelStrategy``
            is supported).
        RuntimeError: if ``monitor`` is not logged at a check and ``strict`` is set.

    Example::

        from lightning_optim.callbacks import EarlyStopping

        early_stopping = EarlyStopping("val_acc", mode="max", patience=3, start_epoch=5, restore_best_weights=True)
        trainer = Trainer(max_epochs=50, min_epochs=8, callbacks=[early_stopping])
        trainer.fit(module, datamodule=dm)  # module now holds the weights of the best val_acc
        print(early_stopping.best_epoch, early_stopping.stopping_reason_message)
    """

    #: the stop decision and `restore_best_weights` (each rank's own shards, or the best sharded checkpoint) work
    #: with FSDP2 through ``ModelParallelStrategy``; under Lightning's ``FSDPStrategy`` the restore is refused
    sharded_parameters = "supported"

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        min_delta_mode: str = "abs",
        restore_best_weights: bool = False,
        best_weights_source: str = "memory",
        start_epoch: int = 0,
        hold_off_while_compressing: bool = True,
        ignore_phases: tuple[str, ...] = (),
    ) -> None:
        check_choice("mode", mode, self.mode_dict)
        check_choice("min_delta_mode", min_delta_mode, MIN_DELTA_MODES)
        check_choice("best_weights_source", best_weights_source, BEST_WEIGHTS_SOURCES)
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"`min_delta` must be >= 0 and finite, got {min_delta}.")
        if patience < 0:
            raise ValueError(f"`patience` must be >= 0, got {patience}.")
        if start_epoch < 0:
            raise ValueError(f"`start_epoch` must be >= 0, got {start_epoch}.")
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.min_delta_mode = min_delta_mode
        self.relative_min_delta = float(min_delta) if min_delta_mode == "rel" else 0.0
        self.restore_best_weights = restore_best_weights
        self.best_weights_source = best_weights_source
        self.start_epoch = start_epoch
        self.hold_off_while_compressing = hold_off_while_compressing
        self.ignore_phases = tuple(ignore_phases)
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.restored_epoch: int | None = None
        self._holding_off = False
        #: whether the Trainer shards the network (set at setup): the copy in memory is then each rank's shards
        self._sharded = False
        #: ``best_weights`` holds each rank's local shards (under sharding), not the whole tensors
        self._best_weights_local = False
        #: a resumed run whose checkpoint could not carry the per-rank best weights: the epoch they were from
        self._best_weights_lost_epoch: int | None = None
        #: with ``_best_weights_local``: how each sharded entry is split (its mesh, placements, global shape and
        #: stride), to gather the copy whole into a checkpoint (not pickled)
        self._best_weights_specs: dict[str, tuple[Any, ...]] = {}

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(best_epoch=self.best_epoch, best_step=self.best_step, holding_off=self._holding_off)
        if self.restore_best_weights and self.best_weights_source == "memory":
            weights, local = self.best_weights, self._best_weights_local and self.best_weights is not None
            if local and _can_gather(self._best_weights_specs):
                # Lightning writes callback state from rank 0 only: the shards are gathered whole (a collective:
                # every rank saves the checkpoint, so every rank is here), as an unsharded run's copy is
                weights, local = _gather_local_state(self.best_weights, self._best_weights_specs), False
            state["best_weights"] = None if local else weights
            state["best_weights_per_rank"] = local
        return state

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_best_weights_specs"] = {}  # device meshes: rebuilt at the next copy
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = state_dict.get("best_step")
        self._holding_off = bool(state_dict.get("holding_off", False))
        self.best_weights = state_dict.get("best_weights")
        self._best_weights_local = False
        self._best_weights_lost_epoch = None
        if state_dict.get("best_weights_per_rank") and self.restore_best_weights:
            self._best_weights_lost_epoch = self.best_epoch
            if self.best_weights_source == "memory":
                rank_zero_warn(
                    f"EarlyStopping: the checkpoint comes from a sharded run, whose best weights (epoch "
                    f"{self.best_epoch}) were each rank's own shards in memory and are not in it (Lightning writes "
                    "callback state from rank 0 only). The best score is kept; the copy re-arms at the next "
                    "improvement, and without one the final weights are kept. For a restore that survives a resume "
                    "use `best_weights_source='checkpoint'` with a ModelCheckpoint on the same metric."
                )

    # ----------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._sharded = sharded_strategy(trainer) is not None
        if self.restore_best_weights and self._sharded:
            from lightning.pytorch.strategies import ModelParallelStrategy

            if not isinstance(trainer.strategy, ModelParallelStrategy):
                refuse_sharded(
                    trainer,
                    "EarlyStopping(restore_best_weights=True)",
                    "only FSDP2 through ModelParallelStrategy is supported",
                    f'ModelParallelStrategy with `ClassificationModule(sharding="fsdp2")`, {DDP_ALTERNATIVE}, '
                    "or `restore_best_weights=False`",
                )
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._check_settings_fit(trainer)
        if self.restore_best_weights and self.best_weights_source == "checkpoint" and stage == "fit":
            self._checkpoint_callback(trainer)  # validates now rather than at the end of a long fit

    def _check_settings_fit(self, trainer: pl.Trainer) -> None:
        """An ``ignore_phases`` name that is no phase on the Trainer is refused (a misspelled name would hold early
        stopping off after all); a ``start_epoch`` the run never reaches is said."""
        present = [str(cb.phase_name) for cb in phases(trainer)]
        for name in self.ignore_phases:
            if name in present:
                continue
            close = difflib.get_close_matches(str(name), present, n=3, cutoff=0.6)
            raise ValueError(
                f"EarlyStopping: `ignore_phases` names {name!r}, which is no compression phase on the Trainer, so it "
                f"would be ignored{f'; close matches: {close}' if close else ''}. Phases present: {present} (the "
                "`phase_name` of the compression callbacks: 'pruning', 'quantization', 'distillation')."
            )
        max_epochs = trainer.max_epochs
        if isinstance(max_epochs, int) and 0 <= max_epochs <= self.start_epoch and not trainer.fast_dev_run:
            rank_zero_warn(
                f"EarlyStopping: `start_epoch`={self.start_epoch} is not before the Trainer's max_epochs={max_epochs}: "
                "it can never stop this run (it still tracks the best score and weights)."
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights:
            self._run_restore_best_weights(trainer, pl_module)

    # ----------------------------------------------------------------------------------------- logic
    def _checkpoint_callback(self, trainer: pl.Trainer) -> ModelCheckpoint:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == self.monitor and cb.mode == self.mode:
                return cb
        raise ValueError(
            f"`best_weights_source='checkpoint'` needs a ModelCheckpoint with monitor={self.monitor!r} and "
            f"mode={self.mode!r} on the Trainer; found monitors {[cb.monitor for cb in trainer.checkpoint_callbacks]}. "
            "Add one or use best_weights_source='memory'."
        )

    def _may_stop(self, trainer: pl.Trainer) -> tuple[bool, str]:
        """Whether a stop may be signalled now, and why not."""
        epoch = trainer.current_epoch
        if epoch < self.start_epoch:
            return False, f"start_epoch={self.start_epoch}"
        min_epochs = trainer.fit_loop.min_epochs or 0
        if epoch + 1 < min_epochs:
            return False, f"Trainer min_epochs={min_epochs}"
        min_steps = trainer.fit_loop.epoch_loop.min_steps or 0
        if trainer.global_step < min_steps:
            return False, f"Trainer min_steps={min_steps}"
        return True, ""

    def _reset_tracking(self) -> None:
        self.best_score = torch.tensor(math.inf if self.monitor_op == torch.lt else -math.inf)
        self.wait_count = 0
        self.best_epoch = None
        self.best_step = None
        self.best_weights = None
        self._best_weights_local = False

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        """Check the monitored metric; track the best score, epoch and weights; stop when allowed."""
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        if self.hold_off_while_compressing and model_is_changing(trainer, ignore=self.ignore_phases):
            if not self._holding_off:
                rank_zero_info(
                    f"EarlyStopping on `{self.monitor}` holds off while compression phases are not done: "
                    f"{phase_states(trainer)}. Tracking restarts when they are."
                )
            self._holding_off = True
            self._reset_tracking()
            return
        self._holding_off = False

        current = logs[self.monitor].squeeze().detach()
        # one decision for all ranks: rank 0's value (identical anyway when the metric is synced)
        current = broadcast_from_rank0(trainer, current.cpu()).to(current.device)
        if self.min_delta_mode == "rel":
            best = float(self.best_score)
            sign = 1.0 if self.monitor_op == torch.gt else -1.0
            self.min_delta = sign * self.relative_min_delta * abs(best) if math.isfinite(best) else 0.0

        previous_best = self.best_score
        should_stop, reason = self._evaluate_stopping_criteria(current)
        if self.best_score is not previous_best:  # improved
            self.best_epoch = trainer.current_epoch
            self.best_step = trainer.global_step
            if self.restore_best_weights and self.best_weights_source == "memory":
                self._run_copy_best_weights(trainer.lightning_module)

        may_stop, why_not = self._may_stop(trainer)
        if trainer.current_epoch < self.start_epoch:
            self.wait_count = 0  # patience counts from start_epoch on
        if should_stop and not may_stop:
            should_stop = False
            self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
            reason = f"{reason} Not stopping yet ({why_not})."

        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = self._stop_message(trainer, reason)
            self._log_info(trainer, self.stopping_reason_message, self.log_rank_zero_only)
        elif reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)
        self._run_logging(trainer)

    def _stop_message(self, trainer: pl.Trainer, reason: str | None) -> str:
        best = float(self.best_score)
        best_text = (
            f"best {self.monitor}={best:.6g} at epoch {self.best_epoch}"
            if self.best_epoch is not None
            else "no best yet"
        )
        restore = ""
        if self.restore_best_weights and self.best_epoch is not None:
            restore = f" Restoring the weights of epoch {self.best_epoch} ({self.best_weights_source}) at the end of fit."
        return (
            f"EarlyStopping stopped training at epoch {trainer.current_epoch} "
            f"({self.stopping_reason.name.lower()}): {best_text}. {reason or ''}{restore}"
        ).strip()

    def _run_logging(self, trainer: pl.Trainer) -> None:
        metrics = {"early_stopping/wait_count": float(self.wait_count)}
        if torch.isfinite(self.best_score):
            metrics["early_stopping/best"] = float(self.best_score)
        log_metrics(trainer, metrics)

    def _run_copy_best_weights(self, pl_module: pl.LightningModule) -> None:
        """A CPU copy of the module's state: whole tensors, or under sharding each rank's own local shards (no
        communication: every rank copies at the same check, since the decision is rank 0's)."""
        if self._sharded:
            self.best_weights, self._best_weights_specs = _local_state_copy(pl_module, with_specs=True)
            self._best_weights_local = True
        else:
            self.best_weights = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }
            self._best_weights_local = False
        self._best_weights_lost_epoch = None

    def _run_restore_best_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the best weights into ``pl_module``, identical on every rank."""
        if self.best_weights_source == "checkpoint":
            path = self._checkpoint_callback(trainer).best_model_path
            path = broadcast_from_rank0(trainer, path)
            if not path:
                rank_zero_info("EarlyStopping: no best checkpoint was saved; the final weights are kept.")
                return
            if self._sharded:
                epoch = _load_sharded_model_weights(pl_module, path)
            else:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                pl_module.load_state_dict(checkpoint["state_dict"])
                epoch = checkpoint.get("epoch")
        else:
            has_best = broadcast_from_rank0(trainer, self.best_weights is not None)
            if not has_best:
                lost = self._best_weights_lost_epoch
                if lost is not None and self.best_epoch == lost:
                    rank_zero_warn(
                        f"EarlyStopping: the best weights (epoch {lost}) were each rank's shards in memory before "
                        "the resume and are not in the checkpoint, and no check improved on them since: the final "
                        "weights are kept. Use `best_weights_source='checkpoint'` for a restore that survives a "
                        "resume of a sharded run."
                    )
                else:
                    rank_zero_info(
                        "EarlyStopping: no best weights were recorded; the final weights are kept."
                    )
                return
            epoch = broadcast_from_rank0(trainer, self.best_epoch)
            if self._best_weights_local:
                _restore_local_state(trainer, pl_module, self.best_weights)
            else:
                # one pickled object: the CPU copies cannot go tensor by tensor under NCCL
                state = broadcast_from_rank0(trainer, self.best_weights)
                if self._sharded:  # whole tensors (from a checkpoint of an unsharded run) into the shards
                    _load_full_state_into_shards(pl_module, state)
                else:
                    pl_module.load_state_dict(state)
        self.restored_epoch = epoch
        rank_zero_info(
            f"EarlyStopping restored the weights of epoch {epoch} (best {self.monitor}={float(self.best_score):.6g})."
        )


# --------------------------------------------------------------------------------------------- sharded state
def _fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _reshard(module: nn.Module) -> None:
    """Every FSDP2 module of ``module`` back to its sharded parameters (the root's stay gathered after an
    evaluation forward): ``state_dict()`` and the parameters are then the shards (``DTensor``). No communication."""
    for m in _fsdp_modules(module):
        m.reshard()


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local_state_copy(module: nn.Module, with_specs: bool = False) -> Any:
    """A CPU copy of ``module``'s state dict as this rank holds it: each sharded entry's local shard
    (``DTensor.to_local()``), every other entry (buffers) whole. No communication. With ``with_specs``:
    ``(copy, specs)``, ``specs`` naming how each sharded entry is split (for :func:`_gather_local_state`)."""
    _reshard(module)
    state = module.state_dict()
    copy = {
        k: (v.to_local() if _is_dtensor(v) else v).detach().to("cpu", copy=True) for k, v in state.items()
    }
    if not with_specs:
        return copy
    specs = {
        k: (v.device_mesh, tuple(v.placements), tuple(v.shape), tuple(v.stride()))
        for k, v in state.items()
        if _is_dtensor(v)
    }
    return copy, specs


def _can_gather(specs: dict[str, tuple[Any, ...]]) -> bool:
    """Whether the shards described by ``specs`` can be gathered now (a process group is up)."""
    import torch.distributed as dist

    return bool(specs) and dist.is_available() and dist.is_initialized()


def _gather_local_state(saved: dict[str, Tensor], specs: dict[str, tuple[Any, ...]]) -> dict[str, Tensor]:
    """Whole CPU tensors from this rank's copy ``saved`` (of :func:`_local_state_copy`): each sharded entry gathered
    from the ranks' shards, one at a time (a collective: every rank calls it, with copies of the same entries);
    the other entries as they are (this rank's buffers: rank 0's are the ones a checkpoint keeps)."""
    from torch.distributed.tensor import DTensor

    whole = {}
    for name, value in saved.items():
        if name not in specs:
            whole[name] = value
            continue
        mesh, placements, shape, stride = specs[name]
        local = value.to(mesh.device_type)
        dtensor = DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)
        whole[name] = dtensor.full_tensor().cpu()
    return whole


def _restore_local_state(trainer: pl.Trainer, module: nn.Module, saved: dict[str, Tensor]) -> None:
    """Copy ``saved`` (from :func:`_local_state_copy` on this rank) back into ``module``: each sharded entry into
    this rank's local shard; the other entries (buffers, which FSDP2 does not synchronize) from rank 0's copy,
    so every rank ends identical. One broadcast of rank 0's unsharded entries; no gather."""
    _reshard(module)
    current = module.state_dict(keep_vars=True)
    if set(current) != set(saved):
        raise RuntimeError(
            "EarlyStopping: the module's state changed since its best weights were copied (entries not in both: "
            f"{sorted(set(current) ^ set(saved))[:5]})."
        )
    unsharded = {k: v for k, v in saved.items() if not _is_dtensor(current[k])}
    unsharded = broadcast_from_rank0(trainer, unsharded)
    with torch.no_grad():
        for name, target in current.items():
            if _is_dtensor(target):
                local = target.to_local()
                if local.shape != saved[name].shape:
                    raise RuntimeError(
                        f"EarlyStopping: the local shard of {name!r} has shape {tuple(local.shape)}, its saved copy "
                        f"{tuple(saved[name].shape)}: the network was sharded differently."
                    )
                local.copy_(saved[name])
            else:
                target.copy_(unsharded[name])


def _load_full_state_into_shards(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load whole tensors (the same on every rank) into a sharded ``module``: each rank keeps its part of each
    sharded entry (``torch.distributed.checkpoint.state_dict.set_model_state_dict``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _reshard(module)
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=True))


def _load_sharded_model_weights(module: nn.Module, path: str) -> int | None:
    """Load the model weights of the checkpoint ``path`` into a sharded ``module`` (optimizer state left as it
    is); returns the checkpoint's epoch. A folder is a sharded checkpoint written by ``ModelParallelStrategy``
    (``torch.distributed.checkpoint`` files: each rank reads its shards; ``meta.pt`` holds the epoch); a file is
    a whole checkpoint (``save_distributed_checkpoint=False``). Every rank calls it (collectives)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    folder = Path(path)
    if folder.is_dir():
        import torch.distributed.checkpoint as dcp
        from lightning.fabric.utilities.load import _METADATA_FILENAME

        _reshard(module)
        state = get_model_state_dict(module)  # this rank's shards, filled in place by the load
        dcp.load({"state_dict": state}, checkpoint_id=folder)
        _load_sharded_state(module, state)
        meta = folder / _METADATA_FILENAME
        return (
            torch.load(meta, map_location="cpu", weights_only=True).get("epoch") if meta.is_file() else None
        )
    checkpoint = torch.load(folder, map_location="cpu", weights_only=True)
    _load_full_state_into_shards(module, checkpoint["state_dict"])
    return checkpoint.get("epoch")


def _load_sharded_state(module: nn.Module, state: dict[str, Any]) -> None:
    """Load a state dict of this rank's shards (``DTensor`` entries, as ``get_model_state_dict`` gives) into
    ``module``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(strict=True))
