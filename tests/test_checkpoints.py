"""Consolidating a sharded checkpoint folder into one file (``lightning_optim.checkpoints``): fast, one process.

The folder here is made the way ``ModelParallelStrategy`` makes one (``torch.distributed.checkpoint`` files of
``{"state_dict": ..., "optimizer_0": ...}`` keyed by parameter name, and ``meta.pt`` with the rest), from a real
single-device fit, without a process group: consolidating it must give back that fit's own single-file
checkpoint. The 2-process FSDP2 case is ``tests/callbacks/test_fsdp2_checkpoints.py``.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import ExactResume
from lightning_optim.checkpoints import (
    DCP_METADATA_FILENAME,
    META_FILENAME,
    consolidate_checkpoint,
    is_sharded_checkpoint,
    main,
)
from lightning_optim.plugins import CheckpointWriteError
from lightning_optim.weights import load_weights
from tests.conftest import quiet_trainer_kwargs

REPO_ROOT = Path(__file__).resolve().parents[1]


def network() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))


def _module(sharding: str | None = None) -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule(network(), optimizer="adam", lr=0.01, weight_decay=1e-4, sharding=sharding)


def _save_sharded(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> Path:
    """A sharded checkpoint folder as ModelParallelStrategy writes it (one rank, no process group)."""
    state = {
        "state_dict": get_model_state_dict(module),
        "optimizer_0": get_optimizer_state_dict(module, optimizer),
    }
    dcp.save(state, checkpoint_id=folder, no_dist=True)
    torch.save(meta, folder / META_FILENAME)
    return folder


class _Reference:
    """A 3-step single-device fit: its single-file checkpoint and the same state as a sharded folder."""

    def __init__(self, root: Path) -> None:
        pl.seed_everything(0)
        self.module = _module()
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g))
        trainer = pl.Trainer(
            **quiet_trainer_kwargs(root, max_epochs=None, max_steps=3, callbacks=[ExactResume()])
        )
        trainer.fit(self.module, train_dataloaders=DataLoader(data, batch_size=8))
        self.file = root / "single.ckpt"
        trainer.save_checkpoint(self.file)
        self.single = torch.load(self.file, weights_only=True)
        meta = {k: v for k, v in self.single.items() if k not in ("state_dict", "optimizer_states")}
        meta["hyper_parameters"] = {**meta["hyper_parameters"], "sharding": "fsdp2"}
        self.meta = meta
        self.optimizer = trainer.optimizers[0]
        self.folder = _save_sharded(root / "sharded.ckpt", self.module, self.optimizer, meta)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> _Reference:
    return _Reference(tmp_path_factory.mktemp("reference"))


def _assert_same(a, b, where: str = "") -> None:
    """Nested dicts/lists/tuples of tensors and plain values, equal exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# ------------------------------------------------------------------------------------------ consolidation
def test_is_sharded_checkpoint(reference, tmp_path):
    assert is_sharded_checkpoint(reference.folder)
    assert not is_sharded_checkpoint(reference.file)
    assert not is_sharded_checkpoint(tmp_path)
    assert not is_sharded_checkpoint(tmp_path / "missing")


def test_consolidated_file_is_the_single_device_checkpoint(reference, tmp_path):
    out = consolidate_checkpoint(reference.folder, tmp_path / "sub" / "model.ckpt")
    assert out == tmp_path / "sub" / "model.ckpt" and out.is_file()
    got = torch.load(out, weights_only=True)
    expected = dict(reference.single)
    assert list(got)[:4] == ["epoch", "global_step", "pytorch-lightning_version", "state_dict"]
    # the same content as Lightning's own single-device file: weights, the optimizer state renumbered the
    # single-device way (two parameter groups), loops, callbacks (ExactResume's random states), hparams
    _assert_same(got, expected, "checkpoint")
    assert [g["params"] for g in got["optimizer_states"][0]["param_groups"]] == [[0, 1], [2, 3]]
    assert got["hyper_parameters"]["sharding"] is None  # was "fsdp2" in meta.pt: the file is single-device
    assert not list(tmp_path.glob("sub/.*.tmp"))  # the temporary file was renamed


