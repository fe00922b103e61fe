"""The shared trainer plumbing of the callbacks (lightning_optim/callbacks/_trainer.py)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger

from lightning_optim.callbacks._trainer import (
    batch_inputs,
    broadcast_from_rank0,
    eval_batches,
    eval_loader,
    example_from_batch,
    known_input_shape,
    log_metrics,
)
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs


class _Recorder(Logger):
    def __init__(self):
        super().__init__()
        self.calls = []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((dict(metrics), step))


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ((torch.ones(3, 2), torch.zeros(3)), "x"),
        ((torch.ones(3, 2), torch.zeros(3), torch.arange(3)), "x"),
        ({"input": torch.ones(3, 2), "target": torch.zeros(3)}, "x"),
        ([torch.ones(3, 2)], "x"),
        (torch.ones(3, 2), "x"),
    ],
)
def test_batch_inputs_and_example(batch, expected):
    x = batch_inputs(batch)
    assert torch.equal(x, torch.ones(3, 2))
    example = example_from_batch(batch, n=2)
    assert example.shape == (2, 2) and example.device.type == "cpu"
    example.add_(1)  # a copy: the batch is untouched
    assert torch.equal(batch_inputs(batch), torch.ones(3, 2))


def test_example_keeps_dtype_and_refuses_non_tensors():
    tokens = torch.arange(12).reshape(3, 4)
    assert example_from_batch((tokens, torch.zeros(3))).dtype == torch.long
    assert example_from_batch(("text", 1)) is None


def test_known_input_shape_order(tmp_path):
    module = ClassificationModule(LeNet300100(in_features=64))
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path))
    assert known_input_shape(trainer, module) is None
    assert known_input_shape(trainer, module, [1, 8, 8]) == (1, 8, 8)
    module.example_input_array = torch.zeros(5, 1, 8, 8)
    assert known_input_shape(trainer, module) == (1, 8, 8)


def test_log_metrics_reaches_every_logger_once_per_call(tmp_path):
    a, b = _Recorder(), _Recorder()
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path, logger=[a, b]))
    log_metrics(trainer, {"m": 1.0})
    log_metrics(trainer, {"m": 2.0}, step=7)
    log_metrics(trainer, {})
    assert a.calls == b.calls == [({"m": 1.0}, 0), ({"m": 2.0}, 7)]


def test_broadcast_in_one_process_is_the_object_itself(tmp_path):
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path))
    obj = {"w": torch.ones(2)}
    assert broadcast_from_rank0(trainer, obj) is obj
    assert broadcast_from_rank0(trainer, obj, tensorwise=True) is obj


def test_eval_batches_are_normalized_never_augmented(tmp_path):
    dm = ImageClassificationDataModule("digits", batch_size=16, augmentation="strong")
    module = ClassificationModule(LeNet300100(in_features=64))
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path, limit_train_batches=1, limit_val_batches=1))
    trainer.fit(module, datamodule=dm)
    first = list(eval_batches(trainer, module, "val", limit=2))
    again = list(eval_batches(trainer, module, "val", limit=2))
    assert len(first) == 2
    for (x1, y1), (x2, y2) in zip(first, again):
        assert x1.dtype == torch.float32 and x1.device.type == "cpu"
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # no random augmentation
    images, labels = next(iter(dm.val_dataloader()))
    assert torch.allclose(first[0][0], dm.to_model_input(images, train=False))
    assert torch.equal(first[0][1], labels)
    assert trainer.state.stage is None  # the stage is restored (None after fit)


def test_eval_loader_prefers_the_data_module_and_returns_none_without_data(tmp_path):
    dm = ImageClassificationDataModule("digits", batch_size=16)
    module = ClassificationModule(LeNet300100(in_features=64))
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path, limit_train_batches=1, limit_val_batches=1))
    trainer.fit(module, datamodule=dm)
    assert eval_loader(trainer, module, "test") is not None
    bare = pl.Trainer(**quiet_trainer_kwargs(tmp_path))
    assert eval_loader(bare, module, "test") is None
    assert list(eval_batches(bare, module, "test")) == []
