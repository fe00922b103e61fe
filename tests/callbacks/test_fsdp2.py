"""Sharded training with FSDP2 (``ModelParallelStrategy`` + ``ClassificationModule(sharding="fsdp2")``).

Fast tests: every exported callback declares its support of sharded parameters, and each refused callback (or
setting) says so at ``setup`` naming the strategy and the alternative. Slow tests (2 processes on CPU, gloo,
started here with Lightning's environment variables; workers in ``tests/callbacks/fsdp2_worker.py``): unstructured
pruning under FSDP2 gives the masks of a single-process run with the same seed and data order; the refusals
happen at setup before any step in a real 2-process fit; the supported callbacks fit together.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy

import lightning_optim.callbacks as callbacks_pkg
from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.callbacks._trainer import SHARDED_SUPPORT, refuse_sharded, sharded_strategy
from tests.callbacks import fsdp2_worker as worker

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the most a 2-process run may take before both workers are killed (their collectives time out sooner)
RUN_TIMEOUT_S = 150


def _exported_callbacks() -> dict[str, type]:
    return {
        name: obj
        for name in callbacks_pkg.__all__
        if inspect.isclass(obj := getattr(callbacks_pkg, name)) and issubclass(obj, Callback)
    }


def _model_parallel_trainer() -> pl.Trainer:
    """A Trainer under ModelParallelStrategy on 2 CPU processes, not started (no process group)."""
    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=30)
    )
    return pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False
    )


# ------------------------------------------------------------------------------------------ declarations
def test_every_exported_callback_declares_its_sharded_support():
    found = _exported_callbacks()
    assert len(found) >= 13
    for name, cls in found.items():
        assert "sharded_parameters" in vars(cls), f"{name} declares no `sharded_parameters`"
        assert cls.sharded_parameters in SHARDED_SUPPORT, (name, cls.sharded_parameters)


def test_every_refused_or_partial_callback_has_a_refused_setting_under_test(tmp_path):
    limited = {n for n, c in _exported_callbacks().items() if c.sharded_parameters != "supported"}
    tested = {type(cb).__name__ for cb in worker.refused_settings(tmp_path).values()}
    assert limited <= tested, f"not tested for their refusal: {sorted(limited - tested)}"


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("setting", list(worker.refused_settings(Path("unused"))))
def test_refused_at_setup_naming_the_strategy_and_the_alternative(setting, tmp_path):
    callback = worker.refused_settings(tmp_path)[setting]
    trainer = _model_parallel_trainer()
    with pytest.raises(ValueError) as err:
        callback.setup(trainer, worker.module("fsdp2"), "fit")
    message = str(err.value)
    assert type(callback).__name__ in message
    assert "ModelParallelStrategy (FSDP2)" in message
    assert 'strategy="ddp"' in message


def test_no_refusal_without_a_sharding_strategy():
    ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert sharded_strategy(ddp) is None
    assert sharded_strategy(pl.Trainer(accelerator="cpu", devices=1, logger=False)) is None
    refuse_sharded(ddp, "X", "why")  # no error
    assert sharded_strategy(_model_parallel_trainer()) == "ModelParallelStrategy (FSDP2)"


def test_supported_settings_of_partial_callbacks_pass_setup():
    trainer = _model_parallel_trainer()
    ProgressivePruning(**worker.PRUNING).setup(trainer, worker.module("fsdp2"), "fit")
    ProgressivePruning(scope="global", **worker.PRUNING).setup(trainer, worker.module("fsdp2"), "fit")


# ------------------------------------------------------------------------------------------ 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(scenario: str, out: Path, **env_extra: str) -> None:
    """Start both ranks of ``fsdp2_worker SCENARIO OUT``; fail with their output if either fails or they run
    past :data:`RUN_TIMEOUT_S` (both are killed then)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "OMP_NUM_THREADS": "1",
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            **env_extra,
        }
        log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "tests.callbacks.fsdp2_worker", scenario, str(out)]
        procs.append(
            (subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), log)
        )
    codes = []
    try:
        for proc, _ in procs:
            codes.append(proc.wait(timeout=RUN_TIMEOUT_S))
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = "\n".join((out / f"rank{r}.log").read_text()[-3000:] for r in (0, 1))
    assert codes == [0, 0], f"{scenario}: exit codes {codes}\n{logs}"


def _single_process_pruning(scope: str, root: Path) -> tuple[ProgressivePruning, pl.LightningModule]:
    pl.seed_everything(0)
    pruning = ProgressivePruning(scope=scope, **worker.PRUNING)
    trainer = pl.Trainer(
        **worker.trainer_kwargs(str(root), accelerator="cpu", devices=1, callbacks=[pruning])
    )
    module = worker.module(None)
    trainer.fit(module, train_dataloaders=worker.loader(2 * worker.BATCH))
    assert trainer.global_step == 8
    return pruning, module


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_fsdp2_pruning_masks_equal_single_process(scope, tmp_path):
    _run_two_processes("prune", tmp_path, FSDP2_SCOPE=scope)
    ranks = [torch.load(tmp_path / f"prune_rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference, module = _single_process_pruning(scope, tmp_path / "single")
    assert reference.masks and all(not bool(m.all()) for m in reference.masks.values())
    for got in ranks:
        assert got["world_size"] == 2 and got["global_step"] == 8
        # the network was sharded: every parameter a DTensor, each rank holding part of it
        for name, p in module.model.named_parameters():
            assert got["shards"][name]["sharded"], name
            assert got["shards"][name]["local_numel"] < p.numel(), name
        assert set(got["masks"]) == set(reference.masks)
        for name, mask in reference.masks.items():
            assert torch.equal(got["masks"][name], mask), f"{scope}: mask of {name} differs from one process"
        for name, p in module.model.named_parameters():
            torch.testing.assert_close(got["weights"][name], p.detach(), atol=1e-5, rtol=0)
        assert [h["sparsity"] for h in got["history"]] == [h["sparsity"] for h in reference.history]
    # each rank zeroed its own shard: the pruned entries of both shards are the masks' pruned entries
    for name, mask in reference.masks.items():
        zeros = sum(got["shards"][name]["local_zeros"] for got in ranks)
        assert zeros == int((~mask).sum()), name


@pytest.mark.slow
def test_fsdp2_refusals_before_any_step_and_supported_callbacks_fit(tmp_path):
    _run_two_processes("callbacks", tmp_path)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"callbacks_rank{rank}.json").read_text())
        assert set(results["refused"]) == set(worker.refused_settings(tmp_path))
        for setting, got in results["refused"].items():
            message = got["message"]
            assert message is not None, f"{setting} was not refused"
            assert "ModelParallelStrategy (FSDP2)" in message and 'strategy="ddp"' in message, message
            assert got["global_step"] == 0, setting
        fit = results["supported"]
        supported = {n for n, c in _exported_callbacks().items() if c.sharded_parameters != "refused"}
        assert supported <= set(fit["names"]), sorted(supported - set(fit["names"]))
        assert fit["global_step"] == 8 and fit["sharded"]
        assert fit["warm_loaded"] and fit["first_step"]["warm_weights"]
        assert fit["first_step"]["lr"] < 0.1  # LRScheduling's warm-up ran on the sharded network's optimizer
        assert fit["pruning_state"] == "done"
        assert fit["non_finite_checks"] == 8
