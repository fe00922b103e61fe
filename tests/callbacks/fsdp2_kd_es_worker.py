"""Worker of the FSDP2 distillation and early-stopping tests (``tests/callbacks/test_fsdp2_kd_es.py``): one of 2
processes on CPU (gloo), started by the test through :func:`tests.launch.run_ranks` with torchrun's environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ...), so Lightning starts
no process of its own.

Usage: python -m tests.callbacks.fsdp2_kd_es_worker OUT_DIR SCENARIO [SCENARIO ...]  (scenarios in turn: ``kd``,
``es``)

The student is :func:`tests.callbacks.fsdp2_worker.network` sharded with ``ClassificationModule(sharding="fsdp2")``
under ``ModelParallelStrategy``; rank r reads the samples r, r+2, ... in order (:func:`fsdp2_worker.loader`), so
one step of both ranks at batch B covers one single-process step at batch 2B.

- ``kd``: three fits with :class:`KnowledgeDistillation`, in turn (:data:`KD_RUNS`): ``replicate`` (logits KD,
  ``teacher_sharding`` left at its default: the teacher whole on every rank), ``features`` (a teacher sharded
  with FSDP2 and one feature pair with a learned adapter) and ``cache`` (a sharded teacher with the logit cache,
  whose size differs by rank so that in the second epoch one rank has every logit cached while the other still
  needs the teacher: the ranks must run its forward together). Rank 1's teacher and adapters are shifted after they
  are built (:class:`SkewRank1`): every rank must start from rank 0's. Each fit saves a sharded checkpoint
  (``OUT/<run>_ckpt/last.ckpt``, a folder). Writes ``kd_rank<r>.pt``: per run, the gathered student weights, the
  teacher weights before and after (gathered), whether the teacher was sharded, the adapters, the cache hits and
  the checkpoint's path.
- ``es``: three fits with ``EarlyStopping(restore_best_weights=True)`` on a scripted metric (:data:`SCORES`: best
  at epoch 1, worse after, a stop at epoch 3): ``memory`` (each rank's shards in memory), ``checkpoint`` (the
  best sharded checkpoint, a folder) and ``checkpoint_file`` (the best checkpoint as one file); after the
  ``memory`` fit, whole best weights (as a checkpoint of an unsharded run holds them: epoch 0's) are restored into
  the shards (``whole``); then the ``memory`` source across a resume (``memory_resumed``: a fit to epoch 1 whose
  last sharded checkpoint a second fit resumes). Writes ``es_rank<r>.pt``: the gathered weights at every check, the restored ones, the
  restored epoch, the callback's state and the checkpoints' paths.

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
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_optim.callbacks import EarlyStopping, KnowledgeDistillation
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks import fsdp2_worker as base

#: the distillation settings of every run (the single-process references use the same)
KD = {"temperature": 2.0, "alpha": 0.7}
#: the feature pair of the ``features`` run: student layer "0" (31 outputs) to teacher layer "0" (21 outputs)
FEATURE_PAIRS = {"0": "0"}
#: the runs of the ``kd`` scenario and their extra settings
KD_RUNS: dict[str, dict[str, Any]] = {
    "replicate": {},
    "features": {
        "teacher_sharding": "fsdp2",
        "feature_pairs": FEATURE_PAIRS,
        "feature_weight": 0.5,
        "input_shape": (base.FEATURES,),
    },
    "cache": {"teacher_sharding": "fsdp2", "cache_teacher_logits": True},
}
#: the scripted metric of the ``es`` scenario, one value per epoch (mode "min"): best at epoch 1
SCORES = (3.0, 1.0, 2.0, 4.0, 5.0, 6.0)
BEST_EPOCH, STOP_EPOCH = 1, 3
ES = {"monitor": "score", "mode": "min", "patience": 2, "restore_best_weights": True}
#: the fits of the ``es`` scenario and their ``best_weights_source``: ``checkpoint`` reads a sharded checkpoint
#: (a folder), ``checkpoint_file`` a single file (``save_distributed_checkpoint=False``)
ES_RUNS = {"memory": "memory", "checkpoint": "checkpoint", "checkpoint_file": "checkpoint"}


def teacher() -> nn.Module:
    """The teacher: wider than the student in its first layer (21 outputs, an uneven split over 2 ranks)."""
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Linear(base.FEATURES, 21), nn.ReLU(), nn.Linear(21, 16), nn.ReLU(), nn.Linear(16, base.CLASSES)
    )


def distillation(run: str, **overrides: Any) -> KnowledgeDistillation:
    return KnowledgeDistillation(teacher(), **{**KD, **KD_RUNS[run], **overrides})


def indexed_loader(batch_size: int, ranks: int = 1) -> DataLoader:
    """As :func:`fsdp2_worker.loader`, with each sample's index as a third element (for the logit cache)."""
    x, y = base.dataset().tensors
    data = TensorDataset(x, y, torch.arange(len(x)))
    if ranks == 1:
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    sampler = DistributedSampler(data, num_replicas=ranks, rank=int(os.environ["LOCAL_RANK"]), shuffle=False)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def gathered(module: nn.Module) -> dict[str, Tensor]:
    """The whole parameters of ``module`` (a collective when sharded: every rank calls it, in the same order)."""
    return {n: full_tensor(p.detach()).cpu().clone() for n, p in module.named_parameters()}