def test_consolidated_file_loads_into_the_module_the_weights_loader_and_a_fit(reference, tmp_path):
    out = consolidate_checkpoint(reference.folder, tmp_path / "model.ckpt")
    module = ClassificationModule.load_from_checkpoint(out, model=network())
    assert module.sharding is None
    x = torch.randn(5, 6)
    reference.module.eval()
    with torch.no_grad():
        assert torch.equal(module.eval()(x), reference.module(x))
    net = load_weights(network(), out, "checkpoint")
    assert torch.equal(net[2].weight, reference.module.model[2].weight)

    class Seen(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.step = trainer.global_step
            self.exp_avg = trainer.optimizers[0].state[pl_module.model[0].weight]["exp_avg"].clone()

    seen = Seen()
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(tmp_path, max_epochs=None, max_steps=4, callbacks=[ExactResume(), seen])
    )
    data = TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,)))
    trainer.fit(_module(), train_dataloaders=DataLoader(data, batch_size=8), ckpt_path=out)
    assert seen.step == 3 and trainer.global_step == 4
    expected = reference.optimizer.state[reference.module.model[0].weight]["exp_avg"]
    assert torch.equal(seen.exp_avg, expected)  # the optimizer's moments came back, not zeros


def test_weights_only_leaves_the_training_state_out(reference, tmp_path):
    out = consolidate_checkpoint(reference.folder, tmp_path / "w.ckpt", weights_only=True)
    got = torch.load(out, weights_only=True)
    assert not {"optimizer_states", "callbacks", "lr_schedulers"} & set(got)
    _assert_same(got["state_dict"], reference.single["state_dict"], "state_dict")
    assert got["global_step"] == 3 and "loops" in got
    full = consolidate_checkpoint(reference.folder, tmp_path / "full.ckpt")
    assert out.stat().st_size < full.stat().st_size


# ------------------------------------------------------------------------------------------ refusals
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`path` '.*nowhere' does not exist: expected a sharded"):
        consolidate_checkpoint(tmp_path / "nowhere", tmp_path / "out.ckpt")


def test_a_single_file_checkpoint_needs_no_consolidation(reference, tmp_path):
    with pytest.raises(ValueError, match=r"is a file, not a sharded checkpoint folder: a single-file"):
        consolidate_checkpoint(reference.file, tmp_path / "out.ckpt")


@pytest.mark.parametrize(
    "keep, missing",
    [
        ((), "`meta.pt` and `.metadata`"),
        ((META_FILENAME,), "`.metadata`"),
        ((DCP_METADATA_FILENAME,), "`meta.pt`"),
    ],
)
def test_a_folder_that_is_not_a_sharded_checkpoint(reference, tmp_path, keep, missing):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in keep:
        (folder / name).write_bytes((reference.folder / name).read_bytes())
    with pytest.raises(ValueError, match=rf"is not a sharded checkpoint: it has no {missing}; expected"):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_an_existing_out_is_replaced_only_with_overwrite(reference, tmp_path):
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"`out` '.*out.ckpt' exists already: pass `overwrite=True`"):
        consolidate_checkpoint(reference.folder, out)
    assert out.read_bytes() == b"keep me"
    consolidate_checkpoint(reference.folder, out, overwrite=True)
    assert torch.load(out, weights_only=True)["global_step"] == 3


def test_a_folder_as_out_is_never_replaced(reference, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"`out` .* is a folder"):
        consolidate_checkpoint(reference.folder, tmp_path, overwrite=True)


def test_a_failed_write_leaves_the_previous_file(reference, tmp_path, monkeypatch):
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"previous")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lightning_optim.plugins.checkpoint_io.torch.save", full_disk)
    with pytest.raises(CheckpointWriteError, match="the previous checkpoint there is unchanged"):
        consolidate_checkpoint(reference.folder, out, overwrite=True)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ckpt"]  # no temporary file left


