"""Sharded (distributed) checkpoints under FSDP2: exact resume mid-ramp, and consolidation to one file.

Two 2-process fits on CPU (gloo), one after the other in one 2-process run (:func:`tests.launch.run_ranks`;
worker ``tests/callbacks/fsdp2_ckpt_worker.py``): an uninterrupted one that writes sharded checkpoints (folders)
at steps 5 and 10 and one after the fit, then a fresh one resuming from the step-5 folder (mid-epoch, mid pruning
ramp, inside the LR schedule; each rank draws its own dropout masks, so each must get its own random states
back).

The resumed run must end exactly where the uninterrupted one ended: masks, full weights, the optimizer state,
pruning history, learning rates, global step and the logits of a batch, all compared with ``torch.equal`` (same
ranks, same data, deterministic CPU kernels and gloo reductions in the same order: nothing may differ, so any
tolerance would hide a state that was not restored).

The final folder is then consolidated (``lightning_optim.checkpoints.consolidate_checkpoint``, no process group)
and the single file must hold the gathered weights and optimizer state exactly, load with ``weights_only=True``,
give a single-device ``ClassificationModule`` the sharded network's logits (to 1e-6: another process, whose
kernels may split the sums otherwise), and resume a single-device fit with the weights and the optimizer's
moments.

On another number of ranks: the 2-rank step-5 folder resumed under FSDP2 on *one* rank (its own launch) continues
as a single-device fit resumed from the same checkpoint consolidated to one file does (weights to 1e-5, the same
masks, pruning history and learning rates).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim import ClassificationModule
from lightning_optim.checkpoints import consolidate_checkpoint, is_sharded_checkpoint
from lightning_optim.weights import load_weights
from tests.callbacks import fsdp2_ckpt_worker as worker
from tests.callbacks.fsdp2_worker import BATCH, loader, trainer_kwargs
from tests.conftest import once, run_once_per_session
from tests.launch import scenarios_launch

pytestmark = pytest.mark.slow

#: the worker's scenarios, in turn in one 2-process run: the uninterrupted fit, then the resumed one
SCENARIOS = ("straight", "resume")
#: tries of a run whose rank 0 could not listen on the port picked (another process took it in between)
PORT_TRIES = 3


def _port_was_taken(message: str) -> bool:
    return "address already in use" in message.lower() or "EADDRINUSE" in message


def _launch(out: Path) -> None:
    """Both ranks of ``fsdp2_ckpt_worker OUT straight resume``, again on another port (each launch draws
    one) if rank 0 could not listen on the first (their logs: ``out/ckpt_rank<r>.log``)."""
    launch = scenarios_launch("tests.callbacks.fsdp2_ckpt_worker", SCENARIOS, name="ckpt")
    one_rank = scenarios_launch("tests.callbacks.fsdp2_ckpt_worker", ["one_rank"], name="one_rank", nprocs=1)
    for attempt in range(PORT_TRIES):
        try:
            launch(out)
            one_rank(out)  # the 2-rank checkpoint resumed on 1 rank
        except AssertionError as err:
            if attempt == PORT_TRIES - 1 or not _port_was_taken(str(err)):
                raise
        else:
            return


class Runs:
    """The uninterrupted run, the resumed run (rank 0 and 1 results each) and the folder they wrote; ``failure``:
    why the 2-process run failed (and no results), or None."""

    def __init__(self, got: Path | str) -> None:
        self.failure = got if isinstance(got, str) else None
        if self.failure is None:
            self.out = out = Path(got)
            self.straight = [torch.load(out / f"straight_rank{r}.pt", weights_only=True) for r in (0, 1)]
            self.resumed = [torch.load(out / f"resume_rank{r}.pt", weights_only=True) for r in (0, 1)]
            self.one_rank = torch.load(out / "one_rank.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """The 2-process run, made once per test session; a failed run fails every test that needs it with the
    ranks' logs (and is not started again)."""
    got = once(f"{__name__}:runs", lambda: Runs(run_once_per_session(__name__, tmp_path_factory, _launch)))
    if got.failure is not None:
        pytest.fail(got.failure, pytrace=False)
    return got


