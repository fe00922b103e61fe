from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_optim.callbacks import NonFiniteError, NonFiniteGuard
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs


class NaNAtStep(nn.Module):
    """Wraps a model; its output becomes NaN from training call number ``step`` on."""

    def __init__(self, inner: nn.Module, step: int) -> None:
        super().__init__()
        self.inner, self.step, self.calls = inner, step, 0
        self.num_classes = 10

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > self.step:
                out = out * float("nan")
        return out


class PoisonWeights(Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.model.fc2.weight[0, 0] = float("inf")


@pytest.mark.parametrize("bad_step", [0, 3, 7])
def test_nan_loss_stops_before_update_and_names_the_step(tmp_path, bad_step):
    pl.seed_everything(0)
    module = ClassificationModule(NaNAtStep(LeNet300100(in_features=64), bad_step), lr=1e-3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = pl.Trainer(
        callbacks=[NonFiniteGuard(), ckpt],
        **quiet_trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True, limit_train_batches=5),
    )
    with pytest.raises(NonFiniteError, match=f"global step {bad_step} "):
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=32))
    for p in module.parameters():
        assert torch.isfinite(p).all(), "a non-finite update reached the weights"
    if bad_step > 0:
        state = torch.load(tmp_path / "last.ckpt", weights_only=True)
        assert state["global_step"] == bad_step
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_non_finite_weight_is_named(tmp_path):
    module = ClassificationModule(LeNet300100(in_features=64), lr=1e-3)
    trainer = pl.Trainer(
        callbacks=[PoisonWeights(at_step=2), NonFiniteGuard(check_weights_every_n_steps=1)],
        **quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=5),
    )
    with pytest.raises(NonFiniteError, match=r"model\.fc2\.weight"):
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=32))


def test_finite_run_is_untouched(tmp_path):
    guard = NonFiniteGuard(check_weights_every_n_steps=1)
    trainer = pl.Trainer(
        callbacks=[guard], **quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=4)
    )
    trainer.fit(
        ClassificationModule(LeNet300100(in_features=64)), datamodule=ImageClassificationDataModule("digits")
    )
    assert guard.checks == 4


def test_bad_input():
    with pytest.raises(ValueError, match="check_weights_every_n_steps"):
        NonFiniteGuard(check_weights_every_n_steps=-1)
