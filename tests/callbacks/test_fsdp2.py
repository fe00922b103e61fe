"""Sharded training with FSDP2 (``ModelParallelStrategy`` + ``ClassificationModule(sharding="fsdp2")``).

Fast tests: every exported callback declares its support of sharded parameters, and each refused callback (or
setting) says so at ``setup`` naming the strategy and the alternative. Slow tests (2 processes on CPU, gloo,
started here with Lightning's environment variables; workers in ``tests/callbacks/fsdp2_worker.py``): unstructured
pruning under FSDP2 gives the masks of a single-process run with the same seed and data order; the refusals
happen at setup before any step in a real 2-process fit; the supported callbacks fit together. The slow tests
share one 2-process run (:func:`runs`: the worker's scenarios in turn), made once per test process.
"""

from __future__ import annotations

import inspect
import json
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
from tests.conftest import launched_runs
from tests.launch import scenarios_launch

#: the worker's scenarios the slow tests check, run in turn by one 2-process run
SCENARIOS = ("prune:layer", "prune:global", "callbacks", "gather", "tp")


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


def test_a_refusal_under_tensor_parallelism_names_it():
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    assert sharded_strategy(trainer) == "ModelParallelStrategy (tensor parallel)"
    with pytest.raises(ValueError, match=r"ModelParallelStrategy \(tensor parallel\)"):
        worker.QuantizationAwareTraining(start_epoch=0).setup(trainer, worker.module(None), "fit")


def test_supported_settings_of_partial_callbacks_pass_setup():
    trainer = _model_parallel_trainer()
    ProgressivePruning(**worker.PRUNING).setup(trainer, worker.module("fsdp2"), "fit")
    ProgressivePruning(scope="global", **worker.PRUNING).setup(trainer, worker.module("fsdp2"), "fit")
    # structured and channel-group masks and compaction work on gathered copies: the skeleton is kept at setup
    for granularity in ("structured", "channel_groups"):
        pruning = ProgressivePruning(granularity=granularity, compact_at_end=True, **worker.PRUNING)
        pruning.setup(trainer, worker.module("fsdp2"), "fit")
        assert pruning._skeleton is not None
        assert {p.device.type for p in pruning._skeleton.parameters()} == {"meta"}


def test_compaction_under_tensor_parallelism_is_refused_naming_it():
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    for granularity in ("structured", "channel_groups"):
        with pytest.raises(ValueError, match=r"ModelParallelStrategy \(tensor parallel\)") as err:
            ProgressivePruning(granularity=granularity, compact_at_end=True, **worker.PRUNING).setup(
                trainer, worker.module(None), "fit"
            )
        assert "`compact_at_end=False`" in str(err.value)
        # the masks alone work under tensor parallelism (tests/callbacks/test_tensor_parallel_structured.py)
        ProgressivePruning(granularity=granularity, **worker.PRUNING).setup(
            trainer, worker.module(None), "fit"
        )
    with pytest.raises(ValueError, match=r"ModelParallelStrategy \(tensor parallel\)"):
        ProgressivePruning(granularity="blocks", **worker.PRUNING).setup(trainer, worker.module(None), "fit")


# ------------------------------------------------------------------------------------------ 2 processes


runs = launched_runs(scenarios_launch("tests.callbacks.fsdp2_worker", SCENARIOS, name="fsdp2"))


def _single_process_pruning(
    scope: str, root: Path, hidden: int = 31
) -> tuple[ProgressivePruning, pl.LightningModule]:
    pl.seed_everything(0)
    pruning = ProgressivePruning(scope=scope, **worker.PRUNING)
    trainer = pl.Trainer(
        **worker.trainer_kwargs(str(root), accelerator="cpu", devices=1, callbacks=[pruning])
    )
    torch.manual_seed(0)
    module = worker.ClassificationModule(
        worker.network(hidden), num_classes=worker.CLASSES, optimizer="sgd", lr=0.1
    )
    trainer.fit(module, train_dataloaders=worker.loader(2 * worker.BATCH))
    assert trainer.global_step == 8
    return pruning, module


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_fsdp2_pruning_masks_equal_single_process(scope, runs, tmp_path):
    ranks = [torch.load(runs / f"prune_{scope}_rank{r}.pt", weights_only=True) for r in (0, 1)]
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
def test_fsdp2_refusals_before_any_step_and_supported_callbacks_fit(runs, tmp_path):
    qat = [json.loads((runs / f"callbacks_rank{r}.json").read_text())["qat"] for r in (0, 1)]
    assert qat[0]["int8_sum"] == qat[1]["int8_sum"]  # the same int8 model on both ranks
    for rank in (0, 1):
        results = json.loads((runs / f"callbacks_rank{rank}.json").read_text())
        assert set(results["refused"]) == set(worker.refused_settings(tmp_path))
        for setting, got in results["refused"].items():
            message = got["message"]
            assert message is not None, f"{setting} was not refused"
            assert "ModelParallelStrategy (FSDP2)" in message and 'strategy="ddp"' in message, message
            assert got["global_step"] == 0, setting
        fit = results["supported"]
        supported = {n for n, c in _exported_callbacks().items() if c.sharded_parameters != "refused"}
        fitted = set(fit["names"]) | set(results["qat"]["names"]) | set(results["weight_sharing"]["names"])
        assert supported <= fitted, sorted(supported - fitted)
        assert results["weight_sharing"]["clustered"] and results["weight_sharing"]["global_step"] == 8
        assert results["qat"]["converted"] and results["qat"]["global_step"] == 8
        assert fit["global_step"] == 8 and fit["sharded"]
        assert fit["warm_loaded"] and fit["first_step"]["warm_weights"]
        assert fit["first_step"]["lr"] < 0.1  # LRScheduling's warm-up ran on the sharded network's optimizer
        assert fit["pruning_state"] == "done"
        assert fit["non_finite_checks"] == 8


