"""Tests generated from the settings table: every exported callback, every mode.

For each callback in ``lightning_optim.callbacks.__all__``: a 2-epoch fit on the embedded digits,
``state_dict`` round trip, pickling (before and after fit), LightningCLI YAML instantiation, resume from a
mid-run checkpoint equal to the uninterrupted run, ``bf16-mixed``, and (``-m slow``) a 2-process DDP fit
on CPU whose final model and callback state are identical on both ranks.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.callbacks import matrix_support as ms
from tests.callbacks.callback_settings import CALLBACK_SETTINGS

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORTED = ms.exported_callbacks()


def _skip_reason(name: str, mode: str) -> str | None:
    return ms.entry(name).get("skip", {}).get(mode)


def _params(name: str, mode: str):
    marks = []
    reason = _skip_reason(name, mode) if name in CALLBACK_SETTINGS else None
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(name, id=name, marks=marks)


def _cases(mode: str):
    return [_params(n, mode) for n in sorted(CALLBACK_SETTINGS) if ms.callback_class(n) in EXPORTED]


def _fit(name: str, root: str, callback=None, ckpt_path=None, **overrides):
    pl.seed_everything(0, workers=True)
    callback = callback if callback is not None else ms.make_callback(name)
    module = ms.make_module(name)
    dm = ms.make_datamodule(name)
    extra = [*ms.companions(name), *overrides.pop("callbacks", [])]
    trainer = pl.Trainer(callbacks=[callback, *extra], **ms.trainer_kwargs(name, root, **overrides))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, callback


def test_every_exported_callback_has_settings():
    missing = sorted(set(EXPORTED) - {ms.callback_class(n) for n in CALLBACK_SETTINGS})
    assert not missing, f"Exported callbacks without an entry in tests/callbacks/settings/: {missing}"
    unknown = sorted(n for n in CALLBACK_SETTINGS if ms.callback_class(n) not in EXPORTED)
    assert not unknown, f"Settings entries for callbacks that are not exported: {unknown}"


@pytest.mark.parametrize("name", _cases("fit"))
def test_fit_two_epochs(name, tmp_path):
    trainer, module, callback = _fit(name, str(tmp_path))
    assert trainer.state.finished, trainer.state
    assert trainer.current_epoch == 2
    check = ms.entry(name).get("check_active")
    if check is not None:
        check(trainer, module, callback)


@pytest.mark.parametrize("name", _cases("state_dict"))
def test_state_dict_round_trip(name, tmp_path):
    _, _, callback = _fit(name, str(tmp_path))
    state = callback.state_dict()
    fresh = ms.make_callback(name)
    fresh.load_state_dict(state)
    ms.assert_states_equal(state, fresh.state_dict(), what=f"{name} state")
    assert callback.state_key == fresh.state_key


@pytest.mark.parametrize("name", _cases("pickle"))
def test_pickling(name, tmp_path):
    callback = ms.make_callback(name)
    clone = pickle.loads(pickle.dumps(callback))
    assert type(clone) is type(callback)
    _, _, fitted = _fit(name, str(tmp_path), callback=callback)
    clone = pickle.loads(pickle.dumps(fitted))
    ms.assert_states_equal(fitted.state_dict(), clone.state_dict(), what=f"{name} pickled state")


@pytest.mark.parametrize("name", _cases("cli"))
def test_cli_yaml_instantiation(name, tmp_path):
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI
    from lightning_optim.modules import ClassificationModule

    init_args = ms.entry(name).get("cli_kwargs", ms.callback_kwargs(name))
    config = {
        "trainer": {
            "accelerator": "cpu",
            "logger": False,
            "max_epochs": 1,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": f"lightning_optim.callbacks.{ms.callback_class(name)}", "init_args": init_args}
            ],
        },
        "model": {
            "class_path": "ClassificationModule",
            "init_args": {"model": {"class_path": "LeNet300100", "init_args": {"in_features": 64}}},
        },
        "data": {"class_path": "ImageClassificationDataModule", "init_args": {"dataset": "digits"}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    cli = LightningOptimCLI(
        ClassificationModule, LightningDataModule, run=False, args=["--config", str(path)]
    )
    cls = getattr(__import__("lightning_optim.callbacks", fromlist=["_"]), ms.callback_class(name))
    found = [cb for cb in cli.trainer.callbacks if isinstance(cb, cls)]
    assert len(found) == 1, f"{name} was not instantiated from YAML: {cli.trainer.callbacks}"


@pytest.mark.parametrize("name", _cases("resume"))
def test_resume_equals_uninterrupted(name, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    full_ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    _, full_module, full_cb = _fit(
        name, str(tmp_path / "a"), callbacks=[full_ckpt], enable_checkpointing=True
    )
    mid = ckpt_dir / "epoch=0.ckpt"
    assert mid.is_file(), sorted(os.listdir(ckpt_dir))
    _, resumed_module, resumed_cb = _fit(
        name, str(tmp_path / "b"), ckpt_path=str(mid), enable_checkpointing=True
    )
    ignore = set(ms.entry(name).get("resume_ignore", ()))
    state_a = {
        k: v for k, v in ms.flatten_state(full_cb.state_dict()).items() if k.split(".")[0] not in ignore
    }
    state_b = {
        k: v for k, v in ms.flatten_state(resumed_cb.state_dict()).items() if k.split(".")[0] not in ignore
    }
    ms.assert_states_equal(state_a, state_b, what=f"{name} callback state after resume")
    ms.assert_states_equal(
        ms.model_state(full_module), ms.model_state(resumed_module), what=f"{name} model after resume"
    )


@pytest.mark.parametrize("name", _cases("bf16"))
def test_bf16_mixed(name, tmp_path):
    trainer, module, _ = _fit(name, str(tmp_path), precision="bf16-mixed")
    assert trainer.state.finished
    for key, value in ms.model_state(module).items():
        assert torch.isfinite(value).all(), f"{name}: non-finite {key} after bf16-mixed fit"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs CUDA (runs on a lent GPU)")
@pytest.mark.parametrize("name", _cases("fp16"))
def test_16_mixed_on_gpu(name, tmp_path):
    trainer, module, _ = _fit(
        name, str(tmp_path), precision="16-mixed", accelerator="gpu", deterministic=False
    )
    assert trainer.state.finished
    for key, value in ms.model_state(module).items():
        assert torch.isfinite(value).all(), f"{name}: non-finite {key} after 16-mixed fit"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_identical(tmp_path):
    names = [
        n
        for n in sorted(CALLBACK_SETTINGS)
        if ms.callback_class(n) in EXPORTED and not _skip_reason(n, "ddp")
    ]
    if not names:
        pytest.skip("no exported callbacks yet")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        f"--master_port={_free_port()}",
        "--master_addr=127.0.0.1",
        str(REPO_ROOT / "tests" / "callbacks" / "ddp_matrix_worker.py"),
        str(tmp_path),
        *names,
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    for name in names:
        r0 = torch.load(tmp_path / f"{name}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{name}_rank1.pt", weights_only=True)
        assert r0["world_size"] == r1["world_size"] == 2
        ms.assert_states_equal(r0["model"], r1["model"], atol=0.0, what=f"{name} model rank0 vs rank1")
        ms.assert_states_equal(
            r0["callback"], r1["callback"], atol=0.0, what=f"{name} callback rank0 vs rank1"
        )