def sharded_trainer(
    root: Path, callbacks: list[pl.Callback], distributed_checkpoint: bool = True, **overrides: Any
) -> pl.Trainer:
    """:func:`fsdp2_worker.fsdp2_trainer` with checkpointing on (the callbacks bring their ModelCheckpoint);
    ``distributed_checkpoint=False``: checkpoints are single files (``save_distributed_checkpoint=False``)."""
    strategy = ModelParallelStrategy(
        data_parallel_size=2,
        tensor_parallel_size=1,
        save_distributed_checkpoint=distributed_checkpoint,
        timeout=base.PG_TIMEOUT,
    )
    kwargs = base.trainer_kwargs(
        str(root),
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        callbacks=callbacks,
        use_distributed_sampler=False,
        enable_checkpointing=True,
        **overrides,
    )
    return pl.Trainer(**kwargs)


class SkewRank1(pl.Callback):
    """Shifts rank 1's teacher and feature adapters after the distillation callback's setup (the adapters are
    built there), as if the ranks had built them differently: distillation must start every rank from rank 0's."""

    def __init__(self, kd: KnowledgeDistillation) -> None:
        self.kd = kd

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if trainer.global_rank == 1:
            with torch.no_grad():
                for p in [*self.kd.teacher.parameters(), *self.kd.adapters.parameters()]:
                    p.add_(1.0)


def run_kd(out: Path) -> None:
    rank = int(os.environ["LOCAL_RANK"])
    results: dict[str, Any] = {}
    for run in KD_RUNS:
        overrides: dict[str, Any] = {}
        if run == "cache":
            # rank 0 caches every one of its 32 samples, rank 1 only 16 (5 classes x 4 bytes a row): in the second
            # epoch rank 0 needs no teacher for its last two batches while rank 1 does
            rows = 32 if rank == 0 else 16
            overrides["cache_max_mb"] = rows * base.CLASSES * 4 / 2**20
        kd = distillation(run, **overrides)
        before = gathered(kd.teacher.module)
        checkpoint = ModelCheckpoint(dirpath=str(out / f"{run}_ckpt"), save_last=True, save_top_k=0)
        pl.seed_everything(0)
        trainer = sharded_trainer(out / "kd" / run, [kd, SkewRank1(kd), checkpoint])
        net = base.module("fsdp2")
        loader = indexed_loader(base.BATCH, ranks=2) if run == "cache" else base.loader(base.BATCH, ranks=2)
        trainer.fit(net, train_dataloaders=loader)
        results[run] = {
            "global_step": trainer.global_step,
            "student": gathered(net.model),
            "student_sharded": all(is_sharded(p) for p in net.model.parameters()),
            "teacher_before": before,
            "teacher_after": gathered(kd.teacher.module),
            "teacher_sharded": kd.teacher.is_sharded(),
            "teacher_local_numel": sum(
                (p.to_local() if is_sharded(p) else p).numel() for p in kd.teacher.module.parameters()
            ),
            "teacher_mode": kd._teacher_mode,
            "adapters": {k: v.detach().cpu().clone() for k, v in kd.adapters.state_dict().items()},
            "adapter_optimizer": kd._adapter_optimizer is not None,
            "teacher_calls": kd.stats["teacher_calls"],
            "cache_hits": kd.stats["cache_hit_samples"],
            "checkpoint": checkpoint.last_model_path,
        }
    torch.save(results, out / f"kd_rank{rank}.pt")