@pytest.fixture(scope="module")
def consolidated(runs, tmp_path_factory) -> Path:
    return once(
        f"{__name__}:consolidated",
        lambda: consolidate_checkpoint(
            runs.out / "straight_final.ckpt", tmp_path_factory.mktemp("consolidated") / "consolidated.ckpt"
        ),  # in this process's own folder: the run's folder is shared by the pytest-xdist workers
    )


def _assert_equal(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# ------------------------------------------------------------------------------------------ resume
def test_the_mid_checkpoint_is_sharded_mid_epoch_and_mid_ramp(runs):
    mid = worker.mid_checkpoint(runs.out)
    assert is_sharded_checkpoint(mid) and sorted(p.name for p in mid.glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    meta = torch.load(mid / "meta.pt", weights_only=True)
    assert meta["global_step"] == worker.SAVE_EVERY
    progress = meta["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert 0 < progress["processed"] < 4  # mid-epoch (4 steps an epoch)
    (pruning,) = [v for k, v in meta["callbacks"].items() if k.startswith("ProgressivePruning")]
    assert 0 < pruning["current_sparsity"] < worker.PRUNING["final_sparsity"]  # mid-ramp
    assert len(meta["callbacks"]["ExactResume"]["ranks"]) == 2  # each rank's random states


def test_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(runs):
    for rank in (0, 1):
        straight, resumed = runs.straight[rank], runs.resumed[rank]
        assert straight["sharded"] and resumed["sharded"]
        # the resume happened: ExactResume set the random states back and skipped the batch done before
        assert resumed["restored"] and resumed["skipped_batches"] == 1 and straight["restored"] == []
        assert resumed["global_step"] == straight["global_step"] == worker.STEPS
        assert resumed["epoch"] == straight["epoch"]
        assert resumed["lrs"] == straight["lrs"]
        assert resumed["history"] == straight["history"]
        assert len(straight["history"]) == 6  # events at steps 0, 2, ..., 10: three of them after the resume
        assert straight["masks"] and all(not bool(m.all()) for m in straight["masks"].values())
        _assert_equal(resumed["masks"], straight["masks"], f"rank {rank} masks")
        _assert_equal(resumed["weights"], straight["weights"], f"rank {rank} weights")
        _assert_equal(resumed["logits"], straight["logits"], f"rank {rank} logits")
    _assert_equal(runs.resumed[0]["optimizer"], runs.straight[0]["optimizer"], "optimizer state")
    # both ranks agree (the full tensors are gathered on each)
    _assert_equal(runs.straight[0]["weights"], runs.straight[1]["weights"], "ranks")
    # the resumed run saved its step-10 checkpoint only (it started after step 5)
    assert sorted(p.name for p in (runs.out / "resume_ckpts").iterdir()) == ["epoch=2-step=10.ckpt"]


# ------------------------------------------------------------------------------------------ consolidate
def test_consolidated_checkpoint_holds_the_gathered_weights_and_optimizer_state(runs, consolidated):
    got = torch.load(consolidated, weights_only=True)
    straight = runs.straight[0]
    _assert_equal(got["state_dict"], straight["weights"], "state_dict")
    assert got["global_step"] == worker.STEPS and got["hyper_parameters"]["sharding"] is None
    # the optimizer state, renumbered as a single-device optimizer numbers its parameters
    names = [n for g in straight["optimizer"]["param_groups"] for n in g["params"]]
    (optimizer,) = got["optimizer_states"]
    assert [g["params"] for g in optimizer["param_groups"]] == [[0, 1, 2], [3, 4, 5]]
    for i, name in enumerate(names):
        _assert_equal(optimizer["state"][i], straight["optimizer"]["state"][name], name)
    (pruning,) = [v for k, v in got["callbacks"].items() if k.startswith("ProgressivePruning")]
    assert pruning["current_sparsity"] == pytest.approx(worker.PRUNING["final_sparsity"], abs=0.01)


def test_single_device_module_from_the_consolidated_checkpoint_gives_the_sharded_logits(runs, consolidated):
    module = ClassificationModule.load_from_checkpoint(consolidated, model=worker.dropout_network()).eval()
    with torch.no_grad():
        logits = module(worker.probe_batch())
    torch.testing.assert_close(logits, runs.straight[0]["logits"], atol=1e-6, rtol=0)
    net = load_weights(worker.dropout_network(), consolidated, "checkpoint")
    assert torch.equal(net[5].weight, runs.straight[0]["weights"]["model.5.weight"])


def test_single_device_fit_resumes_from_the_consolidated_checkpoint(runs, consolidated, tmp_path):
    class Seen(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.step = trainer.global_step
            self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())

    seen = Seen()
    callbacks = [*worker.callbacks(tmp_path / "ckpts"), seen]
    trainer = pl.Trainer(
        **trainer_kwargs(
            str(tmp_path),
            accelerator="cpu",
            devices=1,
            callbacks=callbacks,
            enable_checkpointing=True,
            max_epochs=None,
            max_steps=worker.STEPS + 2,
        )
    )
    module = worker.module(None)
    trainer.fit(module, train_dataloaders=loader(2 * BATCH), ckpt_path=consolidated)
    assert seen.step == worker.STEPS and trainer.global_step == worker.STEPS + 2
    _assert_equal(seen.weights, runs.straight[0]["weights"], "weights at the resume")
    names = [n for g in runs.straight[0]["optimizer"]["param_groups"] for n in g["params"]]
    for i, name in enumerate(names):
        _assert_equal(seen.optimizer["state"][i], runs.straight[0]["optimizer"]["state"][name], name)
    pruning = callbacks[2]
    _assert_equal(pruning.history, runs.straight[0]["history"], "pruning history")
    _assert_equal({n: m.cpu() for n, m in pruning.masks.items()}, runs.straight[0]["masks"], "masks")


# ------------------------------------------------------------------------------------------ another rank count
def test_a_two_rank_checkpoint_resumes_under_fsdp2_on_one_rank(runs, tmp_path):
    """The step-5 folder written by 2 ranks, resumed under FSDP2 on 1 rank (DCP reshards the weights and the
    optimizer state; the masks are split for one rank), ends as a single-device fit resumed from the same checkpoint
    consolidated to one file: the same ramp, masks and learning rates, weights within float tolerance."""
    got = runs.one_rank
    assert got["sharded"] and got["global_step"] == worker.STEPS
    mid = consolidate_checkpoint(worker.mid_checkpoint(runs.out), tmp_path / "mid.ckpt")
    pl.seed_everything(100)
    callbacks = worker.callbacks(tmp_path / "ckpts")
    trainer = pl.Trainer(
        **trainer_kwargs(
            str(tmp_path),
            accelerator="cpu",
            devices=1,
            callbacks=callbacks,
            enable_checkpointing=True,
            max_epochs=None,
            max_steps=worker.STEPS,
        )
    )
    module = worker.module(None)
    with pytest.warns(UserWarning, match="random states of 2 rank"):
        trainer.fit(module, train_dataloaders=loader(2 * BATCH), ckpt_path=mid)
    pruning = callbacks[2]
    assert got["history"] == pruning.history and len(got["history"]) == 6
    _assert_equal(got["masks"], {n: m.cpu() for n, m in pruning.masks.items()}, "masks")
    assert got["lrs"] == pytest.approx([g["lr"] for g in trainer.optimizers[0].param_groups], abs=0)
    for name, p in module.named_parameters():
        torch.testing.assert_close(got["weights"][name], p.detach(), atol=1e-5, rtol=0, msg=name)
