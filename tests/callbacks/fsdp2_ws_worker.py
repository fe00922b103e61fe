"""Worker of the FSDP2 weight-sharing tests (``tests/callbacks/test_fsdp2_weight_sharing.py``): one of 2 processes
on CPU (gloo), started by :func:`tests.launch.run_ranks` with torchrun's environment variables, as
``tests/callbacks/fsdp2_worker.py`` is.

Usage: python -m tests.callbacks.fsdp2_ws_worker OUT_DIR SCENARIO [SCENARIO ...]

Scenarios (:data:`SCENARIOS`), run in turn in one process group:

- ``mlp``: WeightSharing (3 bits from epoch 1, Adam: the moments are tied when sharing starts) on :func:`mlp`, whose
  31 and 5 rows split unevenly over the 2 ranks, sharded with ``ClassificationModule(sharding="fsdp2")``; a sharded
  checkpoint after every epoch; then the run resumed from the checkpoint of epoch 1 (mid-sharing). Writes
  ``mlp_rank<r>.pt`` (the gathered weights, the callback state with whole indices, the artifact's path and sizes,
  for both runs);
- ``conv``: the same (without the resume) on :func:`convnet` (7 filters over 2 ranks); writes ``conv_rank<r>.pt``.

Every collective has the process group's timeout (:data:`PG_TIMEOUT`); the worker ends with
:func:`tests.ddp_support.leave_in_lockstep`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import WeightSharing
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks import fsdp2_worker as base

#: the timeout of every collective of the process group (a hung peer fails the test, never hangs it)
PG_TIMEOUT = timedelta(seconds=60)
#: samples, classes; per-rank batch (the single-process reference uses twice this batch): 4 steps an epoch
SAMPLES, CLASSES, BATCH = 64, 5, 8
#: the epochs of a fit; sharing starts at epoch 1 (after 4 Adam steps: moments to tie)
EPOCHS = 3
#: the checkpoint a resumed run starts from (saved at the end of epoch 1: sharing has started)
RESUME_FROM = "epoch=1.ckpt"


def mlp() -> nn.Module:
    """12 features -> 31 -> 16 -> 5: 31 and 5 rows do not split evenly over 2 ranks."""
    return nn.Sequential(nn.Linear(12, 31), nn.ReLU(), nn.Linear(31, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def convnet() -> nn.Module:
    """A small conv net on 1x8x8 inputs: 7 and 6 filters, split unevenly over 2 ranks."""
    return nn.Sequential(
        nn.Conv2d(1, 7, 3),
        nn.ReLU(),
        nn.Conv2d(7, 6, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, CLASSES),
    )


#: the networks, their inputs' shape, and the WeightSharing settings of each scenario
NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (12,)),
    "conv": (convnet, (1, 8, 8)),
}


def sharing(out: Path, tag: str) -> WeightSharing:
    return WeightSharing(bits=3, start_epoch=1, verbose=False, export_path=str(out / f"{tag}.lws"))


def dataset(shape: tuple[int, ...]) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(SAMPLES, *shape, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    )


def loader(shape: tuple[int, ...], batch_size: int, ranks: int = 1) -> DataLoader:
    """In order; with ``ranks=2`` this process's half (rank r: samples r, r+2, ...), so one step of both ranks
    covers one single-process step of twice the batch."""
    data = dataset(shape)
    if ranks == 1:
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    sampler = DistributedSampler(data, num_replicas=ranks, rank=int(os.environ["LOCAL_RANK"]), shuffle=False)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def module(build: Callable[[], nn.Module], sharding: str | None) -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule(build(), num_classes=CLASSES, optimizer="adam", lr=1e-2, sharding=sharding)


def trainer_kwargs(root: str, **overrides: Any) -> dict[str, Any]:
    """``fsdp2_worker.trainer_kwargs`` over :data:`EPOCHS` epochs."""
    return base.trainer_kwargs(root, **{"max_epochs": EPOCHS, **overrides})


def fit(
    out: Path, tag: str, ckpt_path: str | None = None
) -> tuple[pl.Trainer, ClassificationModule, WeightSharing]:
    """A 2-rank FSDP2 fit of the scenario ``tag``'s network (``ckpt_path``: resumed from that checkpoint), a
    sharded checkpoint after every epoch in ``out/<tag>/ckpt``."""
    build, shape = NETWORKS[tag.split("_")[0]]
    pl.seed_everything(0)
    callback = sharing(out, tag)
    checkpoints = ModelCheckpoint(
        dirpath=out / tag / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}"
    )
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=PG_TIMEOUT)
    trainer = pl.Trainer(
        **trainer_kwargs(
            str(out / tag),
            accelerator="cpu",
            devices=2,
            strategy=strategy,
            callbacks=[callback, checkpoints],
            enable_checkpointing=True,
            use_distributed_sampler=False,
        )
    )
    net = module(build, "fsdp2")
    trainer.fit(net, train_dataloaders=loader(shape, BATCH, ranks=2), ckpt_path=ckpt_path)
    return trainer, net, callback


def record(trainer: pl.Trainer, net: ClassificationModule, callback: WeightSharing) -> dict[str, Any]:
    """What a fit ended with (collectives: every rank calls it alike)."""
    params = dict(net.model.named_parameters())
    return {
        "global_step": trainer.global_step,
        "sharded": all(is_sharded(p) for p in params.values()),
        "local_rows": {n: int(s.index.shape[0]) for n, s in callback.shared.items()},
        "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},
        "state": callback.state_dict(),  # whole indices: gathered from the ranks' parts
        "codebooks": {n: s.codebook.cpu() for n, s in callback.shared.items()},
        "exported_path": str(callback.exported_path),
        "artifact_bytes": callback.size_breakdown.total,
        "dense_bytes": callback.dense_bytes,
    }


def run(out: Path, tag: str, resume: bool) -> None:
    trainer, net, callback = fit(out, tag)
    result = {"full": record(trainer, net, callback), "world_size": trainer.world_size}
    if resume:
        mid = out / tag / "ckpt" / RESUME_FROM
        result["resumed_from_directory"] = mid.is_dir()
        trainer_b, net_b, callback_b = fit(out, f"{tag}_resumed", ckpt_path=str(mid))
        result["resumed"] = record(trainer_b, net_b, callback_b)
    torch.save(result, out / f"{tag}_rank{trainer.global_rank}.pt")


#: the scenarios of the worker, by the name the command line gives
SCENARIOS: dict[str, Callable[[Path], None]] = {
    "mlp": lambda out: run(out, "mlp", resume=True),
    "conv": lambda out: run(out, "conv", resume=False),
}


if __name__ == "__main__":
    base.run_scenarios(SCENARIOS, sys.argv[1:])
