"""Worker of ``tests/callbacks/test_fsdp2_models.py``: models we did not write, sharded with FSDP2 on 2 CPU processes.

Usage: python -m tests.callbacks.fsdp2_models_worker OUT_DIR MODEL [MODEL ...] (started by the test through
:func:`tests.launch.run_ranks`, with torchrun's environment variables).

For each model of :data:`MODELS` (a residual CNN: torchvision's ResNet-18; a depthwise/SE net: MobileNetV3-small;
a transformer block: Hugging Face transformers' ``BertLayer`` under a linear head), all with random weights:
a fit under ``ModelParallelStrategy`` with ``ClassificationModule(sharding="fsdp2")`` (each direct child with
parameters one FSDP2 unit), with unstructured ProgressivePruning (masks shard-wise), PostTrainingQuantization
(PT2E, on a gathered copy) and, for the BertLayer, the compression report. Writes ``<model>_rank<r>.pt``: whether every
parameter was a DTensor at the first step, the gathered masks and weights, the int8 model's tensors and the
report's rows. With ``MODEL:groups``: channel-group pruning of that model, compacted at the end (:func:`run_groups`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_optim import ClassificationModule
from lightning_optim.callbacks import CompressionReport, PostTrainingQuantization, ProgressivePruning
from lightning_optim.functional.pruning.masks import full_tensor, is_sharded
from tests.callbacks.fsdp2_worker import PRUNING, PTQ, fsdp2_trainer, run_scenarios
from tests.nets import tiny_bert_config

#: classes, samples (both ranks), per-rank batch: 4 steps per epoch, 8 in the fit (the pruning ramp's steps 0-6)
CLASSES, SAMPLES, BATCH = 5, 32, 4


class BertLayerClassifier(nn.Module):
    """One transformers ``BertLayer`` of the tests' small BERT configuration (``tests.nets.tiny_bert_config``,
    hidden 32, no dropout: self-attention with separate q/k/v Linears, feed-forward, LayerNorms) on
    ``(batch, tokens, 32)`` inputs, mean-pooled into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLayer

        config = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.layer = BertLayer(config)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out.mean(dim=1))


#: model name -> (builder, input shape without the batch)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=CLASSES), (3, 32, 32)),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=CLASSES),
        (3, 32, 32),
    ),
    "bert_layer": (BertLayerClassifier, (8, 32)),
}


def loader(shape: tuple[int, ...]) -> DataLoader:
    """This rank's half of a fixed random dataset, in order."""
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(SAMPLES, *shape, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    )
    sampler = DistributedSampler(data, num_replicas=2, rank=int(os.environ["LOCAL_RANK"]), shuffle=False)
    return DataLoader(data, batch_size=BATCH, sampler=sampler)


class ShardedAtFirstStep(pl.Callback):
    """Whether every parameter of the network is a DTensor at the first training batch."""

    def __init__(self) -> None:
        self.sharded: bool | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.sharded is None:
            self.sharded = all(is_sharded(p) for p in pl_module.model.parameters())


def run_model(out: Path, name: str) -> None:
    build, shape = MODELS[name]
    pl.seed_everything(0)
    pruning = ProgressivePruning(**PRUNING)
    ptq = PostTrainingQuantization(**PTQ)
    probe = ShardedAtFirstStep()
    callbacks: list[pl.Callback] = [pruning, ptq, probe]
    report = None
    if name == "bert_layer":  # (on ResNet-18 the int8 row's timing compiles its int8 kernels: ~70 s)
        report = CompressionReport(
            latency_batch_sizes=(1,),
            latency_repeats=1,
            latency_warmup=0,
            test_metrics=False,
            plot=False,
            save_artifact=False,  # the artifact is tested on its own
            verbose=False,
            input_shape=shape,
            dirpath=str(out / f"{name}_report"),
        )
        callbacks.append(report)
    trainer = fsdp2_trainer(str(out / name), callbacks)
    torch.manual_seed(0)
    net = ClassificationModule(build(), num_classes=CLASSES, optimizer="sgd", lr=0.05, sharding="fsdp2")
    trainer.fit(net, train_dataloaders=loader(shape), val_dataloaders=loader(shape))
    params = dict(net.model.named_parameters())
    int8 = None
    if ptq.quantized_model is not None:
        int8 = {
            k: (v.dequantize() if v.is_quantized else v).detach().clone()
            for k, v in ptq.quantized_model.state_dict().items()
            if torch.is_tensor(v)
        }
    torch.save(
        {
            "sharded": probe.sharded,
            "global_step": trainer.global_step,
            "masks": {n: full_tensor(m).cpu() for n, m in pruning.masks.items()},
            "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},  # collectives
            "buffers": {n: b.detach().clone().cpu() for n, b in net.model.named_buffers()},
            "int8": int8,
            "rows": None
            if report is None
            else [{k: r.get(k) for k in ("stage", "parameters", "weight_sparsity")} for r in report.rows],
        },
        out / f"{name}_rank{trainer.global_rank}.pt",
    )


def run_groups(out: Path, name: str) -> None:
    """Channel-group pruning to half the channels, compacted at the end on a gathered copy and sharded again;
    writes ``<model>_groups_rank<r>.pt``: the sizes before and after, the compacted network's weights (gathered), its
    output on a fixed input, whether it is sharded, and what compaction removed."""
    build, shape = MODELS[name]
    pl.seed_everything(0)
    pruning = ProgressivePruning(
        **{**PRUNING, "final_sparsity": 0.5}, granularity="channel_groups", compact_at_end=True
    )
    trainer = fsdp2_trainer(str(out / f"{name}_groups"), [pruning])
    torch.manual_seed(0)
    net = ClassificationModule(build(), num_classes=CLASSES, optimizer="sgd", lr=0.05, sharding="fsdp2")
    before = sum(p.numel() for p in net.model.parameters())
    trainer.fit(net, train_dataloaders=loader(shape))
    params = dict(net.model.named_parameters())
    net.eval()
    with torch.no_grad():
        output = net.model(torch.randn(2, *shape, generator=torch.Generator().manual_seed(5)))
    _, requested, removed, _ = pruning.compaction_summary()
    torch.save(
        {
            "before": before,
            "weights": {n: full_tensor(p.detach()).cpu() for n, p in params.items()},  # collectives
            "sharded": bool(params) and all(is_sharded(p) for p in params.values()),
            "compacted": pruning.compacted,
            "output": full_tensor(output).cpu(),
            "requested": requested,
            "removed": removed,
        },
        out / f"{name}_groups_rank{trainer.global_rank}.pt",
    )


SCENARIOS: dict[str, Callable[[Path], None]] = {
    **{name: (lambda out, name=name: run_model(out, name)) for name in MODELS},
    **{f"{name}:groups": (lambda out, name=name: run_groups(out, name)) for name in MODELS},
}


if __name__ == "__main__":
    run_scenarios(SCENARIOS, sys.argv[1:])
