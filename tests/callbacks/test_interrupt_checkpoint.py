"""InterruptCheckpoint: SIGTERM or SIGINT finishes the step (and its validation), saves a checkpoint, stops with
status 128 + signal; the resume from it ends as the uninterrupted run; the signal handlers are put back."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from lightning_optim.callbacks import ExactResume, InterruptCheckpoint
from lightning_optim.callbacks.interrupt_checkpoint import exit_status
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs

BATCHES, EPOCHS = 4, 2


class SendSignal(Callback):
    """Sends ``signums`` to this process at one point: after training step ``step`` or in its validation
    (placed before InterruptCheckpoint, whose end-of-step check then sees it in the same step)."""

    def __init__(self, signums: list[int], step: int, where: str = "batch_end") -> None:
        self.signums, self.step, self.where, self.sent = signums, step, where, False

    def _send(self, trainer) -> None:
        if not self.sent and trainer.global_step == self.step:
            self.sent = True
            for signum in self.signums:
                os.kill(os.getpid(), signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "batch_end":
            self._send(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.where == "validation" and not trainer.sanity_checking:
            self._send(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.where == "epoch_end":
            self._send(trainer)


class Steps(Callback):
    def __init__(self) -> None:
        self.validated_at: list[int] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated_at.append(trainer.global_step)


def _fit(root, *callbacks, ckpt_path=None, with_model_checkpoint=False, logger=False, **trainer_kwargs):
    pl.seed_everything(0)
    module = ClassificationModule(ConvNet3(image_size=8, channels=(8, 8, 16), hidden=16, dropout=0.5))
    extra = (
        [ModelCheckpoint(dirpath=root / "mc", save_last=True, save_top_k=0)] if with_model_checkpoint else []
    )
    trainer = pl.Trainer(
        callbacks=[ExactResume(), *callbacks, *extra],
        **quiet_trainer_kwargs(
            root,
            max_epochs=EPOCHS,
            limit_train_batches=BATCHES,
            limit_val_batches=2,
            enable_checkpointing=with_model_checkpoint,
            logger=logger,
            log_every_n_steps=1,
            **trainer_kwargs,
        ),
    )
    trainer.fit(
        module, datamodule=ImageClassificationDataModule("digits", batch_size=32), ckpt_path=ckpt_path
    )
    return trainer, module


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


class MemoryLogger(Logger):
    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    def log_metrics(self, metrics, step=None):
        self.rows += [(int(step or 0), k, float(metrics[k])) for k in sorted(metrics)]

    def log_hyperparams(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    _, module = _fit(tmp_path_factory.mktemp("full"))
    return module


def test_sigterm_saves_at_the_end_of_the_step_exits_143_and_the_resume_is_exact(uninterrupted, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    interrupt = InterruptCheckpoint()
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path, SendSignal([signal.SIGTERM], step=3), interrupt)
    assert stop.value.code == 143 == exit_status(signal.SIGTERM)
    path = tmp_path / "checkpoints" / "last.ckpt"  # no ModelCheckpoint: <default_root_dir>/checkpoints
    assert interrupt.checkpoint_path == str(path) and interrupt.received == signal.SIGTERM
    assert torch.load(path, weights_only=True)["global_step"] == 3  # the step the signal arrived in
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    trainer, resumed = _fit(tmp_path, InterruptCheckpoint(), ckpt_path=str(path))
    assert trainer.global_step == EPOCHS * BATCHES and _same_weights(uninterrupted, resumed)


def test_sigint_exits_130_and_saves_beside_the_model_checkpoint_as_last(tmp_path):
    interrupt = InterruptCheckpoint()
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path, SendSignal([signal.SIGINT], step=2), interrupt, with_model_checkpoint=True)
    assert stop.value.code == 130
    assert interrupt.checkpoint_path == str(tmp_path / "mc" / "last.ckpt")  # what ckpt_path="last" finds
    trainer, _ = _fit(tmp_path, InterruptCheckpoint(), ckpt_path="last", with_model_checkpoint=True)
    assert trainer.global_step == EPOCHS * BATCHES


def test_a_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path):
    interrupt = InterruptCheckpoint()
    with pytest.raises(SystemExit) as stop:  # Lightning turns the KeyboardInterrupt into exit status 1
        _fit(tmp_path, interrupt, SendSignal([signal.SIGINT, signal.SIGINT], step=2))
    assert stop.value.code == 1
    assert interrupt.checkpoint_path is None and not (tmp_path / "checkpoints").exists()


# an epoch-end validation, a validation in the middle of an epoch, the end of an epoch
@pytest.mark.parametrize(
    ("where", "step", "val_check_interval"),
    [("validation", BATCHES, 1.0), ("validation", 2, 0.5), ("epoch_end", BATCHES, 1.0)],
    ids=["epoch-end-validation", "mid-epoch-validation", "epoch-end"],
)
def test_a_signal_during_validation_or_an_epochs_end_lets_it_finish(
    tmp_path, where, step, val_check_interval
):
    kwargs = {"val_check_interval": val_check_interval}
    full_steps, full_logger = Steps(), MemoryLogger()
    _, full = _fit(tmp_path / "full", full_steps, logger=full_logger, **kwargs)
    steps = Steps()
    with pytest.raises(SystemExit):
        _fit(
            tmp_path,
            steps,
            SendSignal([signal.SIGTERM], step=step, where=where),
            InterruptCheckpoint(),
            **kwargs,
        )
    assert steps.validated_at[-1] == step  # the validation ran to its end, then the run stopped
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(path, weights_only=True)["global_step"] == step
    again, logger = Steps(), MemoryLogger()
    _, resumed = _fit(tmp_path, again, InterruptCheckpoint(), ckpt_path=str(path), logger=logger, **kwargs)
    assert again.validated_at == [s for s in full_steps.validated_at if s > step]  # none twice, none lost
    assert _same_weights(full, resumed)
    assert logger.rows == full_logger.rows[-len(logger.rows) :]  # the same values at the same steps


def test_signals_it_does_not_handle_keep_their_handler(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        trainer, _ = _fit(
            tmp_path, InterruptCheckpoint(signals=["SIGTERM"]), SendSignal([signal.SIGINT], step=2)
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT] and trainer.global_step == EPOCHS * BATCHES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"signals": ["SIGKILL"]}, "Unknown `signals` 'SIGKILL'"),
        ({"signals": []}, "`signals` is empty"),
        ({"filename": "a/b"}, "without a folder"),
        ({"filename": ""}, "without a folder"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InterruptCheckpoint(**kwargs)
