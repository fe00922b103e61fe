"""Worker of the generated FSDP2 tests: launched by torchrun, 2 processes on CPU (gloo), the network sharded with
``ClassificationModule(sharding="fsdp2")`` under ``ModelParallelStrategy``.

Usage: torchrun --nproc_per_node=2 tests/callbacks/fsdp2_matrix_worker.py OUT_DIR [--no-resume] NAME [NAME ...] (or
its ranks forked by ``tests.launch.run_ranks``, as the one-node tests do)

For each settings-table entry, each rank:

- fits it for 2 epochs (the table's Trainer settings), saving a sharded checkpoint after each epoch; a callback
  (or setting) that refuses sharded parameters must stop at setup with a ``ValueError`` (recorded, with the
  global step it stopped at);
- unless ``--no-resume``: fits it again from the sharded checkpoint of the first epoch;
- saves ``<name>_rank<r>.pt``: the gathered (full) network and the callback state of both runs (sharded tensors
  in the state gathered), or the refusal.

Under ``torchrun --nnodes=2 --nproc_per_node=1`` the same script runs as two single-process "nodes".
Every collective has the process group's timeout (:data:`PG_TIMEOUT`); the worker ends like the tests'
``ddp_spawn`` workers (``tests/ddp_support.py``).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks import matrix_support as ms
from tests.ddp_support import leave_in_lockstep

#: the timeout of every collective of the process group (a hung peer fails the test, never hangs it)
PG_TIMEOUT = timedelta(seconds=90)
#: the substring every refusal names (``refuse_sharded``)
STRATEGY = "ModelParallelStrategy (FSDP2)"


def _gathered(value: Any) -> Any:
    """``value`` with every sharded tensor gathered (a collective for each, in the same order on every rank)."""
    if isinstance(value, dict):
        return {k: _gathered(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_gathered(v) for v in value)
    if is_sharded(value):
        return full_tensor(value.detach()).cpu()
    return value


def _tensors_only(state: Any) -> dict[str, Any]:
    flat = ms.flatten_state(_gathered(state))
    return {
        k: v for k, v in flat.items() if isinstance(v, (torch.Tensor, int, float, str, bool)) or v is None
    }


def _model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, gathered from its shards, as float CPU tensors (dequantized)."""
    state = {k: full_tensor(v.detach()) if is_sharded(v) else v for k, v in module.state_dict().items()}
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = (value.dequantize() if value.is_quantized else value).detach().clone().float().cpu()
    return out


class ShardedProbe(pl.Callback):
    """Records, at the first training batch, whether every parameter of the network is sharded (a DTensor)."""

    def __init__(self) -> None:
        self.sharded: bool | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.sharded is None:
            params = list(ms.target_network(pl_module).parameters())
            self.sharded = bool(params) and all(is_sharded(p) for p in params)


def _fit(name: str, root: Path, devices: int, num_nodes: int, ckpt_path: str | None = None):
    pl.seed_everything(0, workers=True)
    callback = ms.make_callback(name, sharded=True)
    module = ms.make_module(name, sharding="fsdp2")
    dm = ms.make_datamodule(name)
    checkpoints = ModelCheckpoint(
        dirpath=root / ("ckpt_resumed" if ckpt_path else "ckpt"),
        save_top_k=-1,
        every_n_epochs=1,
        filename="{epoch}",
    )
    strategy = ModelParallelStrategy(
        data_parallel_size=devices * num_nodes, tensor_parallel_size=1, timeout=PG_TIMEOUT
    )
    kwargs = ms.trainer_kwargs(
        name,
        str(root / ("resumed" if ckpt_path else "full")),
        accelerator="cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        enable_checkpointing=True,
        precision=os.environ.get("FSDP2_PRECISION", "32-true"),
    )
    probe = ShardedProbe()
    trainer = pl.Trainer(callbacks=[callback, *ms.companions(name), checkpoints, probe], **kwargs)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except ValueError as err:
        if STRATEGY not in str(err):
            raise
        return trainer, None, callback, {"message": str(err), "global_step": trainer.global_step}
    module.sharded_during_fit = probe.sharded
    return trainer, module, callback, None


def main() -> None:
    args = sys.argv[2:]
    run(Path(sys.argv[1]), [a for a in args if a != "--no-resume"], resume="--no-resume" not in args)
    leave_in_lockstep()


def run(out: Path, names: list[str], resume: bool = True) -> None:
    """Fit (and, with ``resume``, resume) each named entry under FSDP2 and save ``<name>_rank<r>.pt`` in ``out``."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "2"))
    num_nodes = int(os.environ.get("WORLD_SIZE", str(local))) // local
    rank = int(os.environ.get("RANK", "0"))
    for name in names:
        root = out / name
        trainer, module, callback, refused = _fit(name, root, local, num_nodes)
        result: dict[str, Any] = {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes}
        if refused is not None:
            result["refused"] = refused
        else:
            result["sharded"] = module.sharded_during_fit
            result["global_step"] = trainer.global_step
            result["model"] = _model_state(module)
            result["parameters"] = [n for n, _ in module.named_parameters()]
            result["callback"] = _tensors_only(callback.state_dict())
            if resume:
                mid = root / "ckpt" / "epoch=0.ckpt"
                mid = Path(trainer.strategy.broadcast(str(mid)))
                trainer_b, module_b, callback_b, refused_b = _fit(
                    name, root, local, num_nodes, ckpt_path=str(mid)
                )
                assert refused_b is None, refused_b
                result["resumed_from_directory"] = mid.is_dir()
                result["resumed_global_step"] = trainer_b.global_step
                result["resumed_model"] = _model_state(module_b)
                result["resumed_callback"] = _tensors_only(callback_b.state_dict())
        torch.save(result, out / f"{name}_rank{rank}.pt")
        torch.distributed.barrier()


if __name__ == "__main__":
    main()
