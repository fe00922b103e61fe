"""Neuron, channel-group and head pruning under tensor parallelism (``ModelParallelStrategy(tensor_parallel_size=2)``
with a Megatron-style ``configure_model``: q/k/v and the first feed-forward Linear column-wise, the output
projection and the second feed-forward Linear row-wise): the masks, computed on whole weights (a gathered copy for
the trace and the group scores) and split as each weight is, equal a single-process run's on the same batches, and
the weights end within float tolerance of it. One 2-process run (``tests/callbacks/tp_structured_worker.py``)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tests.callbacks import fsdp2_worker as base
from tests.callbacks import tp_structured_worker as worker
from tests.conftest import launched_runs
from tests.launch import scenarios_launch

runs = launched_runs(
    scenarios_launch("tests.callbacks.tp_structured_worker", list(worker.SETTINGS), name="tp_structured")
)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(worker.SETTINGS))
def test_tensor_parallel_structured_masks_equal_single_process(scenario, runs, tmp_path):
    ranks = [torch.load(runs / f"{scenario}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    pl.seed_everything(0)
    pruning, module, train = worker.make(scenario, tensor_parallel=False)
    trainer = pl.Trainer(
        **base.trainer_kwargs(str(tmp_path), accelerator="cpu", devices=1, callbacks=[pruning])
    )
    trainer.fit(module, train_dataloaders=train)
    masks = {n: m.cpu() for n, m in pruning.masks.items()}
    assert masks and any(not bool(m.all()) for m in masks.values()), scenario
    for got in ranks:
        assert got["global_step"] == trainer.global_step == 8
        # the projections were split: q column-wise (rows), o row-wise (columns)
        assert got["placements"]["q.weight"] == ["S(0)"] and got["placements"]["o.weight"] == ["S(1)"]
        assert got["history"] == [h["sparsity"] for h in pruning.history]
        assert set(got["masks"]) == set(masks)
        for name, mask in masks.items():
            assert torch.equal(got["masks"][name], mask), (
                f"{scenario}: mask of {name} differs from one process"
            )
        for name, p in module.model.named_parameters():
            torch.testing.assert_close(got["weights"][name], p.detach(), atol=1e-5, rtol=0, msg=name)
    if scenario == "heads":  # whole heads: q's rows of a pruned head are zero in the trained weights
        q_mask = ranks[0]["masks"].get("q.weight")
        assert q_mask is not None and not q_mask.all()
        assert not ranks[0]["weights"]["q.weight"][~q_mask.expand_as(ranks[0]["weights"]["q.weight"])].any()
