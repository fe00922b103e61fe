"""Stop a run on SIGTERM or SIGINT at the end of a training step, with a checkpoint to resume from."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_optim.callbacks._trainer import is_distributed
from lightning_optim.checks import check_choice

__all__ = ["InterruptCheckpoint", "INTERRUPT_SIGNALS", "exit_status"]

log = logging.getLogger(__name__)

#: the signals the callback can turn into "finish the step, save, stop"
INTERRUPT_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT")


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum``: ``128 + signum`` (SIGTERM 143, SIGINT 130), as a
    shell reports a process the signal ended."""
    return 128 + int(signum)


def _set_stop_flag(trainer: pl.Trainer, value: bool) -> None:
    """Lightning's own "SIGTERM received" flag: its loops raise ``SIGTERMException`` after the current training
    batch (its validation included) while it is set, and mid-validation too, hence it is cleared while a
    validation runs. (``Trainer.received_sigterm`` reads it; Lightning's signal handler sets it.)"""
    trainer._signal_connector.received_sigterm = value


class InterruptCheckpoint(Callback):
    """On SIGTERM or SIGINT: finish the current training step, save a checkpoint, stop with a non-zero status.

    Lightning alone turns SIGTERM into a stop that saves nothing and ends with exit status 0, and Ctrl+C into
    an abort in the middle of a step. With this callback the signal is only noted; the run stops at the next
    safe point, the end of the current training step (after the validation that follows it, if one does; a
    signal during validation stops after it), where Lightning's loop state resumes exactly:

    - a checkpoint is written to ``<dirpath>/<filename>.ckpt`` (every rank takes part; rank 0 writes);
    - ``trainer.fit`` raises ``SIGTERMException`` (a ``SystemExit``) with code ``128 + signum`` (SIGTERM: 143,
      SIGINT: 130), so a script or the ``lightning-optim`` command ends with that status;
    - a rerun with ``ckpt_path="last"`` (``--ckpt_path last``) continues from it: the default file name
      ``last.ckpt`` in the ``ModelCheckpoint`` folder is what Lightning's ``"last"`` finds (without a
      ``ModelCheckpoint``, pass :attr:`checkpoint_path`; the ``lightning-optim`` command finds it either way).

    A second Ctrl+C aborts at once, without a checkpoint (Lightning's ``KeyboardInterrupt`` handling, status 1).
    The end-of-step check runs in this callback's ``on_train_batch_end``: put it after the other callbacks (the
    ``lightning-optim`` command does), so that a signal arriving during their hooks stops the run at the end of
    that step rather than the next.
    Under DDP the stop is agreed over the ranks at each step's end (any rank signalled stops all of them at the
    same step). The handlers are installed when training starts (``fit`` only, from the main thread; until then
    Lightning's own SIGTERM handling stops the sanity check, and this callback still saves and sets the status),
    and the previous ones are back when the fit ends. Add :class:`~lightning_optim.callbacks.ExactResume` for a resume that is exact to
    the bit.

    Args:
        dirpath: folder of the checkpoint; ``None``: the first ``ModelCheckpoint``'s folder, else
            ``<default_root_dir>/checkpoints``.
        filename: file name without ``.ckpt`` (default ``"last"``: found by ``ckpt_path="last"``).
        signals: the signals to handle, among ``"SIGTERM"`` and ``"SIGINT"``.

    Raises:
        ValueError: an unknown signal, an empty list, or a file name that is empty or has a folder in it.

    Example::

        trainer = Trainer(callbacks=[InterruptCheckpoint(), ModelCheckpoint(save_last=True)])
        trainer.fit(module, datamodule=dm, ckpt_path="last")  # kill -TERM <pid>: saves, exits 143
    """

    #: a stop flag and a save through the strategy: works unchanged on sharded parameters
    sharded_parameters = "supported"

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "last",
        signals: Sequence[str] = INTERRUPT_SIGNALS,
    ) -> None:
        super().__init__()
        if isinstance(signals, str):
            signals = [signals]
        signals = [check_choice("signals", s, INTERRUPT_SIGNALS) for s in signals]
        if not signals:
            raise ValueError(f"`signals` is empty; give one or more of {list(INTERRUPT_SIGNALS)}.")
        if (
            not isinstance(filename, str)
            or not filename
            or os.sep in filename
            or (os.altsep or os.sep) in filename
        ):
            raise ValueError(
                f"`filename` {filename!r} must be a file name without a folder (for example 'last')."
            )
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.filename = filename
        self.signals = list(dict.fromkeys(signals))
        self.received: int | None = None  # the signal noted (this rank)
        self.checkpoint_path: str | None = None  # where the checkpoint was written
        self._stopping = False  # the stop is agreed: Lightning raises after the current step
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------------------------------- paths
    def folder(self, trainer: pl.Trainer) -> str:
        """The folder the checkpoint goes to (see ``dirpath``)."""
        if self.dirpath is not None:
            return self.dirpath
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return os.fspath(callback.dirpath)
        return os.path.join(trainer.default_root_dir, "checkpoints")

    def path(self, trainer: pl.Trainer) -> str:
        """The checkpoint's path: ``<folder>/<filename>.ckpt``."""
        return os.path.join(self.folder(trainer), f"{self.filename}.ckpt")

    # ------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            self.received = None
            self.checkpoint_path = None
            self._stopping = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning's own SIGTERM handler (which would stop mid-validation): Lightning puts the handlers
        # it found back when the fit ends, normally or not; before this, its handler stops the sanity check
        self._install()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._run_agree(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopping:
            _set_stop_flag(trainer, False)  # let the validation finish: the run stops after it

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._run_agree(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_agree(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        if isinstance(exception, SIGTERMException) and (
            self.received is not None or trainer.received_sigterm
        ):
            if self.received is None:  # Lightning's handler, before training started (the sanity check)
                self.received = signal.SIGTERM
            self._run_save(trainer, exception)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ------------------------------------------------------------------------------------------- logic
    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                f"Received {signal.Signals(signum).name}: the run stops after the current training step and "
                "saves a checkpoint to resume from"
                + (" (Ctrl+C again aborts at once, without one)." if signum == signal.SIGINT else ".")
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def _install(self, replace: bool = False) -> None:
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn(
                "InterruptCheckpoint: not in the main thread, so no signal handler can be installed."
            )
            return
        for name in self.signals:
            signum = getattr(signal, name)
            current = signal.getsignal(signum)
            if current == self._handle:
                continue
            if signum not in self._previous:
                self._previous[signum] = current
            elif not replace:
                continue
            signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _run_agree(self, trainer: pl.Trainer) -> None:
        """At a step's (or validation's, or epoch's) end: stop if any rank was signalled."""
        if self._stopping:
            _set_stop_flag(trainer, True)
            return
        noted = self.received is not None
        if is_distributed(trainer):
            noted = bool(trainer.strategy.reduce_boolean_decision(noted, all=False))
            if noted and self.received is None:
                self.received = signal.SIGTERM  # another rank was signalled
        if noted:
            self._stopping = True
            _set_stop_flag(trainer, True)

    def _run_save(self, trainer: pl.Trainer, exception: BaseException) -> None:
        assert self.received is not None
        status = exit_status(self.received)
        path = self.path(trainer)
        try:
            trainer.save_checkpoint(path)
        except OSError as err:
            log.error(f"InterruptCheckpoint: the checkpoint could not be saved: {err}")
        else:
            self.checkpoint_path = path
            rank_zero_info(
                f"Stopped by {signal.Signals(self.received).name} after global step {trainer.global_step}; saved "
                f"{path}. Resume with ckpt_path='last' (lightning-optim fit ... --ckpt_path last)."
            )
        exception.code = status  # SIGTERMException is a SystemExit: the process ends with this status
