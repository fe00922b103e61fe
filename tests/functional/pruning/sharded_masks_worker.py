"""Worker of ``tests/functional/pruning/test_sharded_masks.py``: one of 2 processes on CPU (gloo), started by the
test through :func:`tests.launch.run_ranks` with torchrun's environment variables (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ...).

Usage: python -m tests.functional.pruning.sharded_masks_worker OUT_DIR SCENARIO [SCENARIO ...]  (in turn, in one
process group: the first scenario starts it, the next ones use it)

- ``functional``: the tensors of :func:`cases` split by rows over a 1-D mesh of the 2 processes (as FSDP2 splits
  parameters), masked with ``compute_masks(..., shard_masks=True)`` at several sparsities and scopes, scored in
  chunks of 7 entries (so that chunk edges, ties across them and across the ranks are crossed); writes
  ``functional_rank<r>.pt``: per case the gathered masks, the kept counts of :func:`mask_counts`, and what each rank
  holds of each mask.
- ``callback``: ProgressivePruning in a 2-process FSDP2 fit of ``tests/callbacks/fsdp2_worker``'s network, layer
  then global scope; writes ``callback_rank<r>.pt``: what each rank holds of each mask, the gathered masks, the
  masks of the callback's ``state_dict`` (unpacked), its sparsities and history.

Every collective has the process group's timeout; the worker ends with ``leave_in_lockstep`` (barrier with a
timeout, process group destroyed, ``os._exit(0)``), through :func:`tests.callbacks.fsdp2_worker.run_scenarios`.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import lightning_optim.functional.pruning.masks as masks_module
from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.pruning.masks import (
    cast_masks,
    compute_masks,
    gather_mask,
    is_sharded,
    mask_counts,
    unpack_mask,
)
from tests.callbacks import fsdp2_worker as fw

#: every collective's timeout (a hung peer fails the test, never hangs it)
PG_TIMEOUT = timedelta(seconds=60)
#: (sparsity, scope, layer_sparsity) settings of the functional scenario
SETTINGS: list[tuple[float, str, dict[str, float] | None]] = [
    (sparsity, scope, overrides)
    for sparsity in (0.0, 0.3, 0.75, 0.97)
    for scope in ("layer", "global")
    for overrides in (None, {"b": 0.9})
]


def cases() -> dict[str, dict[str, torch.Tensor]]:
    """Named weights: random; many ties (integers, an all-zero and an all-one tensor); NaN, inf and -0.0;
    bfloat16. Row counts 31, 16, 5 and 1 split unevenly over 2 ranks (the 1-row tensor leaves rank 1 empty)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (31, 12), "b": (16, 31), "c": (5, 16), "d": (1, 7)}
    rand = {n: torch.randn(*s, generator=g) for n, s in shapes.items()}
    ties = {
        "a": torch.randint(-3, 4, shapes["a"], generator=g).float(),
        "b": torch.zeros(shapes["b"]),
        "c": torch.randint(-1, 2, shapes["c"], generator=g).float(),
        "d": torch.ones(shapes["d"]),
    }
    special = {n: t.clone() for n, t in rand.items()}
    special["a"][3, 4] = special["c"][0, 0] = float("nan")
    special["b"][0, 0] = float("inf")
    special["c"][1, 1] = -0.0
    half = {n: t.to(torch.bfloat16) for n, t in ties.items()}
    return {"random": rand, "ties": ties, "special": special, "bfloat16": half}


def run_functional(out: Path) -> None:
    if not dist.is_initialized():  # else started by an earlier scenario's fit (gloo, the same timeout)
        dist.init_process_group("gloo", timeout=PG_TIMEOUT)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    chunk, masks_module.SCORE_CHUNK = masks_module.SCORE_CHUNK, 7
    try:
        results = _functional_results(mesh)
    finally:
        masks_module.SCORE_CHUNK = chunk  # the scenarios after this one score as the library does
    torch.save(results, out / f"functional_rank{dist.get_rank()}.pt")


def _functional_results(mesh: DeviceMesh) -> dict[str, Any]:
    """The ``functional`` scenario's rows: one per case and setting, and ``mixed``."""
    results: dict[str, Any] = {}
    for case, weights in cases().items():
        sharded = {n: distribute_tensor(t, mesh, [Shard(0)]) for n, t in weights.items()}
        for i, (sparsity, scope, overrides) in enumerate(SETTINGS):
            got = compute_masks(sharded, sparsity, scope=scope, layer_sparsity=overrides, shard_masks=True)
            fast = cast_masks(got, sharded)
            results[f"{case}/{i}"] = {
                "gathered": {n: gather_mask(m) for n, m in got.items()},
                "counts": mask_counts(list(got.values())),
                "sharded": {n: is_sharded(m) for n, m in got.items()},
                "local": {n: tuple(m.to_local().shape) for n, m in got.items()},
                "local_bytes": {n: m.to_local().untyped_storage().nbytes() for n, m in got.items()},
                "fast_sharded": {n: is_sharded(m) and m.dtype == weights[n].dtype for n, m in fast.items()},
            }
    # a plain tensor among the weights: gathered (whole masks), as without shard_masks
    mixed = {"a": distribute_tensor(cases()["random"]["a"], mesh, [Shard(0)]), "p": cases()["random"]["b"]}
    got = compute_masks(mixed, 0.5, scope="global", shard_masks=True)
    results["mixed"] = {n: (is_sharded(m), m.clone()) for n, m in got.items()}
    return results


def run_callback(out: Path) -> None:
    results: dict[str, Any] = {}
    rank = 0
    for scope in ("layer", "global"):
        pl.seed_everything(0)
        pruning = ProgressivePruning(scope=scope, **fw.PRUNING)
        trainer = fw.fsdp2_trainer(str(out / "callback" / scope), [pruning])
        rank = trainer.global_rank
        net = fw.module("fsdp2")
        trainer.fit(net, train_dataloaders=fw.loader(fw.BATCH, ranks=2))
        state = pruning.state_dict()  # a collective (the masks are gathered to be packed)
        results[scope] = {
            "sharded": {n: is_sharded(m) for n, m in pruning.masks.items()},
            "local_numel": {n: m.to_local().numel() for n, m in pruning.masks.items()},
            "local_bytes": {n: m.to_local().untyped_storage().nbytes() for n, m in pruning.masks.items()},
            "numel": {n: m.numel() for n, m in pruning.masks.items()},
            "gathered": pruning.gathered_masks(),
            "state_masks": {n: unpack_mask(p, state["shapes"][n]) for n, p in state["masks"].items()},
            "sparsities": pruning.layer_sparsities(),
            "history": [dict(h) for h in pruning.history],
        }
    torch.save(results, out / f"callback_rank{rank}.pt")


#: the scenarios of the worker, by the name the command line gives
SCENARIOS = {"functional": run_functional, "callback": run_callback}


if __name__ == "__main__":
    fw.run_scenarios(SCENARIOS, sys.argv[1:])
