"""Resume a run from a checkpoint bit for bit: random states per rank, the rest of the interrupted epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_optim.callbacks._resume_points import (
    count_skipped_validation_step,
    ends_epoch_unseen,
    epoch_results_state,
    mark_validation_pending,
    restore_epoch_results,
    resumes_mid_epoch,
    stop_restoring_epoch_results,
    validation_pending,
)
from lightning_optim.callbacks._trainer import is_distributed
from lightning_optim.functional.random_state import (
    capture_random_state,
    check_random_state,
    restore_random_state,
)

__all__ = ["ExactResume", "metric_states", "restore_metric_states"]


def metric_states(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The accumulated states of every ``torchmetrics.Metric`` in ``module`` (by module name): what the
    metrics have seen this epoch, which a checkpoint does not hold (their states are not persistent)."""
    out: dict[str, dict[str, Any]] = {}
    for name, metric in module.named_modules():
        if not name or not isinstance(metric, Metric):
            continue
        states: dict[str, Any] = {}
        for key, value in metric.metric_state.items():
            if isinstance(value, Tensor):
                states[key] = value.detach().cpu().clone()
            elif isinstance(value, list) and all(isinstance(v, Tensor) for v in value):
                states[key] = [v.detach().cpu().clone() for v in value]
        out[name] = {"states": states, "update_count": int(metric._update_count)}
    return out


def restore_metric_states(module: nn.Module, saved: dict[str, dict[str, Any]]) -> int:
    """Put back what :func:`metric_states` saved, on each metric's device; returns how many metrics."""
    done = 0
    for name, entry in saved.items():
        try:
            metric = module.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(metric, Metric):
            continue
        device = metric.device
        for key, value in entry["states"].items():
            setattr(
                metric, key, [v.to(device) for v in value] if isinstance(value, list) else value.to(device)
            )
        metric._update_count = int(entry["update_count"])
        metric._computed = None
        done += 1
    return done


class _FirstFetch(Iterator):
    """Stands in for the training data fetcher's iterator until the first batch after a resume is fetched."""

    def __init__(self, callback: ExactResume, trainer: pl.Trainer, iterator: Any) -> None:
        self.callback = callback
        self.trainer = trainer
        self.iterator = iterator
        self.first = True

    def __next__(self) -> Any:
        if self.first:
            self.first = False
            self.iterator = self.callback._run_first_fetch(self.trainer, self.iterator)
        return next(self.iterator)


