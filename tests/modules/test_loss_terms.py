"""The loss-term extension point: StepContext, combine_losses, unpack_batch, and its use from a Trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_optim import ClassificationModule, ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import (
    LossTermProvider,
    StepContext,
    combine_losses,
    loss_term_providers,
    unpack_batch,
)
from tests.conftest import quiet_trainer_kwargs


class ConstantTerm:
    def __init__(self, name: str, value: float, task_weight: float | None = None) -> None:
        self.name, self.value, self.task_weight = name, value, task_weight
        self.seen: list[StepContext] = []

    def loss_terms(self, trainer, pl_module, ctx):
        self.seen.append(ctx)
        return {self.name: torch.tensor(self.value)}

    def task_loss_weight(self, trainer, pl_module, ctx):
        return 1.0 if self.task_weight is None else self.task_weight


def ctx(task: float = 2.0) -> StepContext:
    return StepContext(
        "train", torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 4), torch.tensor(task)
    )


def module_with_callbacks(*callbacks):
    return SimpleNamespace(_trainer=SimpleNamespace(callbacks=list(callbacks)))


def test_no_trainer_gives_the_task_loss():
    total, parts = combine_losses(SimpleNamespace(), ctx())
    assert total.item() == 2.0 and set(parts) == {"task", "total"}


def test_terms_are_added_and_the_task_loss_weighted():
    a, b = ConstantTerm("kd", 0.5, task_weight=0.25), ConstantTerm("sparsity", 0.1)
    total, parts = combine_losses(module_with_callbacks(a, Callback(), b), ctx(2.0))
    assert total.item() == pytest.approx(2.0 * 0.25 + 0.5 + 0.1)
    assert set(parts) == {"task", "kd", "sparsity", "total"} and parts["task"].item() == 2.0
    assert a.seen and a.seen[0].logits.shape == (2, 4)


def test_task_loss_weights_multiply():
    a, b = ConstantTerm("a", 0.0, task_weight=0.5), ConstantTerm("b", 0.0, task_weight=0.5)
    total, _ = combine_losses(module_with_callbacks(a, b), ctx(4.0))
    assert total.item() == pytest.approx(1.0)


def test_duplicate_term_names_raise():
    with pytest.raises(ValueError, match="'kd'"):
        combine_losses(module_with_callbacks(ConstantTerm("kd", 1.0), ConstantTerm("kd", 2.0)), ctx())


def test_gradient_flows_through_terms():
    w = torch.tensor(3.0, requires_grad=True)

    class Penalty:
        def loss_terms(self, trainer, pl_module, ctx):
            return {"pen": w**2}

    total, parts = combine_losses(module_with_callbacks(Penalty()), ctx(1.0))
    total.backward()
    assert w.grad.item() == pytest.approx(6.0) and not parts["pen"].requires_grad


def test_providers_are_callbacks_with_loss_terms():
    provider = ConstantTerm("x", 1.0)
    assert loss_term_providers(module_with_callbacks(Callback(), provider)) == [provider]
    assert isinstance(provider, LossTermProvider)


@pytest.mark.parametrize(
    ("batch", "has_index"),
    [
        ((torch.zeros(2, 3), torch.tensor([0, 1])), False),
        ([torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([7, 8])], True),
        ({"input": torch.zeros(2, 3), "target": torch.tensor([0, 1])}, False),
        ({"input": torch.zeros(2, 3), "target": torch.tensor([0, 1]), "index": torch.tensor([7, 8])}, True),
    ],
)
def test_unpack_batch(batch, has_index):
    x, y, index = unpack_batch(batch)
    assert x.shape == (2, 3) and y.tolist() == [0, 1]
    assert (index is not None) is has_index


@pytest.mark.parametrize("batch", [torch.zeros(3), (torch.zeros(1),), [1, 2, 3, 4]])
def test_unpack_batch_rejects_other_shapes(batch):
    with pytest.raises(TypeError, match="A batch must be"):
        unpack_batch(batch)


class LogitMarginTerm(Callback):
    """A callback that reads the logits and adds a term (as distillation does)."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.stages: set[str] = set()
        self.logit_shapes: set[tuple[int, ...]] = set()

    def loss_terms(self, trainer, pl_module, ctx):
        self.stages.add(ctx.stage)
        self.logit_shapes.add(tuple(ctx.logits.shape[1:]))
        return {"margin": self.weight * ctx.logits.float().pow(2).mean()}


