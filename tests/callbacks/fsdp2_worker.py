"""Worker of the FSDP2 tests (``tests/callbacks/test_fsdp2.py``): one of 2 processes on CPU (gloo), started by
the test through :func:`tests.launch.run_ranks` with torchrun's environment variables (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ...), so Lightning starts no process of its own.

Usage: python -m tests.callbacks.fsdp2_worker OUT_DIR SCENARIO [SCENARIO ...]

The scenarios run in turn, in one process group (:data:`SCENARIOS`):

- ``prune:layer``, ``prune:global``: a fit of :func:`network` sharded with ``ClassificationModule(sharding="fsdp2")``
  under ``ModelParallelStrategy``, with ProgressivePruning (unstructured, of that ``scope``); writes
  ``prune_<scope>_rank<r>.pt`` (the masks, the gathered full weights, and what the shards looked like).
- ``callbacks``: every refused callback setting (:func:`refused_settings`) fitted in turn, each expected to stop at
  setup with a ``ValueError`` before any step (message and global step recorded); then one fit with the callbacks
  that declare support; writes ``callbacks_rank<r>.json``.
- ``gather``: unstructured pruning, then PTQ and the compression report on gathered copies of the sharded
  network; writes ``gather_rank<r>.pt``.
- ``tp``: unstructured pruning (layer scope) of a tensor-parallel MLP; writes ``tp_rank<r>.pt``.

Every collective has the process group's timeout (:data:`PG_TIMEOUT`); the worker ends like the tests'
``ddp_spawn`` workers (``tests/ddp_support.py``): a barrier with a timeout, the process group destroyed, then
``os._exit(0)`` (no interpreter teardown while gloo threads are joinable).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import (
    CompressionPipeline,
    CompressionReport,
    EarlyStopping,
    ExactResume,
    InterruptCheckpoint,
    KnowledgeDistillation,
    LRScheduling,
    NonFiniteGuard,
    PostTrainingQuantization,
    ProgressivePruning,
    QuantizationAwareTraining,
    WarmStart,
    WeightSharing,
)
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.ddp_support import leave_in_lockstep

#: the timeout of every collective of the process group (a hung peer fails the test, never hangs it)
PG_TIMEOUT = timedelta(seconds=60)
#: samples, features, classes; per-rank batch (the single-process reference uses twice this batch)
SAMPLES, FEATURES, CLASSES, BATCH = 64, 12, 5, 8
#: the pruning ramp of the ``prune`` scenario: optimizer steps 0, 2, 4, 6 (8 steps in 2 epochs)
PRUNING = {"final_sparsity": 0.75, "start": 0, "end": 6, "unit": "step", "frequency": 2, "verbose": False}


def network(hidden: int = 31) -> nn.Module:
    """A small MLP whose output sizes (31, 5) do not split evenly over 2 ranks (uneven FSDP2 shards); the
    tensor-parallel recipe uses ``hidden=32`` (a column-parallel split must be even)."""
    return nn.Sequential(
        nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 16), nn.ReLU(), nn.Linear(16, CLASSES)
    )


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(SAMPLES, FEATURES, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    )


def loader(batch_size: int, ranks: int = 1) -> DataLoader:
    """In order (no shuffle). With ``ranks=2``, this process's half (``LOCAL_RANK``): rank r gets the samples
    r, r+2, ..., so one step of both ranks covers the samples of one single-process step of twice the batch
    (Lightning's own distributed sampler would shuffle the training data: the Trainer is told not to add one)."""
    data = dataset()
    if ranks == 1:
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    rank = int(os.environ["LOCAL_RANK"])
    sampler = DistributedSampler(data, num_replicas=ranks, rank=rank, shuffle=False)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def module(sharding: str | None) -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule(network(), num_classes=CLASSES, optimizer="sgd", lr=0.1, sharding=sharding)


def trainer_kwargs(root: str, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": root,
        "deterministic": True,
    }
    kwargs.update(overrides)
    return kwargs


def fsdp2_trainer(root: str, callbacks: list[pl.Callback], tensor_parallel: bool = False) -> pl.Trainer:
    """2 CPU processes under ModelParallelStrategy: data parallel (FSDP2), or with ``tensor_parallel`` one
    tensor-parallel group of 2 (both ranks see the same batches)."""
    sizes = (
        {"data_parallel_size": 1, "tensor_parallel_size": 2} if tensor_parallel else {"data_parallel_size": 2}
    )
    strategy = ModelParallelStrategy(**{"tensor_parallel_size": 1, **sizes}, timeout=PG_TIMEOUT)
    return pl.Trainer(
        **trainer_kwargs(
            root,
            accelerator="cpu",
            devices=2,
            strategy=strategy,
            callbacks=callbacks,
            use_distributed_sampler=False,
        )
    )


def run_prune(out: Path, scope: str) -> None:
    pl.seed_everything(0)
    pruning = ProgressivePruning(scope=scope, **PRUNING)
    trainer = fsdp2_trainer(str(out / f"prune_{scope}"), [pruning])
    net = module("fsdp2")
    trainer.fit(net, train_dataloaders=loader(BATCH, ranks=2))
    params = dict(net.model.named_parameters())
    shards = {
        n: {
            "sharded": is_sharded(p),
            "local_numel": p.to_local().numel() if is_sharded(p) else p.numel(),
            "local_zeros": int((p.to_local() if is_sharded(p) else p).eq(0).sum()),
        }
        for n, p in params.items()
    }
    weights = {n: full_tensor(p.detach()).cpu() for n, p in params.items()}  # collective: on every rank
    torch.save(
        {
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "weights": weights,
            "shards": shards,
            "history": pruning.history,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
        },
        out / f"prune_{scope}_rank{trainer.global_rank}.pt",
    )


class TensorParallelModule(ClassificationModule):
    """The recipe of tensor parallelism: a ClassificationModule whose ``configure_model`` splits the MLP
    Megatron-style over the tensor-parallel mesh, the first Linear column-wise (its outputs split), the second
    row-wise (its inputs split, the outputs summed over the ranks); the last Linear stays whole on every rank."""

    def configure_model(self) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(
            self.model, self.device_mesh["tensor_parallel"], {"0": ColwiseParallel(), "2": RowwiseParallel()}
        )


def run_tensor_parallel(out: Path) -> None:
    """Unstructured pruning of a tensor-parallel MLP: both ranks see the same batches of twice the per-rank
    batch (so a single process with that batch is the reference)."""
    pl.seed_everything(0)
    pruning = ProgressivePruning(scope="layer", **PRUNING)
    trainer = fsdp2_trainer(str(out / "tp"), [pruning], tensor_parallel=True)
    torch.manual_seed(0)
    net = TensorParallelModule(network(hidden=32), num_classes=CLASSES, optimizer="sgd", lr=0.1)
    trainer.fit(net, train_dataloaders=loader(2 * BATCH))
    params = dict(net.model.named_parameters())
    torch.save(
        {
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},
            "placements": {
                n: [str(x) for x in p.placements] if is_sharded(p) else None for n, p in params.items()
            },
            "global_step": trainer.global_step,
        },
        out / f"tp_rank{trainer.global_rank}.pt",
    )


