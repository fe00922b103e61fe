"""Private: where in Lightning's loops a checkpoint was written, and the loop state that resumes from there.

Lightning 2.6 restarts cleanly from most save points, but not from a checkpoint written in
``on_train_batch_end`` (``ModelCheckpoint(every_n_train_steps=...)``) of a batch that validation or the end of
the epoch follows: it skips that validation and, on an epoch's last batch, also that epoch's
``on_train_epoch_end`` and the next epoch's ``on_train_epoch_start`` (a callback that acts there never does).
:func:`mark_validation_pending` rewrites such a checkpoint's loop state into one Lightning does resume
correctly where validation follows: the batch counted as completed and the validation marked as started, so
the resumed run validates, ends the epoch and starts the next one as the uninterrupted run did. For an
epoch's last batch that no validation follows, no loop state Lightning reads does that
(:func:`ends_epoch_unseen` tells it, so the resume can warn).

Everything here reads or writes Lightning's private loop state (the keys of ``checkpoint["loops"]``, the
epoch loop's ``_should_check_val_fx``); it is kept in this one file, and ``tests/reliability`` checks the
resumed runs against uninterrupted ones, so a change of Lightning's internals fails a test, not a user's run.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

#: the loop-state keys this module reads (Lightning 2.6)
FIT_LOOP = "fit_loop"
BATCH_PROGRESS = "epoch_loop.batch_progress"
VAL_PROGRESS = "epoch_loop.val_loop.batch_progress"
EPOCH_LOOP_STATE = "epoch_loop.state_dict"


def _fit_loop_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    loops = checkpoint.get("loops")
    state = loops.get(FIT_LOOP) if isinstance(loops, dict) else None
    if not isinstance(state, dict) or BATCH_PROGRESS not in state or VAL_PROGRESS not in state:
        return None
    return state


def validation_due(trainer: pl.Trainer) -> bool | None:
    """Whether the fit loop validates after the current training batch (``None`` where it cannot be told)."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except (AttributeError, TypeError, AssertionError):
        return None