class ScriptedScore(pl.Callback):
    """Logs ``score`` from :data:`SCORES` at each validation epoch end, and records the gathered weights of the
    network there (a collective, on every rank alike): the weights early stopping sees at that check."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, Tensor]] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        pl_module.log("score", SCORES[min(epoch, len(SCORES) - 1)], on_epoch=True, sync_dist=True)
        self.weights[epoch] = gathered(pl_module.model)


def es_callbacks(source: str, dirpath: Path) -> tuple[EarlyStopping, ScriptedScore, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(dirpath=str(dirpath), monitor="score", mode="min", save_top_k=1)
    return EarlyStopping(**ES, best_weights_source=source), ScriptedScore(), checkpoint


def run_es(out: Path) -> None:
    rank = int(os.environ["LOCAL_RANK"])
    results: dict[str, Any] = {}
    for run, source in ES_RUNS.items():
        es, score, checkpoint = es_callbacks(source, out / f"es_{run}_ckpt")
        pl.seed_everything(0)
        trainer = sharded_trainer(
            out / "es" / run,
            [score, es, checkpoint],
            distributed_checkpoint=run != "checkpoint_file",
            max_epochs=len(SCORES),
        )
        net = base.module("fsdp2")
        trainer.fit(
            net,
            train_dataloaders=base.loader(base.BATCH, ranks=2),
            val_dataloaders=base.loader(base.BATCH, ranks=2),
        )
        state = es.state_dict()
        results[run] = {
            "checks": score.weights,
            "restored": gathered(net.model),
            "restored_epoch": es.restored_epoch,
            "stopped_epoch": es.stopped_epoch,
            "best_epoch": es.best_epoch,
            "sharded": all(is_sharded(p) for p in net.model.parameters()),
            "state_best_weights": state.get("best_weights"),
            "state_per_rank": state.get("best_weights_per_rank"),
            "best_checkpoint": checkpoint.best_model_path,
        }
        if run == "memory":  # whole best weights (as a checkpoint of an unsharded run holds) into the shards
            whole = EarlyStopping(**ES)
            whole.setup(trainer, net, "fit")
            whole.best_epoch = 0
            whole.best_weights = {f"model.{n}": t for n, t in score.weights[0].items()}
            whole._run_restore_best_weights(trainer, net)
            results["whole"] = {"restored": gathered(net.model), "restored_epoch": whole.restored_epoch}
    results["memory_resumed"] = run_es_resumed(out)
    torch.save(results, out / f"es_rank{rank}.pt")


def run_es_resumed(out: Path) -> dict[str, Any]:
    """``best_weights_source="memory"`` across a resume: a fit stopped after the best check (epoch 1) saves its last
    sharded checkpoint; a new fit resumes from it and stops at epoch 3, restoring epoch 1's weights, which only the
    checkpoint holds (gathered whole into the callback state when it was saved)."""
    folder = out / "es_resume_ckpt"
    for max_epochs, ckpt_path in ((BEST_EPOCH + 1, None), (len(SCORES), folder / "last.ckpt")):
        es, score, _ = es_callbacks("memory", folder)
        checkpoint = ModelCheckpoint(dirpath=str(folder), save_last=True, save_top_k=0)
        pl.seed_everything(0)
        trainer = sharded_trainer(out / "es" / "resume", [score, es, checkpoint], max_epochs=max_epochs)
        net = base.module("fsdp2")
        trainer.fit(
            net,
            train_dataloaders=base.loader(base.BATCH, ranks=2),
            val_dataloaders=base.loader(base.BATCH, ranks=2),
            ckpt_path=ckpt_path,
        )
    meta = torch.load(folder / "last.ckpt" / "meta.pt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in meta["callbacks"].items() if k.startswith("EarlyStopping")]
    return {
        "restored": gathered(net.model),
        "restored_epoch": es.restored_epoch,
        "stopped_epoch": es.stopped_epoch,
        "checks": score.weights,
        "saved_best_epoch": state["best_epoch"],
        "saved_best_weights": state["best_weights"],
    }


#: the scenarios of the worker, by the name the command line gives
SCENARIOS: dict[str, Callable[[Path], None]] = {"kd": run_kd, "es": run_es}


if __name__ == "__main__":
    base.run_scenarios(SCENARIOS, sys.argv[1:])
