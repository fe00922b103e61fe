"""Worker of ``tests/callbacks/test_fsdp2_structured.py``: structured and channel-group pruning with compaction under
FSDP2, one of 2 processes on CPU (gloo) forked by :func:`tests.launch.run_ranks` with torchrun's environment.

Usage: python -m tests.callbacks.fsdp2_structured_worker OUT_DIR SCENARIO [SCENARIO ...]

Scenarios (:data:`SCENARIOS`), each a fit of 2 epochs (8 optimizer steps) of a network sharded with
``ClassificationModule(sharding="fsdp2")`` under ``ModelParallelStrategy``, writing ``<scenario>_rank<r>.pt``:

- ``structured``: the MLP of ``tests/callbacks/fsdp2_worker.py`` (uneven shards), ``granularity="structured"``,
  compacted at the end;
- ``groups``: a residual CNN (:func:`residual_cnn`: the skip couples the channels of two convolutions),
  ``granularity="channel_groups"``, compacted at the end;
- ``groups_midfit``: the same with a shorter ramp (to step 2), compacted by :meth:`ProgressivePruning.compact` at
  the start of the second epoch (as a later phase does), then trained on, sharded again.

Each file holds the masks (whole), the compacted network's parameters gathered from its shards, whether it is
sharded again, its output on a fixed input, and the compaction summary's counts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks import fsdp2_worker as base

#: the ramp: optimizer steps 0, 2, 4, 6 of 8 (2 epochs of 4 steps), to half the units
RAMP = {"final_sparsity": 0.5, "start": 0, "end": 6, "unit": "step", "frequency": 2, "verbose": False}
#: image samples of the CNN scenarios: 64 of 3x8x8, 5 classes
IMAGE = (3, 8, 8)


class ResidualCNN(nn.Module):
    """conv -> relu -> (conv -> relu -> conv) + skip -> relu -> pool -> linear, without batch norm (2 ranks at
    batch B then train like one process at batch 2B); the skip ties the channels of ``stem`` and ``conv2``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IMAGE[0], width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, base.CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def residual_cnn() -> nn.Module:
    torch.manual_seed(0)
    return ResidualCNN()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return base.network()


def images() -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(
        torch.randn(base.SAMPLES, *IMAGE, generator=g),
        torch.randint(0, base.CLASSES, (base.SAMPLES,), generator=g),
    )


def loader(data: TensorDataset, batch_size: int, ranks: int = 1) -> DataLoader:
    """In order; with ``ranks=2`` this process's half (rank r: samples r, r+2, ...), as in ``fsdp2_worker``."""
    if ranks == 1:
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    rank = int(__import__("os").environ["LOCAL_RANK"])
    sampler = DistributedSampler(data, num_replicas=ranks, rank=rank, shuffle=False)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


#: scenario -> (network factory, dataset factory, callback settings, compacted mid-fit)
SETTINGS: dict[str, tuple[Any, Any, dict[str, Any], bool]] = {
    "structured": (mlp, base.dataset, {"granularity": "structured", "compact_at_end": True}, False),
    "groups": (residual_cnn, images, {"granularity": "channel_groups", "compact_at_end": True}, False),
    # the ramp ends at step 2 (events 0, 2), before the compaction at the second epoch's start (step 4)
    "groups_midfit": (residual_cnn, images, {"granularity": "channel_groups", "end": 2}, True),
}


class CompactAtSecondEpoch(pl.Callback):
    """Compacts the network at the start of the second epoch through :meth:`ProgressivePruning.compact` (what a
    later compression phase does before it starts); the fit goes on with the compacted network."""

    def __init__(self, pruning: ProgressivePruning) -> None:
        self.pruning = pruning
        self.compacted_now: bool | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.compacted_now = self.pruning.compact(trainer, pl_module)


def make(
    scenario: str, ranks: int
) -> tuple[ProgressivePruning, list[pl.Callback], ClassificationModule, Any]:
    """The scenario's callback(s), LightningModule and training loader, for 2 FSDP2 ranks (``ranks=2``, sharded) or
    the single-process reference (``ranks=1``, batch twice as large)."""
    net, data, kwargs, midfit = SETTINGS[scenario]
    pruning = ProgressivePruning(**{**RAMP, **kwargs})
    callbacks: list[pl.Callback] = [pruning]
    if midfit:
        callbacks.append(CompactAtSecondEpoch(pruning))
    module = ClassificationModule(
        net(), num_classes=base.CLASSES, optimizer="sgd", lr=0.1, sharding="fsdp2" if ranks == 2 else None
    )
    batch = base.BATCH if ranks == 2 else 2 * base.BATCH
    return pruning, callbacks, module, loader(data(), batch, ranks=ranks)


def probe(scenario: str) -> torch.Tensor:
    """A fixed input of the scenario's network."""
    g = torch.Generator().manual_seed(3)
    shape = (base.FEATURES,) if SETTINGS[scenario][1] is base.dataset else IMAGE
    return torch.randn(4, *shape, generator=g)


def summary(pruning: ProgressivePruning, module: ClassificationModule, scenario: str) -> dict[str, Any]:
    """What the tests compare (a collective under FSDP2: the parameters are gathered)."""
    params = dict(module.model.named_parameters())
    module.eval()
    with torch.no_grad():
        out = full_tensor(module.model(probe(scenario).to(module.device))).cpu()
    _, requested, removed, units = pruning.compaction_summary()
    return {
        "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
        "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},
        "sharded": bool(params) and all(is_sharded(p) for p in params.values()),
        "compacted": pruning.compacted,
        "output": out,
        "counts": (requested, removed, units),
        "history": [h["sparsity"] for h in pruning.history],
    }


def run(out: Path, scenario: str) -> None:
    pl.seed_everything(0)
    pruning, callbacks, module, train = make(scenario, ranks=2)
    trainer = base.fsdp2_trainer(str(out / scenario), callbacks)
    trainer.fit(module, train_dataloaders=train)
    got = summary(pruning, module, scenario)
    got["global_step"] = trainer.global_step
    got["compacted_now"] = getattr(callbacks[-1], "compacted_now", None)
    torch.save(got, out / f"{scenario}_rank{trainer.global_rank}.pt")


SCENARIOS = {name: (lambda out, name=name: run(out, name)) for name in SETTINGS}


if __name__ == "__main__":
    base.run_scenarios(SCENARIOS, sys.argv[1:])
