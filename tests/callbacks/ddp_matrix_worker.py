"""Worker for the generated DDP test: launched by torchrun with 2 processes on CPU (gloo).

Usage: torchrun --nproc_per_node=2 tests/callbacks/ddp_matrix_worker.py OUT_DIR NAME [NAME ...] (the tests fork its
two ranks with ``tests.launch.run_ranks``, which gives them torchrun's environment)
Each rank fits every named callback for 2 epochs and saves its final model and callback state. Under
``torchrun --nnodes=2 --nproc_per_node=1`` the same script runs as two single-process "nodes"
(``num_nodes`` is taken from torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy

from tests.callbacks import matrix_support as ms

#: the timeout of every collective of the process group (a hung peer fails the test, never hangs it)
PG_TIMEOUT = timedelta(seconds=90)


def _tensors_only(state):
    flat = ms.flatten_state(state)
    return {
        k: v for k, v in flat.items() if isinstance(v, (torch.Tensor, int, float, str, bool)) or v is None
    }


def main() -> None:
    run(Path(sys.argv[1]), sys.argv[2:])


def run(out: Path, names: list[str]) -> None:
    """Fit each named entry under DDP and save ``<name>_rank<r>.pt`` in ``out``."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "2"))
    num_nodes = int(os.environ.get("WORLD_SIZE", str(local))) // local
    for name in names:
        pl.seed_everything(0, workers=True)
        callback = ms.make_callback(name)
        module = ms.make_module(name)
        dm = ms.make_datamodule(name)
        strategy = DDPStrategy(timeout=PG_TIMEOUT)
        kwargs = ms.trainer_kwargs(
            name, str(out / name), devices=local, num_nodes=num_nodes, strategy=strategy
        )
        trainer = pl.Trainer(callbacks=[callback, *ms.companions(name)], **kwargs)
        trainer.fit(module, datamodule=dm)
        rank = trainer.global_rank
        torch.save(
            {
                "model": ms.model_state(module),
                "callback": _tensors_only(callback.state_dict()),
                "world_size": trainer.world_size,
                "num_nodes": trainer.num_nodes,
            },
            out / f"{name}_rank{rank}.pt",
        )
        trainer.strategy.barrier()


if __name__ == "__main__":
    main()
