"""Worker of ``tests/callbacks/test_tensor_parallel_structured.py``: neuron, channel-group and head pruning under
tensor parallelism, one of 2 processes on CPU (gloo) forked by :func:`tests.launch.run_ranks`.

Usage: python -m tests.callbacks.tp_structured_worker OUT_DIR SCENARIO [SCENARIO ...]

The network (:class:`AttentionBlock`: token embedding, self-attention with separate q/k/v projections, a
feed-forward block, residuals, a mean-pooled head) is split Megatron-style by :class:`TensorParallelBlock`'s
``configure_model`` over a tensor-parallel group of 2 (both ranks see the same batches): q, k, v and the first
feed-forward Linear column-wise (each rank holds half the heads and half the hidden neurons), the output projection
and the second feed-forward Linear row-wise. Scenarios (:data:`SETTINGS`), each a 2-epoch fit writing
``<scenario>_rank<r>.pt`` (the masks gathered whole, the weights gathered, the placements):

- ``neurons``: ``granularity="structured"`` (each Linear's output units);
- ``channel_groups``: coupled channels and neurons of the traced network (traced on a gathered copy);
- ``heads``: attention heads only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks import fsdp2_worker as base

#: tokens, features per token, width, heads, hidden neurons of the feed-forward block
TOKENS, FEATURES, WIDTH, HEADS, HIDDEN = 6, 12, 32, 4, 64
#: the ramp: optimizer steps 0, 2, 4, 6 of 8, to half the units
RAMP = {"final_sparsity": 0.5, "start": 0, "end": 6, "unit": "step", "frequency": 2, "verbose": False}
#: scenario -> the callback's settings (``include`` keeps the embedding and the head whole for the neurons)
SETTINGS: dict[str, dict[str, Any]] = {
    "neurons": {"granularity": "structured", "include": ["q", "k", "v", "fc1"]},
    "channel_groups": {"granularity": "channel_groups"},
    "heads": {"granularity": "heads"},
}


class AttentionBlock(nn.Module):
    """``(batch, tokens, features)`` -> logits: embedding, self-attention, feed-forward, both residual, mean-pooled
    head. ``local_heads`` is the number of heads this rank computes (all of them unless a tensor-parallel
    ``configure_model`` splits the projections: then its share)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, WIDTH)
        self.q, self.k, self.v = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.o = nn.Linear(WIDTH, WIDTH)
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, WIDTH)
        self.head = nn.Linear(WIDTH, base.CLASSES)
        self.local_heads = HEADS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, t, _ = h.shape
        d = WIDTH // HEADS

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.local_heads, d).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        h = h + self.o(a.transpose(1, 2).reshape(b, t, self.local_heads * d))
        h = h + self.fc2(F.relu(self.fc1(h)))
        return self.head(h.mean(1))


class TensorParallelBlock(ClassificationModule):
    """The recipe: q, k, v and fc1 column-wise, o and fc2 row-wise over the tensor-parallel mesh; each rank
    computes its share of the heads."""

    def configure_model(self) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = self.device_mesh["tensor_parallel"]
        plan = {name: ColwiseParallel() for name in ("q", "k", "v", "fc1")}
        plan.update({"o": RowwiseParallel(), "fc2": RowwiseParallel()})
        parallelize_module(self.model, mesh, plan)
        self.model.local_heads = HEADS // mesh.size()


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(4)
    return TensorDataset(
        torch.randn(base.SAMPLES, TOKENS, FEATURES, generator=g),
        torch.randint(0, base.CLASSES, (base.SAMPLES,), generator=g),
    )


def make(scenario: str, tensor_parallel: bool) -> tuple[ProgressivePruning, ClassificationModule, DataLoader]:
    """The callback, the LightningModule (split over 2 ranks, or whole) and the loader (the same batches on every
    rank)."""
    pruning = ProgressivePruning(**{**RAMP, **SETTINGS[scenario]})
    torch.manual_seed(0)
    cls = TensorParallelBlock if tensor_parallel else ClassificationModule
    module = cls(AttentionBlock(), num_classes=base.CLASSES, optimizer="sgd", lr=0.1)
    return pruning, module, DataLoader(dataset(), batch_size=2 * base.BATCH, shuffle=False)


def run(out: Path, scenario: str) -> None:
    pl.seed_everything(0)
    pruning, module, train = make(scenario, tensor_parallel=True)
    trainer = base.fsdp2_trainer(str(out / scenario), [pruning], tensor_parallel=True)
    trainer.fit(module, train_dataloaders=train)
    params = dict(module.model.named_parameters())
    torch.save(
        {
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},  # collectives
            "placements": {
                n: [str(x) for x in p.placements] if is_sharded(p) else None for n, p in params.items()
            },
            "history": [h["sparsity"] for h in pruning.history],
            "global_step": trainer.global_step,
        },
        out / f"{scenario}_rank{trainer.global_rank}.pt",
    )


SCENARIOS = {name: (lambda out, name=name: run(out, name)) for name in SETTINGS}


if __name__ == "__main__":
    base.run_scenarios(SCENARIOS, sys.argv[1:])
