"""AtomicCheckpointIO: a full disk or a kill while a checkpoint is written never costs the last good one, and
loads take only regular files with ``weights_only=True``."""

from __future__ import annotations

import errno
import io
import os
import pickle
import stat
import threading

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_optim.plugins.checkpoint_io as atomic
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from lightning_optim.plugins import AtomicCheckpointIO, CheckpointWriteError
from tests.conftest import quiet_trainer_kwargs


def _temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(atomic.TEMP_SUFFIX))


@pytest.fixture
def full_disk_at(monkeypatch):
    """``full_disk_at(n)``: the n-th checkpoint write (counting from 1) writes half its bytes, then ENOSPC."""

    def install(n: int) -> list[int]:
        real_save = atomic.torch.save
        calls = [0]

        def save(obj, fh):
            calls[0] += 1
            if calls[0] != n:
                return real_save(obj, fh)
            buffer = io.BytesIO()
            real_save(obj, buffer)
            fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(atomic.torch, "save", save)
        return calls

    return install


def _fit(root, ckpt_path=None, max_steps=6):
    pl.seed_everything(0)
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(32, 16)))
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = pl.Trainer(
        plugins=[AtomicCheckpointIO()],
        callbacks=[ckpt],
        **quiet_trainer_kwargs(root, max_steps=max_steps, limit_val_batches=0, enable_checkpointing=True),
    )
    trainer.fit(
        module, datamodule=ImageClassificationDataModule("digits", batch_size=32), ckpt_path=ckpt_path
    )
    return trainer, module


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_run_resumes(tmp_path, full_disk_at):
    full_disk_at(4)  # steps 1-3 saved, the 4th write fails half-way
    with pytest.raises(
        CheckpointWriteError, match="No space left on device.*previous checkpoint there is unchanged"
    ):
        _fit(tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    state = AtomicCheckpointIO().load_checkpoint(last)  # still loads: the failed write never touched it
    assert state["global_step"] == 3
    assert not _temps(tmp_path / "ckpt"), "the failed write left its temporary file"
    trainer, _ = _fit(tmp_path, ckpt_path="last")  # space freed: resume
    assert trainer.global_step == 6


def test_the_error_keeps_errno_and_names_the_file(tmp_path, full_disk_at):
    full_disk_at(1)
    target = tmp_path / "x.ckpt"
    with pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(3)}, target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "nothing was written" in str(info.value) and not target.exists()


def test_a_save_replaces_the_file_with_fsync_and_keeps_its_mode(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "last.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"v": torch.tensor(1)}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    target.chmod(0o640)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real_fsync(fd)
    )
    io_.save_checkpoint({"v": torch.tensor(2)}, target)
    assert synced == [False, True], "the file, then its folder, must be synced"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert io_.load_checkpoint(target)["v"].item() == 2
    assert not _temps(target.parent)


def test_a_write_killed_half_way_leaves_a_hidden_temp_the_next_save_removes(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"v": torch.tensor(1)}, target)
    stale = tmp_path / ".last.ckpt.abc123.tmp"  # what a SIGKILL during a write leaves
    stale.write_bytes(b"half a checkpoint")
    assert AtomicCheckpointIO().load_checkpoint(target)["v"].item() == 1
    AtomicCheckpointIO().save_checkpoint({"v": torch.tensor(2)}, target)
    assert not stale.exists()


def test_loads_refuse_what_is_not_a_checkpoint_file(tmp_path):
    io_ = AtomicCheckpointIO()
    with pytest.raises(FileNotFoundError, match="`ckpt_path`"):
        io_.load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="`ckpt_path` .* is a folder"):
        io_.load_checkpoint(tmp_path)
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_raises(io_.load_checkpoint, fifo)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "loading a FIFO blocked"
    assert isinstance(outcome[0], ValueError) and "not a regular file" in str(outcome[0])
    good = tmp_path / "good.ckpt"
    torch.save({"w": torch.arange(1000.0)}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.ckpt' is not a readable checkpoint"):
        io_.load_checkpoint(truncated)
    with pytest.raises(ValueError, match="weights_only=True"):
        io_.load_checkpoint(good, weights_only=False)


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_pickle_payload_is_refused_as_weights_only_refuses_it(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights_only|Unsupported global"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_remote_paths_go_to_lightnings_writer():
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"v": torch.tensor(7)}, "memory://lightning-optim/last.ckpt")
    assert io_.load_checkpoint("memory://lightning-optim/last.ckpt")["v"].item() == 7


def _raises(fn, *args):
    try:
        fn(*args)
    except Exception as err:  # noqa: BLE001 - returned to the test
        return err
    return None
