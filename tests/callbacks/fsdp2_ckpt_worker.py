"""Worker of the sharded-checkpoint tests (``tests/callbacks/test_fsdp2_checkpoints.py``): one of 2 processes on
CPU (gloo), started by the test through :func:`tests.launch.run_ranks` with torchrun's environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ...), so Lightning starts no process of
its own.

Usage: python -m tests.callbacks.fsdp2_ckpt_worker OUT_DIR SCENARIO [SCENARIO ...]  (in turn; the test runs
``straight resume``)

Both scenarios fit the MLP of :mod:`tests.callbacks.fsdp2_worker` (with a dropout, drawn per rank) sharded with FSDP2
(``ClassificationModule(sharding="fsdp2")`` under ``ModelParallelStrategy``, Adam with two parameter groups, so
that the optimizer state matters), deterministic loaders (rank r gets the samples r, r+2, ...), for
:data:`STEPS` optimizer steps with :func:`callbacks`: ``ExactResume``, ``LRScheduling`` (warm-up then cosine),
``ProgressivePruning`` (unstructured, a ramp over the fit) and a ``ModelCheckpoint`` writing a sharded
checkpoint (a folder: ``torch.distributed.checkpoint`` files and ``meta.pt``) every :data:`SAVE_EVERY` steps.

- ``straight``: the uninterrupted fit; its checkpoints go to ``OUT/straight_ckpts`` (step :data:`SAVE_EVERY` is
  mid-epoch and mid-ramp), and after the fit ``OUT/straight_final.ckpt`` (a sharded checkpoint, by
  ``trainer.save_checkpoint``).
- ``resume``: a fresh fit (new Trainer, module and callbacks; the random generators seeded again) resuming from
  ``OUT/straight_ckpts/<the step-SAVE_EVERY checkpoint>`` (``ckpt_path=``); checkpoints to ``OUT/resume_ckpts``.

Each writes ``<scenario>_rank<r>.pt``: the masks, the full weights (gathered with ``full_tensor``), the full
optimizer state (rank 0), the pruning history, the learning rates, the global step and the logits of the
sharded network on :func:`probe_batch`.

Every collective has the process group's timeout (``fsdp2_worker.PG_TIMEOUT``); the worker ends with
``leave_in_lockstep`` (barrier with a timeout, process group destroyed, ``os._exit(0)``), through
:func:`fsdp2_worker.run_scenarios`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import ExactResume, LRScheduling, ProgressivePruning
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks.fsdp2_worker import (
    BATCH,
    CLASSES,
    PG_TIMEOUT,
    dataset,
    loader,
    network,
    run_scenarios,
    trainer_kwargs,
)

#: optimizer steps of the fit: 3 epochs of 4 steps (64 samples, 8 per rank and step)
STEPS = 12
#: a sharded checkpoint every this many steps: step 5 is the second batch of epoch 1 and inside the ramp
SAVE_EVERY = 5
#: the pruning ramp: events at steps 0, 2, ..., 10
PRUNING = {"final_sparsity": 0.75, "start": 0, "end": 10, "unit": "step", "frequency": 2, "verbose": False}
#: the learning rate and the warm-up of LRScheduling
LR, WARMUP = 0.01, 3


def dropout_network() -> nn.Module:
    """The MLP of ``fsdp2_worker`` with a dropout after its first layer: each rank draws its own dropout masks
    (see :func:`run`), so a resume is exact only if every rank gets its own random states back."""
    mlp = network()
    return nn.Sequential(mlp[0], mlp[1], nn.Dropout(0.25), *list(mlp)[2:])


def module(sharding: str | None) -> ClassificationModule:
    """:func:`dropout_network` with Adam and weight decay (two parameter groups: weights, biases)."""
    torch.manual_seed(0)
    return ClassificationModule(
        dropout_network(), num_classes=CLASSES, optimizer="adam", lr=LR, weight_decay=1e-4, sharding=sharding
    )


def callbacks(checkpoints: Path) -> list[pl.Callback]:
    return [
        ExactResume(),
        LRScheduling("cosine", warmup=WARMUP),
        ProgressivePruning(**PRUNING),
        ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=SAVE_EVERY, save_top_k=-1),
    ]


def probe_batch() -> Tensor:
    """The inputs whose logits the sharded and the consolidated networks must agree on."""
    return dataset().tensors[0][:BATCH]


def mid_checkpoint(out: Path) -> Path:
    """The straight run's sharded checkpoint of step :data:`SAVE_EVERY` (a folder)."""
    found = sorted((out / "straight_ckpts").glob(f"*step={SAVE_EVERY}.ckpt"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one step-{SAVE_EVERY} checkpoint, found {found}")
    return found[0]


def fsdp2_trainer(root: Path, checkpoints: Path, ranks: int = 2) -> pl.Trainer:
    strategy = ModelParallelStrategy(data_parallel_size=ranks, tensor_parallel_size=1, timeout=PG_TIMEOUT)
    return pl.Trainer(
        **trainer_kwargs(
            str(root),
            accelerator="cpu",
            devices=ranks,
            strategy=strategy,
            callbacks=callbacks(checkpoints),
            use_distributed_sampler=False,
            enable_checkpointing=True,
            max_epochs=None,
            max_steps=STEPS,
        )
    )


def full_optimizer_state(net: ClassificationModule, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state gathered to full tensors (a collective; rank 0 gets it, the others ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(net, optimizer, options=options)


def run(scenario: str, out: Path) -> None:
    # each rank its own seed (Lightning seeds every process again from it when the fit starts): its own
    # dropout masks; module() draws the initial weights from seed 0 on every rank
    pl.seed_everything(100 + int(os.environ["LOCAL_RANK"]))
    trainer = fsdp2_trainer(out / scenario, out / f"{scenario}_ckpts")
    net = module("fsdp2")
    ckpt_path = mid_checkpoint(out) if scenario == "resume" else None
    trainer.fit(net, train_dataloaders=loader(BATCH, ranks=2), ckpt_path=ckpt_path)
    if scenario == "straight":
        trainer.save_checkpoint(out / "straight_final.ckpt")  # a collective: a sharded checkpoint (folder)
    pruning = next(c for c in trainer.callbacks if isinstance(c, ProgressivePruning))
    resume = next(c for c in trainer.callbacks if isinstance(c, ExactResume))
    params = dict(net.named_parameters())
    weights = {n: full_tensor(p.detach()).cpu() for n, p in params.items()}  # collective: on every rank
    optimizer_state = full_optimizer_state(net, trainer.optimizers[0])  # collective
    net.eval()
    with torch.no_grad():
        logits = net(probe_batch()).cpu()  # FSDP2 gathers the parameters: a collective
    torch.save(
        {
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "weights": weights,
            "sharded": all(is_sharded(p) for p in params.values()),
            "optimizer": optimizer_state,
            "history": [dict(h) for h in pruning.history],
            "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "logits": logits,
            "restored": list(resume.restored),
            "skipped_batches": resume.skipped_batches,
        },
        out / f"{scenario}_rank{trainer.global_rank}.pt",
    )


def run_one_rank(out: Path) -> None:
    """On 1 process (``WORLD_SIZE=1``): the straight run's step-5 checkpoint, written by 2 ranks, resumed under
    FSDP2 on one rank (``torch.distributed.checkpoint`` reshards the weights and optimizer state on load; the
    pruning masks, kept whole, are split for one rank) at twice the batch, to the end. Writes ``one_rank.pt``."""
    pl.seed_everything(100)  # rank 0's seed: ExactResume gives this rank rank 0's random states
    trainer = fsdp2_trainer(out / "one_rank", out / "one_rank_ckpts", ranks=1)
    net = module("fsdp2")
    trainer.fit(net, train_dataloaders=loader(2 * BATCH), ckpt_path=mid_checkpoint(out))
    pruning = next(c for c in trainer.callbacks if isinstance(c, ProgressivePruning))
    params = dict(net.named_parameters())
    torch.save(
        {
            "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},
            "sharded": all(is_sharded(p) for p in params.values()),
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "history": [dict(h) for h in pruning.history],
            "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
            "global_step": trainer.global_step,
        },
        out / "one_rank.pt",
    )


#: the scenarios of the worker, by the name the command line gives (``resume`` and ``one_rank`` read ``straight``'s
#: checkpoint; ``one_rank`` runs in a launch of its own, of one process)
SCENARIOS: dict[str, Callable[[Path], None]] = {
    "straight": lambda out: run("straight", out),
    "resume": lambda out: run("resume", out),
    "one_rank": run_one_rank,
}


if __name__ == "__main__":
    run_scenarios(SCENARIOS, sys.argv[1:])
