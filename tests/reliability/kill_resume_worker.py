"""Worker of the kill-and-resume test: a pruning + QAT + distillation recipe on the embedded digits.

Usage: python tests/reliability/kill_resume_worker.py OUT_DIR [--resume]
Prints ``STEP <global_step>`` after every training batch (flushed) so the parent can kill it at a chosen
point; checkpoints every 2 steps (``last.ckpt``); at the end writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_optim.callbacks import KnowledgeDistillation, ProgressivePruning, QuantizationAwareTraining
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.measure import (
    count_nonzero,
    count_parameters,
    quantized_weights,
)
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule


class PrintStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(f"STEP {trainer.global_step}", flush=True)


def main() -> None:
    out = Path(sys.argv[1])
    resume = "--resume" in sys.argv
    pl.seed_everything(0, workers=True)
    teacher = ConvNet3(image_size=8, channels=(16, 32, 64), hidden=64)
    module = ClassificationModule(
        ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32), optimizer="adam", lr=5e-3
    )
    pruning = ProgressivePruning(final_sparsity=0.5, start=0, end=2, unit="epoch", verbose=False)
    qat = QuantizationAwareTraining(
        start_after="pruning", latency_batch_sizes=(), verbose=False, export_path=str(out / "int8.pt")
    )
    kd = KnowledgeDistillation(teacher=teacher, temperature=4.0, alpha=0.5)
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=2, save_top_k=0)
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        max_epochs=4,
        limit_train_batches=10,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=[pruning, qat, kd, ckpt, PrintStep()],
    )
    dm = ImageClassificationDataModule("digits", batch_size=32)
    trainer.fit(module, datamodule=dm, ckpt_path="last" if resume else None)
    int8 = qat.quantized_model
    pruning_target = ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)
    test_x = dm.to_model_input(dm.test_split.images)
    with torch.no_grad():
        acc = (int8(test_x).argmax(1) == dm.test_split.labels).float().mean().item()
    result = {
        "global_step": trainer.global_step,
        "sparsity": pruning.state_dict().get("current_sparsity"),
        # the int8 kernels' holders: eager quantized modules, or the int8 weight constants of a PT2E graph
        "int8_modules": sorted(
            {type(m).__module__ for m in int8.modules() if "quantized" in type(m).__module__}
            | {
                f"int8 constant {tuple(w.shape)}"
                for _, w, _ in quantized_weights(int8)
                if w.dtype == torch.int8
            }
        ),
        "int8_test_acc": acc,
        "int8_nonzero": count_nonzero(int8),
        "float_parameters": count_parameters(pruning_target),
    }
    (out / "result.json").write_text(json.dumps(result))
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
