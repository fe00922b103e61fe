"""Shard-wise unstructured masks of row-sharded weights (FSDP2): equal to a single process's, held in parts.

``compute_masks(..., shard_masks=True)`` on weights split by rows over 2 processes (gloo, workers in
``tests/functional/pruning/sharded_masks_worker.py``) must give, once gathered, exactly the masks of
``compute_masks`` on the whole tensors: the same count pruned and the same entries (ties by position across chunk
edges, ranks and, with global scope, tensors; NaN, inf, -0.0; bfloat16; an empty shard), while each rank holds only
its part of each mask (a ``DTensor``, whose storage is the part's size). ProgressivePruning under FSDP2 keeps its
masks that way, and its ``state_dict`` holds them whole, equal to a single-process run's. Both slow tests share
one 2-process run of both scenarios (:func:`runs`), made once per test process.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.pruning.masks import (
    can_shard_masks,
    compute_masks,
    gather_mask,
    mask_counts,
    sharded_magnitude_masks,
)
from tests.conftest import once, run_once_per_session
from tests.functional.pruning import sharded_masks_worker as worker
from tests.launch import scenarios_launch

#: the worker's scenarios the slow tests check, run in turn by one 2-process run
SCENARIOS = ("functional", "callback")


_launch = scenarios_launch("tests.functional.pruning.sharded_masks_worker", SCENARIOS, name="sharded_masks")


def _results(tmp_path_factory) -> dict[str, list[dict]] | str:
    """Each scenario's results (rank 0, rank 1), or why the run failed (the ranks' statuses and logs)."""
    got = run_once_per_session(__name__, tmp_path_factory, _launch)
    if isinstance(got, str):
        return got
    return {s: [torch.load(got / f"{s}_rank{r}.pt", weights_only=True) for r in (0, 1)] for s in SCENARIOS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """The 2-process run's results, made once per test session; a failed run fails every test that needs it
    with the ranks' logs (and is not started again)."""
    got = once(f"{__name__}:runs", lambda: _results(tmp_path_factory))
    if isinstance(got, str):
        pytest.fail(got, pytrace=False)
    return got


# ------------------------------------------------------------------------------------------ one process
def test_plain_weights_are_not_sharded_and_their_masks_stay_whole():
    w = {"a": torch.randn(4, 3), "b": torch.randn(2, 3)}
    assert not can_shard_masks(w.values()) and not can_shard_masks([])
    plain = compute_masks(w, 0.5, scope="global")
    assert all(
        torch.equal(m, plain[n]) for n, m in compute_masks(w, 0.5, scope="global", shard_masks=True).items()
    )
    assert mask_counts(list(plain.values())) == [int(m.sum()) for m in plain.values()]
    assert gather_mask(plain["a"]) is not None and torch.equal(gather_mask(plain["a"]), plain["a"])


def test_shard_wise_masks_refuse_tensors_not_split_by_rows():
    with pytest.raises(ValueError, match="split by rows"):
        sharded_magnitude_masks([([torch.randn(4, 3)], 2)])


# ------------------------------------------------------------------------------------------ 2 processes
@pytest.mark.slow
def test_shard_wise_masks_equal_whole_tensor_masks_and_each_rank_holds_its_part(runs):
    ranks = runs["functional"]
    for case, weights in worker.cases().items():
        for i, (sparsity, scope, overrides) in enumerate(worker.SETTINGS):
            reference = compute_masks(weights, sparsity, scope=scope, layer_sparsity=overrides)
            for rank, got in enumerate(ranks):
                row = got[f"{case}/{i}"]
                where = f"{case}, sparsity {sparsity}, {scope}, {overrides}, rank {rank}"
                assert set(row["gathered"]) == set(reference), where
                for name, mask in reference.items():
                    assert torch.equal(row["gathered"][name], mask), f"{where}: mask of {name}"
                assert row["counts"] == [int(m.sum()) for m in reference.values()], where
                assert all(row["sharded"].values()) and all(row["fast_sharded"].values()), where
                for name, w in weights.items():
                    # torch.chunk's blocks of rows, as FSDP2 splits them (1 row: rank 1 holds none)
                    mine = ([c.numel() for c in torch.arange(w.shape[0]).chunk(2)] + [0])[rank]
                    assert row["local"][name] == (mine, w.shape[1]), f"{where}: the part of {name}"
                    assert row["local_bytes"][name] == mine * w.shape[1], (
                        f"{where}: {name} holds more than its part"
                    )
    for got in ranks:
        assert not any(sharded for sharded, _ in got["mixed"].values())  # gathered: whole masks
        random = worker.cases()["random"]
        whole = compute_masks({"a": random["a"], "p": random["b"]}, 0.5, scope="global")
        for name, (_, mask) in got["mixed"].items():
            assert torch.equal(mask, whole[name]), name


def _single_process(scope: str, root: Path) -> ProgressivePruning:
    from tests.callbacks import fsdp2_worker as fw

    pl.seed_everything(0)
    pruning = ProgressivePruning(scope=scope, **fw.PRUNING)
    trainer = pl.Trainer(**fw.trainer_kwargs(str(root), accelerator="cpu", devices=1, callbacks=[pruning]))
    trainer.fit(fw.module(None), train_dataloaders=fw.loader(2 * fw.BATCH))
    return pruning


@pytest.mark.slow
def test_progressive_pruning_under_fsdp2_holds_mask_parts_and_saves_whole_masks(runs, tmp_path):
    ranks = runs["callback"]
    for scope in ("layer", "global"):
        reference = _single_process(scope, tmp_path / f"single_{scope}")
        assert reference.masks and all(not bool(m.all()) for m in reference.masks.values())
        for rank, got in enumerate(ranks):
            row = got[scope]
            assert set(row["gathered"]) == set(reference.masks)
            for name, mask in reference.masks.items():
                assert row["sharded"][name], f"{scope}, rank {rank}: the mask of {name} is whole"
                assert row["local_numel"][name] < row["numel"][name] == mask.numel(), name
                assert row["local_bytes"][name] == row["local_numel"][name], (
                    f"{name}: more than its part is held"
                )
                assert torch.equal(row["gathered"][name], mask), f"{scope}, rank {rank}: mask of {name}"
                assert torch.equal(row["state_masks"][name], mask), (
                    f"{scope}, rank {rank}: saved mask of {name}"
                )
            assert row["sparsities"] == reference.layer_sparsities(), f"{scope}, rank {rank}"
            assert [h["sparsity"] for h in row["history"]] == [h["sparsity"] for h in reference.history]