class ConfidencePenaltyModule(ClassificationModule):
    """A user's subclass: its own task loss; callbacks' terms still apply."""

    def task_loss(self, logits, targets):
        ce = super().task_loss(logits, targets)
        entropy = -(logits.float().softmax(-1) * logits.float().log_softmax(-1)).sum(-1).mean()
        return ce - 0.1 * entropy


def test_callback_terms_reach_a_subclass_in_a_real_fit(tmp_path):
    torch.manual_seed(0)
    term = LogitMarginTerm(0.01)
    module = ConfidencePenaltyModule(LeNet300100(in_features=64), lr=1e-3)
    trainer = Trainer(
        **quiet_trainer_kwargs(tmp_path, limit_train_batches=3, limit_val_batches=1), callbacks=[term]
    )
    trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=32))
    assert term.stages == {"train"} and term.logit_shapes == {(10,)}
    metrics = trainer.callback_metrics
    assert {"train_loss_margin", "train_loss_task", "train_loss"} <= set(metrics)
    total = metrics["train_loss_task"] + metrics["train_loss_margin"]
    torch.testing.assert_close(metrics["train_loss"], total)


def test_loss_part_sums_travel_in_checkpoints(tmp_path):
    """A checkpoint taken mid-epoch carries the loss parts' running sums; a run resumed from it continues them
    (Lightning does not call on_train_epoch_start for an epoch it resumes in the middle)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = ClassificationModule(LeNet300100(in_features=64))
    module._log_loss_parts({"train_loss_task": torch.tensor(2.0), "train_loss_kd": torch.tensor(0.5)}, 0, 64)
    module._log_loss_parts({"train_loss_task": torch.tensor(1.0), "train_loss_kd": torch.tensor(0.25)}, 1, 32)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = ClassificationModule(LeNet300100(in_features=64))
    resumed.on_load_checkpoint(checkpoint)
    assert resumed._loss_part_samples == 96
    torch.testing.assert_close(resumed._loss_part_sums["train_loss_task"], torch.tensor(2.0 * 64 + 1.0 * 32))
    torch.testing.assert_close(resumed._loss_part_sums["train_loss_kd"], torch.tensor(0.5 * 64 + 0.25 * 32))
    resumed.on_train_epoch_start()  # a new epoch starts from zero
    assert resumed._loss_part_samples == 0 and not resumed._loss_part_sums

    class FirstBatch(Callback):
        samples: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.samples.append(pl_module._loss_part_samples)

    def run(root, ckpt_path=None, extra=(), max_steps=-1):
        torch.manual_seed(0)
        kwargs = quiet_trainer_kwargs(root, max_epochs=1, limit_val_batches=0)
        kwargs.update(enable_checkpointing=True, max_steps=max_steps)
        trainer = Trainer(callbacks=[LogitMarginTerm(0.01), *extra], **kwargs)
        trainer.fit(
            ClassificationModule(LeNet300100(in_features=64)),
            datamodule=ImageClassificationDataModule("digits", batch_size=64),
            ckpt_path=ckpt_path,
        )

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, filename="mid")
    run(tmp_path / "first", extra=(saver,), max_steps=5)
    probe = FirstBatch()
    run(tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "mid.ckpt"), extra=(probe,))
    assert probe.samples[0] == 5 * 64  # the resumed epoch continues the sums of its first five batches
