"""A 2-process DDP fit on CPU (gloo) of ClassificationModule + ImageClassificationDataModule."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim import ClassificationModule, ImageClassificationDataModule
from lightning_optim.models import ConvNet3
from tests.conftest import quiet_trainer_kwargs


class SaveRankState(pl.Callback):
    """Saves each rank's final parameters, logged metrics and data shard size to ``out_dir/rank<r>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "world_size": trainer.world_size,
                "params": {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()},
                "val_acc": float(trainer.callback_metrics["val_acc"]),
                "batches": trainer.num_training_batches,
                "train_samples": len(trainer.datamodule.train_split),
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(
        ConvNet3(image_size=8, channels=(8, 16, 16), hidden=32), optimizer="adamw", lr=3e-3
    )
    initial = {k: v.detach().clone() for k, v in module.named_parameters()}
    dm = ImageClassificationDataModule("digits", batch_size=32)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            devices=2,
            strategy="ddp_spawn",
            max_epochs=2,
            limit_val_batches=3,
            callbacks=[SaveRankState(str(tmp_path))],
        )
    )
    trainer.fit(module, datamodule=dm)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # each rank sees its half of the training split (the DistributedSampler pads to equal halves)
    assert r0["batches"] == r1["batches"] == math.ceil(math.ceil(r0["train_samples"] / 2) / 32)
    for name, value in r0["params"].items():
        torch.testing.assert_close(
            value, r1["params"][name], rtol=0, atol=0, msg=f"{name} differs between ranks"
        )
    changed = [name for name, value in r0["params"].items() if not torch.equal(value, initial[name])]
    assert len(changed) == len(initial)  # every parameter trained
    assert r0["val_acc"] == r1["val_acc"] > 0.5  # metrics are synchronized across ranks


class FailOnRank1(pl.Callback):
    """Raises in rank 1's worker after the first training batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1:
            raise RuntimeError("rank 1 fails on purpose")


def test_ddp_spawn_is_the_lockstep_exit_strategy_and_a_worker_error_still_reaches_the_test(tmp_path):
    """``strategy="ddp_spawn"`` in the tests builds tests/ddp_support.py's strategy, whose workers end with
    os._exit(0) only after their work is done: an error in a worker is not swallowed by that exit."""
    from tests.ddp_support import LockstepExitLauncher, LockstepSpawnDDP

    module = ClassificationModule(ConvNet3(image_size=8, channels=(4, 4, 4), hidden=8), lr=1e-3)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            devices=2,
            strategy="ddp_spawn",
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            callbacks=[FailOnRank1()],
        )
    )
    assert isinstance(trainer.strategy, LockstepSpawnDDP)
    assert isinstance(trainer.strategy.launcher, LockstepExitLauncher)
    with pytest.raises(Exception, match="rank 1 fails on purpose"):
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=16))
