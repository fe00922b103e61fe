"""WeightSharing under FSDP2 (``ModelParallelStrategy`` + ``ClassificationModule(sharding="fsdp2")``).

Fast tests: what is refused at setup under a sharding strategy (the budget plan, the size-accuracy curve, tensor
parallelism), naming the setting, the strategy and the alternative, and what passes. Slow tests (2 processes on
CPU, gloo; worker ``tests/callbacks/fsdp2_ws_worker.py``, one run of its scenarios made once per test session):
a 2-rank fit with per-rank batch B gives the codebooks, whole indices, weights and artifact of one process at
batch 2B with the same seed and data order (weights and codebooks within :data:`ATOL`, indices exactly), both
ranks identical, and a run resumed from a sharded checkpoint taken mid-sharing ends exactly as the uninterrupted
one.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import WeightSharing
from lightning_optim.callbacks.weight_sharing import _unpack_layer
from lightning_optim.functional.weight_sharing import (
    SharedWeight,
    load_shared_state_dict,
    read_shared_header,
    size_breakdown,
)
from tests.callbacks import fsdp2_ws_worker as worker
from tests.conftest import launched_runs
from tests.launch import scenarios_launch

#: the worker's scenarios, run in turn by one 2-process run
SCENARIOS = ("mlp", "conv")
#: float tolerance of the sharded run against one process: the gradients are averaged over the ranks by FSDP2's
#: reduce-scatter and the per-cluster sums are summed in another order (float64, then float32), so the codebooks
#: may differ in the last bits of float32 (seen: 3e-8 after 8 Adam steps)
ATOL = 1e-6


def _trainer(tensor_parallel: bool = False) -> pl.Trainer:
    """A Trainer under ModelParallelStrategy on 2 CPU processes, not started (no process group)."""
    sizes = (
        {"data_parallel_size": 1, "tensor_parallel_size": 2}
        if tensor_parallel
        else {"data_parallel_size": 2, "tensor_parallel_size": 1}
    )
    strategy = ModelParallelStrategy(**sizes, timeout=timedelta(seconds=30))
    return pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False, max_epochs=3
    )


def _module() -> ClassificationModule:
    return worker.module(worker.mlp, "fsdp2")


# ------------------------------------------------------------------------------------------ setup
def test_declares_partial_support():
    assert WeightSharing.sharded_parameters == "partial"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"size_budget_bytes": 100_000}, "WeightSharing(size_budget_bytes)"),
        ({"average_bits": 3.0}, "WeightSharing(average_bits)"),
        ({"curve_budgets": [1_000, 2_000]}, "WeightSharing(curve_budgets)"),
    ],
)
def test_whole_network_settings_refused_at_setup(kwargs, setting):
    with pytest.raises(ValueError) as err:
        WeightSharing(**kwargs).setup(_trainer(), _module(), "fit")
    message = str(err.value)
    assert message.startswith(setting), message
    assert "ModelParallelStrategy (FSDP2)" in message and 'strategy="ddp"' in message, message


def test_tensor_parallel_refused_naming_it():
    with pytest.raises(
        ValueError, match=r"ModelParallelStrategy \(tensor parallel\).*strategy=\"ddp\""
    ) as err:
        WeightSharing().setup(_trainer(tensor_parallel=True), worker.module(worker.mlp, None), "fit")
    assert "FSDP2" in str(err.value)  # the supported alternative is named too


@pytest.mark.parametrize("kwargs", [{}, {"bits": {"0": 4, "*": 3}, "train_centroids": False}])
def test_supported_settings_pass_setup(kwargs):
    callback = WeightSharing(verbose=False, **kwargs)
    callback.setup(_trainer(), _module(), "fit")
    assert set(callback.layer_bits) == {"0.weight", "2.weight", "4.weight"}


# ------------------------------------------------------------------------------------------ 2 processes
runs = launched_runs(scenarios_launch("tests.callbacks.fsdp2_ws_worker", SCENARIOS, name="fsdp2_ws"))


def _single_process(tag: str, root: Path) -> tuple[ClassificationModule, WeightSharing]:
    """The reference: one process, twice the per-rank batch, the same seed and data order."""
    build, shape = worker.NETWORKS[tag]
    pl.seed_everything(0)
    callback = worker.sharing(root, tag)
    trainer = pl.Trainer(
        **worker.trainer_kwargs(str(root), accelerator="cpu", devices=1, callbacks=[callback])
    )
    module = worker.module(build, None)
    trainer.fit(module, train_dataloaders=worker.loader(shape, 2 * worker.BATCH))
    assert trainer.global_step == 12
    return module, callback


def _layers(state: dict) -> dict[str, SharedWeight]:
    return {n: _unpack_layer(layer) for n, layer in state["layers"].items()}


def _assert_artifacts_match(a: Path, b: Path, atol: float) -> None:
    """The same entries, encodings, codebook sizes, index and position streams; values within ``atol``."""
    ha, hb = read_shared_header(a), read_shared_header(b)
    assert (
        ha["metadata"] == hb["metadata"] and ha["metadata"]["network"] == "Sequential"
    )  # not FSDPSequential
    assert ha["entries"] == hb["entries"]
    sa, sb = size_breakdown(a.read_bytes()), size_breakdown(b.read_bytes())
    fields = ("name", "kind", "shape", "nonzero", "k", "codebook", "indices", "positions")
    assert [[getattr(e, f) for f in fields] for e in sa.entries] == [
        [getattr(e, f) for f in fields] for e in sb.entries
    ]
    da, db = load_shared_state_dict(a), load_shared_state_dict(b)
    assert list(da) == list(db)
    for key in da:
        torch.testing.assert_close(da[key], db[key], atol=atol, rtol=0, msg=f"artifact entry {key}")


@pytest.mark.slow
@pytest.mark.parametrize("tag", SCENARIOS)
def test_fsdp2_sharing_equals_single_process(tag, runs, tmp_path):
    ranks = [torch.load(runs / f"{tag}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    module, reference = _single_process(tag, tmp_path)
    params = dict(module.model.named_parameters())
    expected = _layers(reference.state_dict())
    assert set(expected) == set(reference.layer_bits) and len(expected) == 3
    for got in ranks:
        full = got["full"]
        assert got["world_size"] == 2 and full["global_step"] == 12 and full["sharded"]
        # each rank held only its rows of every index
        for name, rows in full["local_rows"].items():
            assert rows < params[name].shape[0], name
        layers = _layers(full["state"])
        assert set(layers) == set(expected)
        for name, shared in expected.items():
            assert torch.equal(layers[name].index, shared.index), f"{tag}: whole index of {name} differs"
            torch.testing.assert_close(layers[name].codebook, shared.codebook, atol=ATOL, rtol=0)
            torch.testing.assert_close(full["codebooks"][name], shared.codebook, atol=ATOL, rtol=0)
            # every weight is its centroid: the sharded weights are shared as one process shares them
            assert torch.equal(full["weights"][name], layers[name].values()), name
        for name, p in params.items():
            torch.testing.assert_close(full["weights"][name], p.detach(), atol=ATOL, rtol=0, msg=name)
        assert full["artifact_bytes"] == reference.size_breakdown.total
        assert full["dense_bytes"] == reference.dense_bytes
    # the ranks' parts of every index cover its rows once
    for name, shared in expected.items():
        assert sum(got["full"]["local_rows"][name] for got in ranks) == shared.index.shape[0], name
    # both ranks identical
    a, b = ranks[0]["full"], ranks[1]["full"]
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    for name in expected:
        assert torch.equal(a["codebooks"][name], b["codebooks"][name]), name
        for key in ("codebook", "mask", "index"):
            assert torch.equal(a["state"]["layers"][name][key], b["state"]["layers"][name][key]), (name, key)
    # the artifact (written by rank 0) holds what one process's holds
    path = Path(a["exported_path"])
    assert a["exported_path"] == b["exported_path"] and path.is_file()
    assert path.stat().st_size == a["artifact_bytes"]
    _assert_artifacts_match(path, reference.exported_path, ATOL)
    stored = load_shared_state_dict(path)
    for name, weight in a["weights"].items():
        assert torch.equal(stored[name], weight), f"the network does not hold what the file holds: {name}"


@pytest.mark.slow
def test_fsdp2_resume_mid_sharing_from_a_sharded_checkpoint(runs):
    for rank in (0, 1):
        got = torch.load(runs / f"mlp_rank{rank}.pt", weights_only=True)
        full, resumed = got["full"], got["resumed"]
        assert got["resumed_from_directory"], "the checkpoint was not a sharded directory"
        assert resumed["global_step"] == full["global_step"] == 12 and resumed["sharded"]
        assert set(resumed["weights"]) == set(full["weights"])
        for name, weight in full["weights"].items():
            assert torch.equal(resumed["weights"][name], weight), f"rank {rank}: {name} after resuming"
        layers, again = _layers(full["state"]), _layers(resumed["state"])
        assert set(layers) == set(again) and layers
        for name, shared in layers.items():
            assert torch.equal(again[name].codebook, shared.codebook), name
            assert torch.equal(again[name].index, shared.index), name
        assert resumed["local_rows"] == full["local_rows"]
    a = Path(got["full"]["exported_path"]).read_bytes()
    b = Path(got["resumed"]["exported_path"]).read_bytes()
    assert a == b, "the resumed run's artifact differs from the uninterrupted run's"
