"""Structured and channel-group pruning with compaction under FSDP2 (``ModelParallelStrategy`` +
``ClassificationModule(sharding="fsdp2")``, 2 CPU processes): the masks, the compacted network and its outputs equal a
single-process run's with the same seed and data order (2 ranks at batch B against one process at batch 2B), the
compacted network is sharded again, and a compaction mid-fit trains on sharded. One 2-process run of the worker's
scenarios (``tests/callbacks/fsdp2_structured_worker.py``) per test session."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.callbacks import fsdp2_structured_worker as worker
from tests.callbacks import fsdp2_worker as base
from tests.conftest import launched_runs
from tests.launch import scenarios_launch

runs = launched_runs(
    scenarios_launch("tests.callbacks.fsdp2_structured_worker", list(worker.SETTINGS), name="structured")
)


def _single_process(scenario: str, root: Path) -> dict:
    pl.seed_everything(0)
    pruning, callbacks, module, train = worker.make(scenario, ranks=1)
    trainer = pl.Trainer(**base.trainer_kwargs(str(root), accelerator="cpu", devices=1, callbacks=callbacks))
    trainer.fit(module, train_dataloaders=train)
    got = worker.summary(pruning, module, scenario)
    got["global_step"] = trainer.global_step
    got["compacted_now"] = getattr(callbacks[-1], "compacted_now", None)
    return got


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(worker.SETTINGS))
def test_fsdp2_structured_pruning_and_compaction_equal_single_process(scenario, runs, tmp_path):
    ranks = [torch.load(runs / f"{scenario}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference = _single_process(scenario, tmp_path / "single")
    requested, removed, _ = reference["counts"]
    assert reference["compacted"] and removed > 0 and requested > 0, reference["counts"]
    if scenario == "groups_midfit":
        assert reference["compacted_now"] is True
    for got in ranks:
        assert got["global_step"] == reference["global_step"] == 8
        assert got["compacted"] and got["compacted_now"] == reference["compacted_now"]
        # the compacted network is sharded again (the rest of the fit and its checkpoints stay sharded)
        assert got["sharded"], f"{scenario}: the compacted network is not sharded"
        assert got["counts"] == reference["counts"]
        assert got["history"] == reference["history"]
        assert set(got["masks"]) == set(reference["masks"])
        for name, mask in reference["masks"].items():
            assert torch.equal(got["masks"][name], mask), (
                f"{scenario}: mask of {name} differs from one process"
            )
        # the compacted network: the same (smaller) shapes and weights as one process's
        assert {n: w.shape for n, w in got["weights"].items()} == {
            n: w.shape for n, w in reference["weights"].items()
        }
        for name, w in reference["weights"].items():
            torch.testing.assert_close(got["weights"][name], w, atol=1e-5, rtol=0, msg=f"{scenario}: {name}")
        torch.testing.assert_close(got["output"], reference["output"], atol=1e-5, rtol=0)
    for name in ranks[0]["weights"]:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