class ExactResume(Callback):
    """Make a resumed run continue exactly as the uninterrupted run would have: same dropout masks, same
    augmentations, same batches, same result to the bit.

    A Lightning checkpoint holds the weights, the optimizer and every callback's state, but not the random
    number generators, where the data loader was in the epoch nor what the epoch's metrics had summed. This
    callback adds them:

    - **Random states, per rank.** Torch's CPU generator, every CUDA device's generator (once CUDA is in use),
      NumPy's and Python's :mod:`random` travel in the checkpoint, one set per rank (gathered to rank 0 when it
      writes), as they were at the save and at the start of the epoch. A resumed rank gets its own set back.
    - **The epoch's metrics.** What Lightning has accumulated of ``self.log(..., on_epoch=True)`` values and the
      states of the module's ``torchmetrics`` metrics, so the epoch means logged after a mid-epoch resume are
      the uninterrupted run's.
    - **The rest of the epoch.** Lightning restarts a mid-epoch checkpoint's epoch from its first batch (the
      data loaders of this package are not stateful). With ``fast_forward`` (default) the batches the
      interrupted run had already trained on are drawn again and dropped (under the random state of the epoch's
      start, so a shuffling sampler draws the same order) before training goes on with the next one.
    - **The moment of the restore.** The random states are set back just before the first batch after the
      resume is fetched (or at the start of the epoch, when the checkpoint ends one), so whatever the resumed
      run draws while it sets up (model hooks, other callbacks' ``on_train_start``) does not shift them. Put it
      first among the callbacks (the ``lightning-optim`` command does): at an epoch boundary its
      ``on_train_epoch_start`` then sets them back before the others draw.
    - **Checkpoints written in** ``on_train_batch_end`` (``ModelCheckpoint(every_n_train_steps=...)``) of a
      batch that validation or the end of an epoch follows: Lightning 2.6 resumes them skipping that
      validation (and on an epoch's last batch ``on_train_epoch_end`` and the next ``on_train_epoch_start``);
      this callback marks the validation as pending in the loop state it saves, so the resumed run runs it.

    What stays out of reach: data loader workers (``num_workers > 0``) seed themselves from the random state
    when the epoch's iterator is made, which for the first epoch happens before any callback runs, so per-sample
    random augmentation in workers is exact from the second epoch on only; a resume on another number of
    processes gives the extra ranks rank ``r % n``'s state (with a warning). Resume from a checkpoint written
    without this callback warns that the random states start over.

    Args:
        fast_forward: on a mid-epoch resume, drop the batches the interrupted run already trained on (they are
            loaded again: a long epoch takes a moment); ``False`` keeps Lightning's default (the epoch's data
            starts over).

    Example::

        trainer = Trainer(callbacks=[ExactResume(), ModelCheckpoint(save_last=True, every_n_train_steps=100)])
        trainer.fit(module, datamodule=dm, ckpt_path="last")
    """

    #: random states and data position, no parameters: works unchanged on sharded parameters
    sharded_parameters = "supported"

    def __init__(self, fast_forward: bool = True) -> None:
        super().__init__()
        if not isinstance(fast_forward, bool):
            raise ValueError(f"`fast_forward` must be True or False, got {fast_forward!r}.")
        self.fast_forward = fast_forward
        self.restored: list[str] = []  # the generators the last resume set back (for tests and logs)
        self.skipped_batches = 0  # batches dropped by the last mid-epoch resume
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._epoch_start: dict[str, Any] | None = None  # this rank's random state at the epoch's start
        self._loaded: dict[str, Any] | None = None  # the checkpoint's states, until this rank's are set back
        self._pending_step: dict[str, Any] | None = None  # this rank's state at the save, not yet set back
        self._armed = False  # the first fetch after a resume has not happened yet
        self._validation_first = False  # the checkpoint left a validation pending: it runs before any fetch

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"ranks": [{"step": state, "epoch_start": state | None}, ...]}``: one entry per rank.

        Between a resume and the moment its states are set back, the loaded states are returned as loaded.
        """
        if self._loaded is not None:
            return self._loaded
        mine: dict[str, Any] = {"step": capture_random_state(), "epoch_start": self._epoch_start}
        trainer, module = self._trainer, self._module
        if trainer is not None and module is not None and trainer.state.fn == TrainerFn.FITTING:
            mine["epoch_results"] = epoch_results_state(trainer)
            mine["metrics"] = metric_states(module)
        return {"ranks": self._gather(mine)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") if isinstance(state_dict, dict) else None
        if not isinstance(ranks, list) or not ranks:
            raise ValueError("ExactResume: the checkpoint's state has no `ranks` list of random states.")
        for rank, entry in enumerate(ranks):
            if not isinstance(entry, dict) or "step" not in entry:
                raise ValueError("ExactResume: each rank's state needs `step` (and `epoch_start`).")
            try:
                check_random_state(entry["step"])
                if entry.get("epoch_start") is not None:
                    check_random_state(entry["epoch_start"])
            except ValueError as err:
                raise ValueError(
                    f"ExactResume: rank {rank}'s random state in the checkpoint: {err}"
                ) from None
        self._loaded = {"ranks": ranks}

    def _gather(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        trainer = self._trainer
        if trainer is None or not is_distributed(trainer):
            return [mine]
        out: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(out, mine)
        return out

    # ------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = self._module = None
        self._armed = self._validation_first = False

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._validation_first = validation_pending(checkpoint)
        if ends_epoch_unseen(checkpoint):
            rank_zero_warn(
                "ExactResume: the checkpoint was written in on_train_batch_end of an epoch's last batch "
                "(ModelCheckpoint(every_n_train_steps=...)) with no validation marked as pending; Lightning "
                "resumes it without that epoch's on_train_epoch_end and the next on_train_epoch_start, so "
                "callbacks acting there can differ from the uninterrupted run. Pick an every_n_train_steps that "
                "does not divide the epoch, or save at epoch ends (save_on_train_epoch_end=True)."
            )
        if self.state_key not in checkpoint.get("callbacks", {}):
            rank_zero_warn(
                "ExactResume: the checkpoint was written without ExactResume and holds no random states; the "
                "resumed run draws other random numbers (dropout, augmentation) than the interrupted run would "
                "have."
            )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            # the loop state Lightning resumes correctly from a save in on_train_batch_end before a validation,
            # or from one after a whole step (an interrupt)
            mark_validation_pending(trainer, checkpoint) or count_skipped_validation_step(trainer, checkpoint)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_arm(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop_restoring_epoch_results(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_step is not None:
            self._restore_step()  # a checkpoint at an epoch's end: the run goes on from here
        self._epoch_start = capture_random_state()

    # ------------------------------------------------------------------------------------------- logic
    def _run_arm(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume: take this rank's states; in an epoch that goes on, put back what its metrics had
        accumulated; stand in for the data fetcher's iterator so the random states are set back at its first
        fetch (where the fetcher cannot be reached, at once)."""
        if self._loaded is None:
            return
        ranks = self._loaded["ranks"]
        if len(ranks) != trainer.world_size:
            rank_zero_warn(
                f"ExactResume: the checkpoint holds the random states of {len(ranks)} rank(s) and this run has "
                f"{trainer.world_size}; rank r continues from rank r % {len(ranks)}'s, so the run is not the one "
                "the interrupted run would have been."
            )
        mine = ranks[trainer.global_rank % len(ranks)]
        if resumes_mid_epoch(trainer):
            restore_metric_states(pl_module, mine.get("metrics") or {})
            restore_epoch_results(trainer, pl_module, mine.get("epoch_results") or [])
        self._pending_step = mine["step"]
        self._epoch_start = mine.get("epoch_start")
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        no_fetcher = (
            fetcher is None or getattr(fetcher, "iterator", None) is None or hasattr(fetcher, "_batch")
        )
        if self._validation_first or no_fetcher:
            # a pending validation's loader draws as it is made, before any hook; without a fetcher to stand in
            # for (or with a training_step that fetches itself) there is no later point either: set back now
            self._validation_first = False
            self._restore_step()
        if no_fetcher:
            return
        fetcher.iterator = _FirstFetch(self, trainer, fetcher.iterator)
        self._armed = True

    def _restore_step(self) -> None:
        assert self._pending_step is not None
        self.restored = restore_random_state(self._pending_step)
        self._pending_step = None
        self._loaded = None

    def _run_first_fetch(self, trainer: pl.Trainer, iterator: Any) -> Any:
        """The first training batch after a resume is about to be fetched: drop the batches the interrupted
        epoch had trained on, set the random states back, and hand over the iterator to fetch from."""
        if not self._armed:
            return iterator
        self._armed = False
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        self.skipped_batches = 0
        if done > 0 and self.fast_forward:
            now = capture_random_state() if self._pending_step is None else self._pending_step
            if self._epoch_start is not None:
                restore_random_state(self._epoch_start)  # the sampler's and the workers' draws at epoch start
            iterator = iter(iterator)  # a fresh pass over the epoch's data
            for _ in range(done):
                next(iterator)
            self.skipped_batches = done
            self._pending_step = now
        elif done == 0:
            if self._pending_step is not None:
                self._restore_step()
            return iter(iterator)  # the epoch's pass, made after the states are set back, as it was
        if self._pending_step is not None:
            self._restore_step()
        return iterator
