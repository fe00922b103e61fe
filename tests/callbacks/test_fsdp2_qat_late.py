"""QuantizationAwareTraining that starts after the first epoch under FSDP2 (``ModelParallelStrategy`` +
``ClassificationModule(sharding="fsdp2")``).

The network is prepared at setup (before ``configure_model`` shards it) and held float until the start: fake
quantization and observers off, so the float epochs compute what the float network computes; at the start they are
switched on, with the freezing schedule of an unsharded run relative to the start. Fast tests: setup in one
process (the prepared network held float, on a conv-bn network, both stacks; the refusals). Slow tests (2 processes
on CPU, gloo; worker ``tests/callbacks/fsdp2_qat_worker.py``, its scenarios run once per test session by
:func:`runs`): the float epoch 0, QAT from epoch 1, the int8 model identical on both ranks, a resume from the
epoch-0 sharded checkpoint equal to the uninterrupted run, and ``start_after="pruning"`` after unstructured
pruning (resumed mid-QAT).
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import ProgressivePruning, QuantizationAwareTraining
from tests.callbacks import fsdp2_qat_worker as worker
from tests.conftest import launched_runs
from tests.launch import scenarios_launch

#: the worker's scenarios, run in turn by one 2-process run
SCENARIOS = ("late", "float", "after_pruning")
#: a network prepared for QAT with fake quantization off against the float network with the same weights: the
#: fused conv-bn computes conv(x, w * s) / s then batch norm (s = gamma / sqrt(running_var + eps)), equal up to
#: float32 rounding (measured: ~1e-8 in eval mode, ~4e-7 in train mode, on outputs of size ~1)
FLOAT_ATOL = {"eval": 1e-6, "train": 1e-5}
#: the weights after the float epoch 0 against a float run's (4 SGD steps on those outputs; measured ~3e-8)
EPOCH0_ATOL = 1e-5


def _model_parallel_trainer(tensor_parallel: bool = False, callbacks: list | None = None) -> pl.Trainer:
    """A Trainer under ModelParallelStrategy on 2 CPU processes, not started (no process group)."""
    sizes = (1, 2) if tensor_parallel else (2, 1)
    strategy = ModelParallelStrategy(
        data_parallel_size=sizes[0], tensor_parallel_size=sizes[1], timeout=timedelta(seconds=30)
    )
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        max_epochs=2,
        callbacks=callbacks,
    )


def _module(example: bool = True) -> ClassificationModule:
    torch.manual_seed(0)
    net = ClassificationModule(worker.network(), num_classes=worker.CLASSES, sharding="fsdp2")
    if example:
        net.example_input_array = torch.zeros(2, 1, worker.SIDE, worker.SIDE)
    return net


# ------------------------------------------------------------------------------------------ one process
@pytest.mark.parametrize("backend", ["pt2e", "eager"])
def test_late_start_is_prepared_at_setup_and_held_float(backend):
    """Under FSDP2, ``start_epoch=1``: setup prepares the conv-bn network (before it would be sharded) with fake
    quantization and observers off; the phase is pending; it computes what the float network computes."""
    module = _module()
    float_net = copy.deepcopy(module.model)
    qat = QuantizationAwareTraining(start_epoch=1, backend=backend, **worker.QUIET)
    qat.setup(_model_parallel_trainer(), module, "fit")
    net = module.model
    assert qat.backend.is_prepared(net)
    assert not qat.prepared and qat.started_epoch is None
    assert qat.phase_state(None) == "pending"
    switches = worker.flags(net)
    assert switches["fake_quant_enabled"] and switches["observer_enabled"]
    assert not any(switches["fake_quant_enabled"]) and not any(switches["observer_enabled"])
    x = worker.probe_input()
    for mode, atol in FLOAT_ATOL.items():
        got, want = copy.deepcopy(net).train(mode == "train"), copy.deepcopy(float_net).train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(got(x), want(x), atol=atol, rtol=0)
    # nothing was observed: a training forward with the observers off leaves the ranges unset
    with torch.no_grad():
        net.train()(x)
    assert not any(worker.flags(net)["observer_enabled"])
    ranges = [b for n, b in net.named_buffers() if n.endswith("min_val")]
    assert ranges and all(b.numel() == 0 or bool(torch.isinf(b).all()) for b in ranges)


def test_late_start_without_sharding_is_not_prepared_at_setup():
    module = _module()
    qat = QuantizationAwareTraining(start_epoch=1, backend="eager", **worker.QUIET)
    qat.setup(pl.Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=2), module, "fit")
    assert not qat.backend.is_prepared(module.model) and not qat._holding_float


def test_pt2e_late_start_without_an_example_input_is_refused_naming_the_ways_out():
    qat = QuantizationAwareTraining(start_epoch=1, backend="pt2e", **worker.QUIET)
    with pytest.raises(ValueError) as err:
        qat.setup(_model_parallel_trainer(), _module(example=False), "fit")
    message = str(err.value)
    for part in ("ModelParallelStrategy (FSDP2)", "example_input_array", "backend='eager'", 'strategy="ddp"'):
        assert part in message, message


@pytest.mark.parametrize("granularity", ["structured", "channel_groups"])
def test_late_start_with_channel_pruning_is_refused(granularity):
    """Channel pruning zeroes batch-norm scales, which the fused conv-bn of a network prepared at setup divides
    by, and an unsharded run compacts at the start instead: refused at setup, naming the way out."""
    pruning = ProgressivePruning(granularity=granularity, **worker.PRUNING)
    qat = QuantizationAwareTraining(start_after="pruning", backend="eager", **worker.QUIET)
    trainer = _model_parallel_trainer(callbacks=[pruning, qat])
    with pytest.raises(ValueError) as err:
        qat.setup(trainer, _module(), "fit")
    message = str(err.value)
    for part in (
        "ModelParallelStrategy (FSDP2)",
        granularity,
        "granularity='unstructured'",
        'strategy="ddp"',
    ):
        assert part in message, message
    # unstructured pruning keeps the batch norms: the late start is held float
    unstructured = ProgressivePruning(**worker.PRUNING)
    qat = QuantizationAwareTraining(start_after="pruning", backend="eager", **worker.QUIET)
    module = _module()
    qat.setup(_model_parallel_trainer(callbacks=[unstructured, qat]), module, "fit")
    assert qat.backend.is_prepared(module.model) and qat.phase_state(None) == "pending"


def test_late_start_under_tensor_parallelism_stays_refused():
    qat = QuantizationAwareTraining(start_epoch=1, backend="eager", **worker.QUIET)
    with pytest.raises(ValueError, match=r"ModelParallelStrategy \(tensor parallel\)"):
        qat.setup(_model_parallel_trainer(tensor_parallel=True), _module(), "fit")


# ------------------------------------------------------------------------------------------ 2 processes
runs = launched_runs(scenarios_launch("tests.callbacks.fsdp2_qat_worker", SCENARIOS, name="fsdp2_qat"))


def _load(runs: Path, scenario: str) -> list[dict]:
    return [torch.load(runs / f"{scenario}_rank{r}.pt", weights_only=True) for r in (0, 1)]


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert set(a) == set(b), what
    for key, value in a.items():
        torch.testing.assert_close(
            b[key].float(), value.float(), atol=1e-6, rtol=0, equal_nan=True, msg=f"{what}: {key}"
        )


@pytest.mark.slow
def test_fsdp2_qat_from_epoch_1_float_before(runs):
    """Epoch 0 is float (fake quantization and observers off; the gathered prepared network computes what the
    float network with its weights computes), QAT from epoch 1 (switches on, BN frozen from epoch 1), one int8
    model on both ranks."""
    ranks = _load(runs, "late")
    for got in ranks:
        full = got["full"]
        assert full["sharded"] and full["prepared_at_start"] and full["global_step"] == 8
        assert full["callback"]["started_epoch"] == 1 and full["callback"]["converted"]
        assert full["callback"]["bn_frozen"]
        off, on = full["flags"][0], full["flags"][1]
        assert off["fake_quant_enabled"] and not any(off["fake_quant_enabled"] + off["observer_enabled"])
        assert all(on["fake_quant_enabled"] + on["observer_enabled"])
        for mode, atol in FLOAT_ATOL.items():
            assert full["float_diff"][mode] <= atol, (mode, full["float_diff"])
    _assert_equal(ranks[0]["full"]["int8"], ranks[1]["full"]["int8"], "int8 model rank 0 vs rank 1")


@pytest.mark.slow
def test_fsdp2_qat_resume_before_the_start_equals_the_uninterrupted_run(runs):
    """Resumed from the sharded checkpoint of epoch 0 (QAT not started in it): QAT starts at epoch 1 as in the
    uninterrupted run, which it ends equal to (network, int8 model, callback state)."""
    for got in _load(runs, "late"):
        full, resumed = got["full"], got["resumed"]
        assert got["checkpoint_is_directory"] and resumed["global_step"] == full["global_step"]
        assert list(resumed["flags"]) == [1] and all(resumed["flags"][1]["fake_quant_enabled"])
        assert resumed["callback"] == full["callback"]
        _assert_equal(full["weights"], resumed["weights"], "network after resuming")
        _assert_equal(full["int8"], resumed["int8"], "int8 model after resuming")


@pytest.mark.slow
def test_fsdp2_qat_after_unstructured_pruning(runs):
    """``start_after="pruning"``: the float epoch 0 prunes as a run without QAT does (the same masks and weights:
    the pruning reads the sharded parameters the prepared network trains), QAT starts at epoch 1 once pruning is
    done, the ranges freeze one epoch later, pruned weights stay zero, one int8 model on both ranks; resumed
    mid-QAT from the sharded checkpoint of epoch 1, the run ends equal to the uninterrupted one."""
    ranks = _load(runs, "after_pruning")
    floats = _load(runs, "float")
    for got, reference in zip(ranks, floats, strict=True):
        full = got["full"]
        assert full["pruning_state"] == "done" and all(full["pruning_reads_sharded"])
        assert full["callback"]["started_epoch"] == 1 and full["callback"]["observers_frozen"]
        assert not any(full["flags"][0]["fake_quant_enabled"])
        assert all(full["flags"][1]["fake_quant_enabled"] + full["flags"][1]["observer_enabled"])
        assert all(full["flags"][2]["fake_quant_enabled"]) and not any(full["flags"][2]["observer_enabled"])
        assert set(full["masks"]) == set(reference["masks"])
        for name, mask in reference["masks"].items():
            assert torch.equal(full["masks"][name], mask), f"mask of {name} differs from the run without QAT"
            assert not bool(mask.all()) and bool(full["weights"][name][~mask].eq(0).all()), name
        # num_batches_tracked left out: the PT2E capture counts its batch-norm calls differently (unused: the
        # batch norms have a momentum)
        for name, value in reference["weights"].items():
            if not name.endswith("num_batches_tracked"):
                torch.testing.assert_close(full["epoch0_weights"][name], value, atol=EPOCH0_ATOL, rtol=0)
        resumed = got["resumed"]
        assert resumed["callback"] == full["callback"] and resumed["global_step"] == full["global_step"] == 12
        _assert_equal(full["weights"], resumed["weights"], "network after resuming mid-QAT")
        _assert_equal(full["int8"], resumed["int8"], "int8 model after resuming mid-QAT")
    _assert_equal(ranks[0]["full"]["int8"], ranks[1]["full"]["int8"], "int8 model rank 0 vs rank 1")