class _Payload:
    """Pickles as a call of ``os.mkdir(marker)``: what an unpickler that trusts the file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_metadata_index_naming_other_types_is_refused_unrun(reference, tmp_path):
    folder = _copy_folder(reference.folder, tmp_path / "bad")
    marker = tmp_path / "ran"
    (folder / DCP_METADATA_FILENAME).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"its `\.metadata` is not the index .*`(posix|nt)\.mkdir`"):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")
    assert not marker.exists()


def test_a_non_tensor_item_is_read_with_weights_only(tmp_path):
    folder = tmp_path / "bad"
    marker = tmp_path / "ran"
    state = {"state_dict": {"model.w": torch.ones(2)}, "extra": _Payload(marker)}
    dcp.save(state, checkpoint_id=folder, no_dist=True)  # saving pickles the payload; nothing runs
    torch.save({"epoch": 0}, folder / META_FILENAME)
    with pytest.raises(
        ValueError, match=r"the item `extra` could not be read \(weights_only=True refused it: .*mkdir"
    ):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")
    assert not marker.exists()


def test_a_meta_file_that_weights_only_refuses(reference, tmp_path):
    folder = _copy_folder(reference.folder, tmp_path / "bad")
    marker = tmp_path / "ran"
    torch.save({"epoch": 0, "x": _Payload(marker)}, folder / META_FILENAME)
    with pytest.raises(
        ValueError, match=r"its `meta.pt` could not be read \(weights_only=True refused it: .*mkdir"
    ):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_truncated_or_missing_shards(reference, tmp_path, damage):
    folder = _copy_folder(reference.folder, tmp_path / "bad")
    (shard,) = folder.glob("*.distcp")
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        shard.unlink()
    with pytest.raises(ValueError, match=r"could not be read \(.*(truncated|No such file)"):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_a_metadata_index_naming_a_shard_outside_the_folder(reference, tmp_path):
    from lightning_optim.checkpoints import _read_metadata

    folder = _copy_folder(reference.folder, tmp_path / "bad")
    metadata = _read_metadata(folder)
    info = next(iter(metadata.storage_data.values()))
    info.relative_path = "../elsewhere.distcp"
    (folder / DCP_METADATA_FILENAME).write_bytes(pickle.dumps(metadata))
    with pytest.raises(
        ValueError, match=r"names the shard file '../elsewhere.distcp', which is not a file of"
    ):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")


def test_a_dcp_folder_without_a_lightning_state_dict(tmp_path):
    folder = tmp_path / "raw"
    dcp.save({"model": {"w": torch.ones(2)}}, checkpoint_id=folder, no_dist=True)
    torch.save({"epoch": 0}, folder / META_FILENAME)
    with pytest.raises(ValueError, match=r"holds no `state_dict` in its shards"):
        consolidate_checkpoint(folder, tmp_path / "out.ckpt")


# ------------------------------------------------------------------------------------------ the command
def test_command_consolidates_and_refuses_an_existing_out(reference, tmp_path, capsys):
    out = tmp_path / "cmd.ckpt"
    assert main(["consolidate", str(reference.folder), str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    _assert_same(torch.load(out, weights_only=True)["state_dict"], reference.single["state_dict"])
    assert main(["consolidate", str(reference.folder), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: `out`") and "exists already" in err and "(`--overwrite`)" in err
    assert main(["consolidate", str(reference.folder), str(out), "--overwrite", "--weights-only"]) == 0
    assert "optimizer_states" not in torch.load(out, weights_only=True)
    assert main(["consolidate", str(tmp_path / "nowhere"), str(tmp_path / "x.ckpt")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_command_needs_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["consolidate", "only-one"])
    assert exit_.value.code == 2
    assert "OUT" in capsys.readouterr().err


@pytest.mark.slow  # starts an interpreter (torch and Lightning imported again: a few seconds)
def test_python_dash_m_runs_the_command(reference, tmp_path):
    out = tmp_path / "m.ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "lightning_optim.checkpoints", "consolidate", str(reference.folder), str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    _assert_same(torch.load(out, weights_only=True)["state_dict"], reference.single["state_dict"])
