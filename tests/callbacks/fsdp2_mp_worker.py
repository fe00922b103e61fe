"""Worker of ``tests/callbacks/test_fsdp2_mixed_precision.py``: FSDP2's own mixed precision
(``ClassificationModule(sharding="fsdp2", sharding_param_dtype="bfloat16")``: ``MixedPrecisionPolicy``, the
parameters gathered in bfloat16 for the forward and backward, the shards and the optimizer in float32) with the
callbacks, one of 2 processes on CPU (gloo) forked by :func:`tests.launch.run_ranks`.

Usage: python -m tests.callbacks.fsdp2_mp_worker OUT_DIR SCENARIO [SCENARIO ...]

Scenarios (:data:`SCENARIOS`), each a 2-epoch fit of the MLP of ``tests/callbacks/fsdp2_worker.py``, writing
``<scenario>_rank<r>.pt``:

- ``prune_ptq``: unstructured ProgressivePruning (a ramp over the first epoch), PostTrainingQuantization on a
  gathered copy, KnowledgeDistillation from a float32 teacher (replicated), EarlyStopping restoring the best
  weights and LRScheduling;

QuantizationAwareTraining is refused with ``sharding_param_dtype`` (its fake quantizers need float32 weights): tested
at setup in the test file.

Each records the dtype of the first layer's weight and input seen inside the forward (the gathered parameters), the
dtypes of the shards and of the optimizer state, the gathered masks and weights and the int8 model's tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import (
    EarlyStopping,
    KnowledgeDistillation,
    LRScheduling,
    PostTrainingQuantization,
    ProgressivePruning,
)
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks import fsdp2_worker as base


class SeenDtypes(pl.Callback):
    """At the first training batch: a forward pre-hook on the network's first layer records the dtype of its first
    parameter and of its input as the forward sees them (FSDP2 has gathered the parameters by then)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self._handle: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if not self.seen:  # after FSDP2's own pre-forward hook: the parameters are gathered
                weight = next(module.parameters())
                self.seen = {"weight": str(weight.dtype), "input": str(args[0].dtype)}

        # the first Linear (its own FSDP2 unit, gathered by its own pre-forward hook); a PT2E capture, which has no
        # Linear modules left and is one unit, at the network itself
        first = next(
            (m for m in pl_module.model.modules() if isinstance(m, torch.nn.Linear)), pl_module.model
        )
        self._handle = first.register_forward_pre_hook(hook)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._handle.remove()


def module() -> ClassificationModule:
    torch.manual_seed(0)
    net = ClassificationModule(
        base.network(),
        num_classes=base.CLASSES,
        optimizer="adam",
        lr=0.01,
        sharding="fsdp2",
        sharding_param_dtype="bfloat16",
    )
    net.example_input_array = torch.zeros(2, base.FEATURES)  # PT2E QAT captures the network at setup
    return net


def int8_tensors(model: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
    if model is None:
        return None
    return {
        k: (v.dequantize() if v.is_quantized else v).detach().clone()
        for k, v in model.state_dict().items()
        if torch.is_tensor(v)
    }


def run(out: Path, scenario: str) -> None:
    pl.seed_everything(0)
    seen = SeenDtypes()
    # (QAT is refused with sharding_param_dtype: tested at setup in the test file)
    pruning = ProgressivePruning(**base.PRUNING)
    quantizer = PostTrainingQuantization(**base.PTQ)
    callbacks: list[pl.Callback] = [
        pruning,
        quantizer,
        seen,
        KnowledgeDistillation(teacher=base.network()),  # a float32 teacher, replicated
        EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
        LRScheduling(warmup=2),
    ]
    trainer = base.fsdp2_trainer(str(out / scenario), callbacks)
    net = module()
    loader = base.loader(base.BATCH, ranks=2)
    trainer.fit(net, train_dataloaders=loader, val_dataloaders=base.loader(base.BATCH, ranks=2))
    params = dict(net.model.named_parameters())
    state = trainer.optimizers[0].state
    torch.save(
        {
            "seen": seen.seen,
            "shard_dtypes": sorted({str(p.dtype) for p in params.values()}),
            "sharded": all(is_sharded(p) for p in params.values()),
            "optimizer_dtypes": sorted(
                {str(v.dtype) for s in state.values() for v in s.values() if v.dim() > 0}
            ),
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},  # collectives
            "int8": int8_tensors(quantizer.quantized_model),
            "global_step": trainer.global_step,
        },
        out / f"{scenario}_rank{trainer.global_rank}.pt",
    )


SCENARIOS = {name: (lambda out, name=name: run(out, name)) for name in ("prune_ptq",)}


if __name__ == "__main__":
    base.run_scenarios(SCENARIOS, sys.argv[1:])