def refused_settings(out: Path) -> dict[str, pl.Callback]:
    """One setting of every callback (or setting) that refuses sharded parameters."""
    return {
        "ProgressivePruning(blocks)": ProgressivePruning(granularity="blocks", **PRUNING),
        "QuantizationAwareTraining(no example)": QuantizationAwareTraining(start_epoch=1, backend="pt2e"),
        "WeightSharing(size_budget_bytes)": WeightSharing(size_budget_bytes=100_000),
    }


class FirstStep(pl.Callback):
    """Records, at the first training batch, the learning rate and whether the network holds ``expected`` (the
    warm-start weights), gathered from its shards (a collective, on every rank alike)."""

    def __init__(self, expected: dict[str, torch.Tensor]) -> None:
        self.expected = expected
        self.seen: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 0 and not self.seen:
            full = {n: full_tensor(p.detach()).cpu() for n, p in pl_module.model.named_parameters()}
            self.seen = {
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "warm_weights": all(torch.equal(full[n], t) for n, t in self.expected.items()),
            }


def run_callbacks(out: Path) -> None:
    results: dict[str, Any] = {"refused": {}}
    rank = 0
    for name, callback in refused_settings(out).items():
        pl.seed_everything(0)
        trainer = fsdp2_trainer(str(out / "refused"), [callback])
        rank = trainer.global_rank
        try:
            trainer.fit(
                module("fsdp2"),
                train_dataloaders=loader(BATCH, ranks=2),
                val_dataloaders=loader(BATCH, ranks=2),
            )
        except ValueError as err:
            results["refused"][name] = {"message": str(err), "global_step": trainer.global_step}
        else:
            results["refused"][name] = {"message": None, "global_step": trainer.global_step}
    # the callbacks that declare support, in one fit
    warm = network()
    torch.save(warm.state_dict(), out / f"warm_rank{rank}.pt")
    pruning = ProgressivePruning(**PRUNING)
    supported = [
        ExactResume(),
        LRScheduling(warmup=2),
        EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
        NonFiniteGuard(check_weights_every_n_steps=1),
        InterruptCheckpoint(),
        WarmStart(str(out / f"warm_rank{rank}.pt")),
        pruning,
        CompressionPipeline(order=("pruning",), distill=False),
        PostTrainingQuantization(**PTQ),
        small_report(out / "report_supported"),
        KnowledgeDistillation(teacher=network(), teacher_sharding="fsdp2"),
    ]
    first = FirstStep(warm.state_dict())
    pl.seed_everything(0)
    trainer = fsdp2_trainer(str(out / "supported"), [*supported, first])
    net = module("fsdp2")
    trainer.fit(net, train_dataloaders=loader(BATCH, ranks=2), val_dataloaders=loader(BATCH, ranks=2))
    results["supported"] = {
        "global_step": trainer.global_step,
        "names": [type(c).__name__ for c in supported],
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "warm_loaded": supported[5].loaded,
        "pruning_state": pruning.phase_state(trainer),
        "sharded": all(is_sharded(p) for p in net.model.parameters()),
        "non_finite_checks": supported[3].checks,
        "first_step": first.seen,
    }
    # QAT from the first epoch (PTQ cannot follow QAT in one fit): its own fit
    qat = QuantizationAwareTraining(start_epoch=0, backend="eager", latency_batch_sizes=[], verbose=False)
    pl.seed_everything(0)
    trainer = fsdp2_trainer(str(out / "qat"), [qat])
    net = module("fsdp2")
    trainer.fit(net, train_dataloaders=loader(BATCH, ranks=2), val_dataloaders=loader(BATCH, ranks=2))
    int8 = {
        k: v.dequantize() if v.is_quantized else v
        for k, v in qat.quantized_model.state_dict().items()
        if torch.is_tensor(v)
    }
    results["qat"] = {
        "names": ["QuantizationAwareTraining"],
        "global_step": trainer.global_step,
        "converted": qat.converted,
        "int8_sum": float(sum(v.double().sum() for v in int8.values())),
    }
    # weight sharing (from the second epoch): its own fit
    sharing = WeightSharing(bits=3, start_epoch=1, verbose=False, export_path=str(out / "weight_sharing.lws"))
    pl.seed_everything(0)
    trainer = fsdp2_trainer(str(out / "weight_sharing"), [sharing])
    trainer.fit(
        module("fsdp2"), train_dataloaders=loader(BATCH, ranks=2), val_dataloaders=loader(BATCH, ranks=2)
    )
    results["weight_sharing"] = {
        "names": ["WeightSharing"],
        "global_step": trainer.global_step,
        "clustered": sharing.clustered,
    }
    (out / f"callbacks_rank{rank}.json").write_text(json.dumps(results, indent=1))


