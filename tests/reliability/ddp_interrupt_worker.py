"""Worker of the DDP interrupt test: 2 processes on CPU (gloo), each rank with its own dropout stream.

Usage: torchrun --nproc_per_node=2 tests/reliability/ddp_interrupt_worker.py OUT_DIR full|stop|resume (the test forks
the two ranks with ``tests.launch.run_ranks``, which gives them torchrun's environment)
``stop`` sends SIGTERM to rank 1 only after global step 5; ``resume`` continues with ``ckpt_path="last"``.
Each rank writes ``OUT_DIR/<mode>_rank<r>.pt``: its final weights, or (``stop``) the exit status and step.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_optim.callbacks import ExactResume, InterruptCheckpoint
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule
from lightning_optim.plugins import AtomicCheckpointIO

STOP_STEP = 5


class SignalRankOne(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    rank = int(os.environ.get("RANK", "0"))
    pl.seed_everything(0)
    module = ClassificationModule(ConvNet3(image_size=8, channels=(8, 8, 16), hidden=16, dropout=0.5))
    torch.manual_seed(100 + rank)  # each rank draws its own dropout masks: each must get its own state back
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ExactResume(),
            SignalRankOne(STOP_STEP if mode == "stop" else -1),
            InterruptCheckpoint(),
            ModelCheckpoint(dirpath=out / "ckpt", save_last=True, save_top_k=0),
        ],
    )
    dm = ImageClassificationDataModule("digits", batch_size=16)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path="last" if mode == "resume" else None)
    except SystemExit as stop:
        torch.save({"code": stop.code, "step": trainer.global_step}, out / f"{mode}_rank{rank}.pt")
        return
    torch.save({"weights": module.state_dict(), "step": trainer.global_step}, out / f"{mode}_rank{rank}.pt")


if __name__ == "__main__":
    main()
