"""Worker of ``tests/callbacks/test_fsdp2_qat_late.py``: QAT that starts after the first epoch under FSDP2
(``ModelParallelStrategy`` + ``ClassificationModule(sharding="fsdp2")``), one of 2 processes on CPU (gloo), started
by the test through :func:`tests.launch.run_ranks` with torchrun's environment variables.

Usage: python -m tests.callbacks.fsdp2_qat_worker OUT_DIR SCENARIO [SCENARIO ...]

The scenarios run in turn, in one process group (:data:`SCENARIOS`):

- ``late``: a conv-bn network (:func:`network`) fitted 2 epochs with ``QuantizationAwareTraining(start_epoch=1,
  freeze_bn_epoch=1)`` (PT2E), a sharded checkpoint after each epoch; then fitted again from the first epoch's
  checkpoint (QAT not started in it). :class:`Probe` records the fake-quantization switches at each epoch's first
  batch, and at the first batch of epoch 0 the outputs of a gathered copy of the prepared network against the
  float network with the same weights; writes ``late_rank<r>.pt``;
- ``float``: the same network and data with unstructured ProgressivePruning (:data:`PRUNING`) and no QAT, 1 epoch:
  the masks and weights the float epoch 0 of ``after_pruning`` must give; writes ``float_rank<r>.pt``;
- ``after_pruning``: that pruning, done at epoch 1, then QAT with ``start_after="pruning"`` and its ranges frozen
  one epoch after the start, 3 epochs; then fitted again from the sharded checkpoint of epoch 1 (mid-QAT); writes
  ``after_pruning_rank<r>.pt``.

All fits validate each epoch: ``ClassificationModule(sharding="fsdp2")`` broadcasts rank 0's buffers (batch-norm
statistics, observer ranges) before each evaluation, so the checkpoint saved after it holds what every rank holds.

Every collective has the process group's timeout (:data:`PG_TIMEOUT`); the worker ends with
:func:`tests.ddp_support.leave_in_lockstep` (through :func:`tests.callbacks.fsdp2_worker.run_scenarios`).
"""

from __future__ import annotations

import copy
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
from lightning_optim.callbacks import ProgressivePruning, QuantizationAwareTraining
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from lightning_optim.functional.sharding import gathered_copy, matching_skeleton
from lightning_optim.models import ConvNet3
from tests.callbacks.fsdp2_worker import run_scenarios

#: the timeout of every collective of the process group (a hung peer fails the test, never hangs it)
PG_TIMEOUT = timedelta(seconds=90)
#: samples, image side, classes; per-rank batch (4 steps per epoch on each rank)
SAMPLES, SIDE, CLASSES, BATCH = 64, 8, 5, 8
#: the QAT settings of every scenario: no export, report, timing or dry run (the int8 model is compared as tensors)
QUIET = {
    "latency_batch_sizes": [],
    "verbose": False,
    "export": False,
    "report": False,
    "replace_model": False,
    "dry_run": False,
}
#: the stack of the scenarios (the eager one runs in the FSDP2 matrix)
QAT = {"backend": "pt2e", **QUIET}
#: unstructured pruning done at the start of epoch 1 (optimizer steps 0 and 2 of the 4 of epoch 0)
PRUNING = {"final_sparsity": 0.5, "start": 0, "end": 2, "unit": "step", "frequency": 2, "verbose": False}
#: the prefix of the prepared (PT2E) network's parameter names
PREFIX = "pt2e_graph."


def network() -> nn.Module:
    """A small conv-bn-relu network (the zoo's 3-block CNN on 8x8 single-channel images)."""
    return ConvNet3(image_size=SIDE, channels=(4, 8, 8), hidden=16, num_classes=CLASSES)


def module() -> ClassificationModule:
    torch.manual_seed(0)
    net = ClassificationModule(network(), num_classes=CLASSES, optimizer="sgd", lr=0.1, sharding="fsdp2")
    net.example_input_array = torch.zeros(
        2, 1, SIDE, SIDE
    )  # the PT2E capture at setup (loaders given to fit)
    return net


def loader() -> DataLoader:
    """This rank's half of a fixed dataset, in order (rank r: samples r, r+2, ...)."""
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(SAMPLES, 1, SIDE, SIDE, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    )
    sampler = DistributedSampler(data, num_replicas=2, rank=int(os.environ["LOCAL_RANK"]), shuffle=False)
    return DataLoader(data, batch_size=BATCH, sampler=sampler)


def probe_input() -> torch.Tensor:
    return torch.randn(6, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(7))


def trainer(root: Path, callbacks: list[pl.Callback], max_epochs: int = 2) -> pl.Trainer:
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=PG_TIMEOUT)
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        callbacks=callbacks,
        use_distributed_sampler=False,
        max_epochs=max_epochs,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        deterministic=True,
    )


def checkpoints(root: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, filename="{epoch}")