def written_at_batch_end(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint was written in ``on_train_batch_end``: the batch processed, not yet completed."""
    state = _fit_loop_state(checkpoint)
    if state is None:
        return False
    current = state[BATCH_PROGRESS]["current"]
    return (
        current["ready"] == current["started"] == current["processed"]
        and current["completed"] == current["processed"] - 1
    )


def written_after_batch(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint was written after a training batch ended completely (validation included),
    before the next one: ready, started, processed and completed all equal and at least one batch run."""
    state = _fit_loop_state(checkpoint)
    if state is None:
        return False
    current = state[BATCH_PROGRESS]["current"]
    return current["ready"] == current["started"] == current["processed"] == current["completed"] > 0


def validation_pending(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint's validation loop started and did not finish (Lightning's "restarted mid
    evaluation"): the resumed run validates before it trains again."""
    state = _fit_loop_state(checkpoint)
    if state is None:
        return False
    total = state[VAL_PROGRESS]["total"]
    return (
        total["started"] == total["ready"]
        and total["processed"] == total["started"] - 1
        and total["completed"] == total["processed"]
    )


def mark_validation_pending(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> bool:
    """Rewrite a checkpoint written in ``on_train_batch_end`` of a batch that validation follows (see the
    module docstring) so that Lightning resumes it by running that validation; anything else is left.

    Returns:
        Whether the checkpoint was rewritten.
    """
    if not written_at_batch_end(checkpoint) or not validation_due(trainer):
        return False
    state = _fit_loop_state(checkpoint)
    assert state is not None
    batches = state[BATCH_PROGRESS]
    for part in ("total", "current"):
        batches[part]["completed"] = batches[part]["processed"]
    # a validation that started and ran no batch (the current run's counters from zero, so the resumed
    # validation runs every batch): Lightning goes back to run it, then ends the batch and, at an epoch's last
    # batch, the epoch
    val = state[VAL_PROGRESS]
    total = val["total"]
    total["completed"] = total["processed"]
    total["ready"] = total["started"] = total["processed"] + 1
    val["current"].update(ready=1, started=1, processed=0, completed=0)
    val["is_last_batch"] = False
    return True


def ends_epoch_unseen(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint was written in ``on_train_batch_end`` of an epoch's last batch and left so (no
    validation followed, or it was written without ``ExactResume``): Lightning 2.6 resumes it without that
    epoch's rest (``on_train_epoch_end``, the next epoch's ``on_train_epoch_start``), and where no validation
    follows, no loop state it reads makes it run them."""
    state = _fit_loop_state(checkpoint)
    return (
        state is not None
        and written_at_batch_end(checkpoint)
        and bool(state[BATCH_PROGRESS].get("is_last_batch", False))
    )


def count_skipped_validation_step(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> bool:
    """For a checkpoint written in the training stage after a batch ended completely, validation included,
    inside the epoch (an interrupt at the end of a step, ``InterruptCheckpoint``): Lightning's resumed loop
    skips the finished validation and then counts that batch's logging step a second time, so the checkpoint
    holds one step fewer. Returns whether it changed the checkpoint."""
    if not trainer.training or not written_after_batch(checkpoint) or not validation_due(trainer):
        return False
    state = _fit_loop_state(checkpoint)
    assert state is not None
    epochs = state.get("epoch_progress", {}).get("current", {})
    if epochs.get("processed") != epochs.get("started", 0) - 1:
        return False  # written at the epoch's end (on_train_epoch_end): the epoch loop does not run again
    loop_state = state.get(EPOCH_LOOP_STATE)
    if not isinstance(loop_state, dict) or "_batches_that_stepped" not in loop_state:
        return False
    loop_state["_batches_that_stepped"] -= 1
    return True


# ----------------------------------------------------------------------------------------------- epoch metrics
#: the reductions ``self.log`` accepts, by the name the state keeps
_REDUCTIONS = ("mean", "max", "min", "sum")


def resumes_mid_epoch(trainer: pl.Trainer) -> bool:
    """Whether the resumed fit continues an epoch the checkpoint was written in (it validates or trains more
    batches of it before the epoch ends); ``False`` for a checkpoint written at or after an epoch's end."""
    return bool(getattr(trainer.fit_loop, "restarted_mid_epoch", False))


def _training_results(trainer: pl.Trainer) -> Any:
    return getattr(trainer.fit_loop.epoch_loop, "_results", None)


def epoch_results_state(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """What Lightning has accumulated of the epoch's ``self.log(..., on_epoch=True)`` values in training (the
    running sums and batch counts of each logged name, the metric objects' names): a checkpoint does not hold
    it, so a run resumed mid-epoch would log epoch means over the batches after the resume only."""
    results = _training_results(trainer)
    if not results:
        return []
    out = []
    for key, item in results.items():
        meta = item.meta
        sync = meta._sync
        if item.has_reset or not meta.on_epoch or (sync is not None and sync.group is not None):
            continue  # nothing accumulated, or a custom process group that cannot be named again
        reduce = next((r for r in _REDUCTIONS if getattr(meta, f"is_{r}_reduction")), None)
        if reduce is None:
            continue
        entry: dict[str, Any] = {
            "key": key,
            "fx": meta.fx,
            "name": meta.name,
            "prog_bar": meta.prog_bar,
            "logger": meta.logger,
            "on_step": meta.on_step,
            "on_epoch": meta.on_epoch,
            "reduce_fx": reduce,
            "enable_graph": meta.enable_graph,
            "add_dataloader_idx": meta.add_dataloader_idx,
            "dataloader_idx": meta.dataloader_idx,
            "metric_attribute": meta.metric_attribute,
            "sync_dist": bool(sync.should) if sync is not None else False,
            "rank_zero_only": bool(sync.rank_zero_only) if sync is not None else False,
            "is_tensor": bool(item.is_tensor),
        }
        if item.is_tensor:
            entry["value"] = item.value.detach().cpu().clone()
            if meta.is_mean_reduction:
                entry["cumulated_batch_size"] = item.cumulated_batch_size.detach().cpu().clone()
        elif not meta.metric_attribute:
            continue
        out.append(entry)
    return out


class _RestoreOnUpdate:
    """Stands in for the results' ``update_metrics`` until each restored name is logged again: Lightning clears
    a name's sums when it is first logged in a loop, so the sums go back just before that first update."""

    def __init__(self, results: Any, pending: dict[str, dict[str, Any]], device: Any) -> None:
        self.results, self.pending, self.device = results, pending, device
        self.original = type(results).update_metrics.__get__(results)

    def __call__(self, key: str, value: Any, batch_size: int) -> None:
        entry = self.pending.pop(key, None)
        if entry is not None and entry["is_tensor"]:
            _set_sums(self.results[key], entry, self.device)
        if not self.pending:
            self.detach()
        self.original(key, value, batch_size)

    def detach(self) -> None:
        if self.results.__dict__.get("update_metrics") is self:
            del self.results.update_metrics


def _set_sums(item: Any, entry: dict[str, Any], device: Any) -> None:
    item.value = entry["value"].to(device)
    if "cumulated_batch_size" in entry:
        item.cumulated_batch_size = entry["cumulated_batch_size"].to(device)
    item.has_reset = False
    item._computed = None


def restore_epoch_results(
    trainer: pl.Trainer, pl_module: pl.LightningModule, entries: list[dict[str, Any]]
) -> int:
    """Put back what :func:`epoch_results_state` saved, before the resumed epoch logs anything: the logged
    names exist again with their sums (a validation the checkpoint left pending, then the epoch's end, log
    them as the uninterrupted run did), and each name's sums are set again right before it is next updated.

    Returns:
        How many names were restored.
    """
    results = _training_results(trainer)
    if results is None or not entries:
        return 0
    from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync

    device = pl_module.device
    pending: dict[str, dict[str, Any]] = {}
    for entry in entries:
        meta = _Metadata(
            fx=entry["fx"],
            name=entry["name"],
            prog_bar=entry["prog_bar"],
            logger=entry["logger"],
            on_step=entry["on_step"],
            on_epoch=entry["on_epoch"],
            reduce_fx=entry["reduce_fx"],
            enable_graph=entry["enable_graph"],
            add_dataloader_idx=entry["add_dataloader_idx"],
            dataloader_idx=entry["dataloader_idx"],
            metric_attribute=entry["metric_attribute"],
        )
        # as LightningModule.log sets it: synced only where this run is distributed (a checkpoint of several ranks
        # resumed on one device logs the same names unsynced)
        distributed = bool(getattr(trainer._accelerator_connector, "is_distributed", False))
        meta.sync = _Sync(
            _should=entry["sync_dist"] and distributed,
            fn=trainer.strategy.reduce,
            rank_zero_only=entry["rank_zero_only"],
        )
        item = _ResultMetric(meta, entry["is_tensor"])
        if entry["is_tensor"]:
            _set_sums(item, entry, device)
            pending[entry["key"]] = entry
        else:
            try:
                item.value = pl_module.get_submodule(entry["metric_attribute"])
            except AttributeError:
                continue
            item.has_reset = False
        results[entry["key"]] = item
    if pending:
        results.update_metrics = _RestoreOnUpdate(results, pending, device)
    return len(entries)


def stop_restoring_epoch_results(trainer: pl.Trainer) -> None:
    """The resumed epoch ended: names not logged again keep Lightning's own behaviour from now on."""
    results = _training_results(trainer)
    patch = results.__dict__.get("update_metrics") if results is not None else None
    if isinstance(patch, _RestoreOnUpdate):
        patch.detach()
