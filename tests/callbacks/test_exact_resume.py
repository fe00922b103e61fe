"""ExactResume: a run resumed from any of its checkpoints ends bit-identical to the uninterrupted run (dropout,
shuffling, epoch metrics), and what it cannot restore is said."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import ExactResume
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.random_state import (
    capture_random_state,
    check_random_state,
    restore_random_state,
)
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs

BATCHES, EPOCHS = 4, 2


class MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    name = "memory"
    version = 0

    def log_metrics(self, metrics, step=None):
        self.rows += [(int(step or 0), k, float(metrics[k])) for k in sorted(metrics)]

    def log_hyperparams(self, *args, **kwargs):
        pass


class ShuffledDigits(pl.LightningDataModule):
    """A plain ``DataLoader(shuffle=True)``: its order is drawn from the global torch generator."""

    def setup(self, stage=None):
        dm = ImageClassificationDataModule("digits")
        dm.setup("fit")
        x = dm.to_model_input(dm.test_split.images)
        self.data = TensorDataset(x, dm.test_split.labels)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=64)


def _fit(root, ckpt_path=None, exact=True, data=None, **trainer_kwargs):
    pl.seed_everything(0)
    module = ClassificationModule(ConvNet3(image_size=8, channels=(8, 8, 16), hidden=16, dropout=0.5))
    logger = MemoryLogger()
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    callbacks = [ExactResume()] if exact else []
    kwargs = quiet_trainer_kwargs(
        root,
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        limit_val_batches=2,
        enable_checkpointing=True,
        logger=logger,
        log_every_n_steps=1,
    )
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=[*callbacks, ckpt], **kwargs)
    trainer.fit(
        module,
        datamodule=data if data is not None else ImageClassificationDataModule("digits", batch_size=32),
        ckpt_path=ckpt_path,
    )
    return module, logger.rows, trainer


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    module, rows, _ = _fit(root)
    return root, module, rows


# 2: mid-epoch; 4: an epoch's last batch, its validation still to run; 5: the second epoch's first batch
@pytest.mark.parametrize("step", [2, 4, 5])
def test_resumed_from_any_step_ends_bit_identical(uninterrupted, tmp_path, step):
    root, full, full_rows = uninterrupted
    resumed, rows, _ = _fit(tmp_path, ckpt_path=str(root / "ckpt" / f"step={step}.ckpt"))
    assert _same_weights(full, resumed)
    assert rows and rows == full_rows[-len(rows) :]  # every logged value and step after the resume point


def test_without_it_the_resumed_run_differs(uninterrupted, tmp_path):
    root, full, _ = uninterrupted
    resumed, _, _ = _fit(tmp_path, ckpt_path=str(root / "ckpt" / "step=2.ckpt"), exact=False)
    assert not _same_weights(full, resumed)  # dropout draws other masks: the check above can fail


def test_a_validation_in_the_middle_of_an_epoch_is_run_after_the_resume(tmp_path):
    full, full_rows, _ = _fit(tmp_path / "a", val_check_interval=0.5)
    resumed, rows, _ = _fit(
        tmp_path / "b", ckpt_path=str(tmp_path / "a" / "ckpt" / "step=2.ckpt"), val_check_interval=0.5
    )
    assert _same_weights(full, resumed)
    assert rows == full_rows[-len(rows) :]
    assert "val_loss" in {
        name for step, name, _ in rows if step == rows[0][0]
    }  # the pending validation first


def test_a_loader_shuffled_by_the_global_generator_continues_its_epoch(tmp_path):
    full, full_rows, _ = _fit(tmp_path / "a", data=ShuffledDigits())
    resumed, rows, trainer = _fit(
        tmp_path / "b", ckpt_path=str(tmp_path / "a" / "ckpt" / "step=6.ckpt"), data=ShuffledDigits()
    )
    assert _same_weights(full, resumed)
    assert rows == full_rows[-len(rows) :]
    callback = next(c for c in trainer.callbacks if isinstance(c, ExactResume))
    assert callback.skipped_batches == 2 and callback.restored[:2] == ["torch", "python"]


def test_a_checkpoint_without_its_state_is_resumed_with_a_warning(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    path = tmp_path / "plain.ckpt"
    state = torch.load(root / "ckpt" / "step=2.ckpt", weights_only=True)
    state["callbacks"] = {k: v for k, v in state["callbacks"].items() if "ExactResume" not in k}
    torch.save(state, path)
    with pytest.warns(UserWarning, match="written without ExactResume"):
        _fit(tmp_path / "run", ckpt_path=str(path))


def test_another_number_of_ranks_is_said(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    path = tmp_path / "two.ckpt"
    state = torch.load(root / "ckpt" / "step=2.ckpt", weights_only=True)
    key = next(k for k in state["callbacks"] if "ExactResume" in k)
    ranks = state["callbacks"][key]["ranks"]
    state["callbacks"][key]["ranks"] = ranks + ranks
    torch.save(state, path)
    with pytest.warns(UserWarning, match="random states of 2 rank"):
        _fit(tmp_path / "run", ckpt_path=str(path))


def test_an_epochs_last_batch_without_validation_is_said(tmp_path):
    _fit(tmp_path / "a", check_val_every_n_epoch=2)
    with pytest.warns(UserWarning, match="last batch .* on_train_epoch_end"):
        _fit(
            tmp_path / "b", ckpt_path=str(tmp_path / "a" / "ckpt" / "step=4.ckpt"), check_val_every_n_epoch=2
        )


def test_the_state_loads_weights_only_and_pending_states_are_handed_on(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    state = torch.load(root / "ckpt" / "step=5.ckpt", weights_only=True)
    key = next(k for k in state["callbacks"] if "ExactResume" in k)
    saved = state["callbacks"][key]
    assert {"step", "epoch_start", "epoch_results", "metrics"} <= saved["ranks"][0].keys()
    callback = ExactResume()
    callback.load_state_dict(saved)
    assert callback.state_dict() is not None and callback.state_dict()["ranks"] == saved["ranks"]


def test_random_states_round_trip_for_torch_numpy_and_python(tmp_path):
    state = capture_random_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    restored = restore_random_state(torch.load(path, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert restored[:3] == ["torch", "python", "numpy"]
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([], "must be a dict"),
        ({"torch": torch.zeros(3), "gpu": 1}, "Unknown random state keys"),
        ({"torch": torch.zeros(3)}, "`torch`"),
        ({"torch": torch.get_rng_state(), "python": {"state": [1]}}, "`python`"),
        ({"torch": torch.get_rng_state(), "cuda": [1]}, "`cuda`"),
    ],
)
def test_bad_random_states_are_refused(state, message):
    with pytest.raises(ValueError, match=message):
        check_random_state(state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on a lent GPU)")
def test_cuda_random_states_travel_and_a_gpu_resume_is_exact(tmp_path):
    torch.rand(1, device="cuda")  # CUDA in use: its generators are part of the state
    state = capture_random_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(8, device="cuda")
    assert "cuda" in restore_random_state(state)
    assert torch.equal(first, torch.rand(8, device="cuda"))
    full, _, _ = _fit(tmp_path / "a", accelerator="gpu", deterministic=True)
    resumed, _, _ = _fit(
        tmp_path / "b",
        ckpt_path=str(tmp_path / "a" / "ckpt" / "step=2.ckpt"),
        accelerator="gpu",
        deterministic=True,
    )
    assert _same_weights(full, resumed)  # dropout on the GPU draws from the restored CUDA generator