#: post-training quantization in the ``gather`` scenario (calibrated on each rank's own validation batches)
PTQ = {
    "calibration_split": "val",
    "calibration_batches": 2,
    "report": False,
    "export": False,
    "verbose": False,
    "replace_model": False,
}


def small_report(dirpath: Path) -> CompressionReport:
    """A quick compression report: one latency run at batch 1, no test metrics, no plot."""
    return CompressionReport(
        latency_batch_sizes=(1,),
        latency_repeats=1,
        latency_warmup=0,
        test_metrics=False,
        plot=False,
        verbose=False,
        input_shape=(FEATURES,),
        dirpath=str(dirpath),
    )


def run_gather(out: Path) -> None:
    """Unstructured pruning, then PTQ and the compression report on gathered copies of the sharded network."""
    pl.seed_everything(0)
    pruning = ProgressivePruning(**PRUNING)
    ptq = PostTrainingQuantization(**PTQ)
    report = small_report(out / "report")
    trainer = fsdp2_trainer(str(out / "gather"), [pruning, ptq, report])
    net = module("fsdp2")
    trainer.fit(net, train_dataloaders=loader(BATCH, ranks=2), val_dataloaders=loader(BATCH, ranks=2))
    params = dict(net.model.named_parameters())
    weights = {n: full_tensor(p.detach()).cpu() for n, p in params.items()}  # collective: on every rank
    assert ptq.quantized_model is not None
    int8 = {k: v.detach().clone() for k, v in ptq.quantized_model.state_dict().items() if torch.is_tensor(v)}
    rows = [
        {
            k: r.get(k)
            for k in ("stage", "parameters", "nonzero", "weight_sparsity", "state_dict_bytes", "precision")
        }
        for r in report.rows
    ]
    torch.save(
        {
            "weights": weights,
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "int8": int8,
            "rows": rows,
            "history_sparsity": [h["weight_sparsity"] for h in report.history],
            "sharded": all(is_sharded(p) for p in params.values()),
            "report_files": sorted(report.paths) if trainer.is_global_zero else None,
        },
        out / f"gather_rank{trainer.global_rank}.pt",
    )


#: the scenarios of the worker, by the name the command line gives
SCENARIOS: dict[str, Callable[[Path], None]] = {
    "prune:layer": lambda out: run_prune(out, "layer"),
    "prune:global": lambda out: run_prune(out, "global"),
    "callbacks": run_callbacks,
    "gather": run_gather,
    "tp": run_tensor_parallel,
}


def run_scenarios(scenarios: dict[str, Callable[[Path], None]], argv: list[str]) -> None:
    """Run the scenarios named by ``argv`` (``OUT_DIR SCENARIO [SCENARIO ...]``) in turn, a barrier after each (the
    next starts once every rank has written the last one's files), then :func:`leave_in_lockstep`. An unknown name
    is refused before any of them runs (on every rank alike)."""
    out, names = Path(argv[0]), argv[1:]
    unknown = [n for n in names if n not in scenarios]
    if not names or unknown:
        raise SystemExit(f"Unknown scenarios {unknown}, or none given; allowed: {list(scenarios)}")
    for name in names:
        scenarios[name](out)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    leave_in_lockstep()


if __name__ == "__main__":
    run_scenarios(SCENARIOS, sys.argv[1:])
