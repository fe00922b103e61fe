"""FSDP2's own mixed precision (``ClassificationModule(sharding="fsdp2", sharding_param_dtype=...)``, a
``MixedPrecisionPolicy``) with the callbacks: the option's checks, and a 2-process run (worker
``tests/callbacks/fsdp2_mp_worker.py``) where the forward sees bfloat16 parameters while the shards, the optimizer
state, the masks and the gathered copies stay float32, and pruning, PTQ and QAT end identical on both ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim import ClassificationModule
from lightning_optim.checkpoints import _single_device_hparams
from tests.callbacks import fsdp2_mp_worker as worker
from tests.callbacks import fsdp2_worker as base
from tests.conftest import launched_runs
from tests.launch import scenarios_launch


def test_an_unknown_param_dtype_is_refused_naming_the_choices():
    with pytest.raises(
        ValueError, match=r"Unknown `sharding_param_dtype` 'bf16'; allowed: \['bfloat16', 'float16'\]"
    ):
        ClassificationModule(base.network(), sharding="fsdp2", sharding_param_dtype="bf16")


def test_a_param_dtype_without_sharding_is_refused_naming_the_precision_alternative():
    with pytest.raises(ValueError, match=r"needs `sharding='fsdp2'`.*'bf16-mixed'"):
        ClassificationModule(base.network(), sharding_param_dtype="bfloat16")


def test_a_consolidated_checkpoint_drops_the_param_dtype_with_the_sharding():
    got = _single_device_hparams({"sharding": "fsdp2", "sharding_param_dtype": "bfloat16", "lr": 0.1})
    assert got == {"sharding": None, "sharding_param_dtype": None, "lr": 0.1}
    ClassificationModule(base.network(), **{k: v for k, v in got.items() if k != "lr"})  # loads on one device


def test_qat_with_half_precision_gathered_parameters_is_refused_at_setup_naming_the_alternative():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lightning_optim.callbacks import QuantizationAwareTraining

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    with pytest.raises(ValueError, match=r"sharding_param_dtype='bfloat16'.*need float32 weights") as err:
        QuantizationAwareTraining(start_epoch=0).setup(trainer, worker.module(), "fit")
    assert "precision='bf16-mixed'" in str(err.value) and 'strategy="ddp"' in str(err.value)


runs = launched_runs(scenarios_launch("tests.callbacks.fsdp2_mp_worker", list(worker.SCENARIOS), name="mp"))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(worker.SCENARIOS))
def test_bfloat16_gathered_parameters_with_float32_shards_and_callbacks(scenario, runs):
    r0, r1 = (torch.load(runs / f"{scenario}_rank{r}.pt", weights_only=True) for r in (0, 1))
    for got in (r0, r1):
        assert got["global_step"] == 8 and got["sharded"]
        # the forward computes with the gathered bfloat16 parameters; the shards and Adam's moments stay float32
        assert got["seen"] == {"weight": "torch.bfloat16", "input": "torch.bfloat16"}, got["seen"]
        assert got["shard_dtypes"] == ["torch.float32"] and got["optimizer_dtypes"] == ["torch.float32"]
        assert all(w.dtype == torch.float32 for w in got["weights"].values())
        assert got["int8"], f"{scenario}: no int8 model"
    if scenario == "prune_ptq":
        kept = sum(int(m.sum()) for m in r0["masks"].values())
        total = sum(m.numel() for m in r0["masks"].values())
        assert 1 - kept / total == pytest.approx(base.PRUNING["final_sparsity"], abs=0.01)
        for name, mask in r0["masks"].items():
            assert torch.equal(mask, r1["masks"][name]), name
            assert not r0["weights"][name][~mask].any(), f"{name}: weights where the mask is 0"
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), f"{scenario}: {name} differs between the ranks"
    for key, value in r0["int8"].items():
        assert torch.equal(value, r1["int8"][key]), f"{scenario}: int8 {key} differs between the ranks"
