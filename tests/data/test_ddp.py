"""Two-process DDP (gloo, CPU) over the image data module: disjoint shards, one set of statistics, per-rank
augmentation streams."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs


class RecordBatches(pl.Callback):
    """Saves, per rank, the dataset indices seen, the statistics and the augmentation seed."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.indices: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.append(batch[2].cpu())

    def on_train_end(self, trainer, pl_module):
        dm = trainer.datamodule
        torch.save(
            {
                "indices": torch.cat(self.indices),
                "mean": dm.norm_stats["mean"],
                "seed": dm.batch_augmentation.seed,
                "samples": len(dm.train_split),
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    dm = ImageClassificationDataModule(
        "digits", batch_size=32, return_index=True, augmentation="standard", seed=5
    )
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            devices=2,
            strategy="ddp_spawn",
            limit_train_batches=8,
            limit_val_batches=2,
            callbacks=[RecordBatches(str(tmp_path))],
        )
    )
    trainer.fit(ClassificationModule(LeNet300100(in_features=64), lr=1e-3), datamodule=dm)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["samples"] == ranks[1]["samples"]
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"])
    assert len(set(ranks[0]["indices"].tolist()) & set(ranks[1]["indices"].tolist())) == 0  # disjoint shards
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 8 * 32
    assert {ranks[0]["seed"], ranks[1]["seed"]} == {5, 6}  # each rank its own augmentation stream