def gathered(network: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``network`` whole (a collective for each sharded one), the prefix of a
    prepared network's names taken off."""
    out = {}
    for name, value in network.state_dict().items():
        if isinstance(value, torch.Tensor):
            value = full_tensor(value.detach()) if is_sharded(value) else value.detach()
            out[name.removeprefix(PREFIX)] = value.cpu().clone()
    return out


def flags(network: nn.Module) -> dict[str, list[int]]:
    """The fake-quantization and observation switches (buffers) of a prepared network."""
    out: dict[str, list[int]] = {"fake_quant_enabled": [], "observer_enabled": []}
    for name, buffer in network.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in out:
            out[leaf].append(int(buffer.reshape(-1)[0]))
    return out


class Probe(pl.Callback):
    """What the network computes and whether it fake-quantizes: the switches at each epoch's first batch; at the
    first batch of epoch 0, a gathered copy of the prepared network against the float network with the same
    weights on :func:`probe_input` (eval and train mode; the largest absolute difference); the weights at the
    end of epoch 0."""

    def __init__(self) -> None:
        self.flags: dict[int, dict[str, list[int]]] = {}
        self.float_diff: dict[str, float] = {}
        self.epoch0_weights: dict[str, torch.Tensor] = {}
        self.prepared_at_start: bool | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx != 0:
            return
        net = pl_module.model
        self.flags[trainer.current_epoch] = flags(net)
        if trainer.current_epoch != 0 or self.float_diff:
            return
        self.prepared_at_start = hasattr(net, "parameter_prefix")
        plain = gathered_copy(net, matching_skeleton(net, pl_module.unsharded_skeleton))
        reference = network()
        state = {k.removeprefix(PREFIX): v for k, v in plain.state_dict().items()}
        reference.load_state_dict({k: state[k] for k in reference.state_dict()})
        x = probe_input()
        with torch.no_grad():
            for mode in ("eval", "train"):
                got, want = copy.deepcopy(plain), copy.deepcopy(reference)
                got.train(mode == "train")
                want.train(mode == "train")
                self.float_diff[mode] = float((got(x) - want(x)).abs().max())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 0:
            self.epoch0_weights = {
                k: v for k, v in gathered(pl_module.model).items() if "activation_post_process" not in k
            }


def int8_state(qat: QuantizationAwareTraining) -> dict[str, torch.Tensor]:
    assert qat.quantized_model is not None
    return {
        k: (v.dequantize() if v.is_quantized else v).detach().clone()
        for k, v in qat.quantized_model.state_dict().items()
        if torch.is_tensor(v)
    }


def _fit_late(root: Path, ckpt_path: str | None) -> dict[str, Any]:
    pl.seed_everything(0)
    qat = QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=1, **QAT)
    probe = Probe()
    tr = trainer(root, [qat, probe, checkpoints(root / ("ckpt_resumed" if ckpt_path else "ckpt"))])
    net = module()
    tr.fit(net, train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)
    return {
        "global_step": tr.global_step,
        "callback": qat.state_dict(),
        "weights": gathered(net.model),
        "int8": int8_state(qat),
        "flags": probe.flags,
        "float_diff": probe.float_diff,
        "epoch0_weights": probe.epoch0_weights,
        "prepared_at_start": probe.prepared_at_start,
        "sharded": all(is_sharded(p) for p in net.model.parameters()),
    }


def run_late(out: Path) -> None:
    full = _fit_late(out / "late", None)
    mid = out / "late" / "ckpt" / "epoch=0.ckpt"
    resumed = _fit_late(out / "late", str(mid))
    rank = torch.distributed.get_rank()
    torch.save(
        {"full": full, "resumed": resumed, "checkpoint_is_directory": mid.is_dir()},
        out / f"late_rank{rank}.pt",
    )


def run_float(out: Path) -> None:
    """The pruning of ``after_pruning`` without QAT, for its first epoch: the masks and weights that its float
    epoch 0 must give."""
    pl.seed_everything(0)
    pruning = ProgressivePruning(**PRUNING)
    tr = trainer(out / "float", [pruning], max_epochs=1)
    net = module()
    tr.fit(net, train_dataloaders=loader(), val_dataloaders=loader())
    torch.save(
        {
            "weights": gathered(net.model),
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
        },
        out / f"float_rank{tr.global_rank}.pt",
    )


def _fit_after_pruning(root: Path, ckpt_path: str | None) -> dict[str, Any]:
    pl.seed_everything(0)
    pruning = ProgressivePruning(**PRUNING)
    qat = QuantizationAwareTraining(start_after="pruning", freeze_observers_epoch=1, **QAT)
    probe = Probe()
    callbacks = [pruning, qat, probe, checkpoints(root / ("ckpt_resumed" if ckpt_path else "ckpt"))]
    tr = trainer(root, callbacks, max_epochs=3)
    net = module()
    tr.fit(net, train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)
    return {
        "global_step": tr.global_step,
        "callback": qat.state_dict(),
        "pruning_state": pruning.phase_state(tr),
        # the layers ProgressivePruning selected at its setup hold the sharded parameters the network trains
        "pruning_reads_sharded": [is_sharded(m.weight) for m in pruning._modules.values()],
        "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
        "weights": gathered(net.model),
        "int8": int8_state(qat),
        "flags": probe.flags,
        "epoch0_weights": probe.epoch0_weights,
    }


def run_after_pruning(out: Path) -> None:
    """Pruning done at epoch 1, QAT from then on (``start_after``), its ranges frozen one epoch later; then the
    same fit resumed mid-QAT from the sharded checkpoint of epoch 1."""
    full = _fit_after_pruning(out / "after_pruning", None)
    mid = out / "after_pruning" / "ckpt" / "epoch=1.ckpt"
    resumed = _fit_after_pruning(out / "after_pruning", str(mid))
    rank = torch.distributed.get_rank()
    torch.save({"full": full, "resumed": resumed}, out / f"after_pruning_rank{rank}.pt")


#: the scenarios of the worker, by the name the command line gives
SCENARIOS: dict[str, Callable[[Path], None]] = {
    "late": run_late,
    "float": run_float,
    "after_pruning": run_after_pruning,
}


if __name__ == "__main__":
    run_scenarios(SCENARIOS, sys.argv[1:])