def _single_process_ptq(weights: dict[str, torch.Tensor], monkeypatch) -> dict[str, torch.Tensor]:
    """PTQ in one process on the gathered weights, calibrated on rank 0's validation batches (as the sharded
    run's rank 0, whose ranges every rank receives)."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    net = worker.module(None)
    net.model.load_state_dict(weights)
    ptq = worker.PostTrainingQuantization(**worker.PTQ)
    trainer = pl.Trainer(**worker.trainer_kwargs("unused", accelerator="cpu", devices=1, callbacks=[ptq]))
    trainer.validate(net, dataloaders=worker.loader(worker.BATCH, ranks=2), verbose=False)
    assert ptq.quantized_model is not None
    return {k: v for k, v in ptq.quantized_model.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.slow
def test_fsdp2_ptq_and_report_work_on_gathered_copies(runs, monkeypatch):
    """PTQ and the compression report under FSDP2: the same int8 model on both ranks, equal to one process's
    PTQ of the same weights and calibration batches; the report counts the full network, not a shard."""
    r0, r1 = (torch.load(runs / f"gather_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["sharded"] and r1["sharded"]
    assert r0["int8"] and set(r0["int8"]) == set(r1["int8"])
    for key, value in r0["int8"].items():
        assert torch.equal(value, r1["int8"][key]), f"int8 {key} differs between the ranks"
    for key, value in _single_process_ptq(r0["weights"], monkeypatch).items():
        assert torch.equal(value, r0["int8"][key]), f"int8 {key} differs from one process's PTQ"
    full = sum(w.numel() for w in r0["weights"].values())
    weights = [w for n, w in r0["weights"].items() if n.endswith("weight")]
    sparsity = sum(int(w.eq(0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert sparsity > 0.7  # the pruning ramp ran
    assert r0["rows"] == r1["rows"] and r0["history_sparsity"] == r1["history_sparsity"]
    stages = [row["stage"] for row in r0["rows"]]
    assert stages[0] == "fit start" and "fit end" in stages, stages
    end = r0["rows"][stages.index("fit end")]
    assert end["parameters"] == full, "the report measured a shard, not the gathered network"
    assert end["weight_sparsity"] == pytest.approx(sparsity)
    assert r0["history_sparsity"][-1] == pytest.approx(sparsity)  # counted on the shards, summed over ranks
    assert r0["report_files"] and r1["report_files"] is None


@pytest.mark.slow
def test_tensor_parallel_pruning_masks_equal_single_process(runs, tmp_path):
    """The tensor-parallel recipe (Megatron-style column/row-parallel Linears, ModelParallelStrategy with
    tensor_parallel_size=2): unstructured pruning gathers each split weight, ranks it whole and keeps each rank's
    part of the mask, so the masks and weights are those of one process on the same batches."""
    ranks = [torch.load(runs / f"tp_rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference, module = _single_process_pruning("layer", tmp_path / "single", hidden=32)
    for got in ranks:
        assert got["global_step"] == 8
        assert got["placements"]["0.weight"] == ["S(0)"]  # column-wise
        assert got["placements"]["2.weight"] == ["S(1)"]  # row-wise
        assert got["placements"]["4.weight"] is None  # whole on every rank
        assert set(got["masks"]) == set(reference.masks)
        for name, mask in reference.masks.items():
            assert torch.equal(got["masks"][name], mask), f"mask of {name} differs from one process"
        for name, p in module.model.named_parameters():
            torch.testing.assert_close(got["weights"][name], p.detach(), atol=1e-5, rtol=0)
