"""Worker of the kill-and-resume tests: a prune -> QAT -> distill run with dropout on the embedded digits.

Usage:

- ``python tests/reliability/kill_resume_worker.py OUT_DIR [--resume] [--pause WHERE:STEP]``: one run;
- ``python tests/reliability/kill_resume_worker.py --serve``: imports everything once, then reads one JSON
  request per line on stdin (``{"out": dir, "resume": bool, "pause": "batch_end:7" | null}``), forks a child
  per request (a clean copy of the process as it was after the imports, so every run starts from the same
  state without paying the imports again), answers ``PID <pid>`` at once and ``EXIT <pid> <status>`` when the
  child ends (``<status>``: the exit code, or ``-<signal>`` for a child a signal ended).

A run writes its console to ``OUT_DIR/log.txt``. With ``--pause WHERE:STEP`` it writes ``PAUSED <step>`` there
at that point and waits (for the kill): ``batch_end:N`` in ``on_train_batch_end`` of global step N before that
step's checkpoint is written, ``batch_start:N`` as the batch after step N starts (step N's checkpoint written),
``save:N`` half-way through writing step N's checkpoint file, ``validation:N`` in the validation after step N.
A SIGTERM or SIGINT ends the wait (the run then stops at the end of the step, as ``InterruptCheckpoint`` does).
At the end it writes ``OUT_DIR/result.pt`` (``torch.load(weights_only=True)``): the float weights, the pruning
masks, the int8 model's state, every logged metric and the training loss of every step it ran.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from lightning_optim.callbacks import (
    ExactResume,
    InterruptCheckpoint,
    KnowledgeDistillation,
    ProgressivePruning,
    QuantizationAwareTraining,
)
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule
from lightning_optim.plugins import AtomicCheckpointIO

#: the run: epochs x batches; pruning events every 2 steps over steps 0..8 (done in epoch 1), QAT from the
#: epoch after (epoch 2, step 12) with its observers frozen from epoch 3 (step 18); KD all along
EPOCHS, BATCHES = 4, 6
PRUNE_END, PRUNE_EVERY = 8, 2
QAT_FREEZE_EPOCH = 3


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call: ``[(step, name, value)]``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key in sorted(metrics):
            value = metrics[key]
            self.rows.append((int(step or 0), key, float(value)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class Record(Callback):
    """The training loss of every step, by global step."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step] = float(loss.detach())


class Pause(Callback):
    """Waits at one point of the run (``--pause WHERE:STEP``) until a signal arrives or the process is killed."""

    def __init__(self, where: str | None, step: int, interrupt: InterruptCheckpoint) -> None:
        self.where, self.step, self.interrupt = where, step, interrupt

    def wait(self, step: int) -> None:
        print(f"PAUSED {step}", flush=True)
        deadline = time.monotonic() + 120
        while self.interrupt.received is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "batch_end" and trainer.global_step == self.step:
            self.wait(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.where == "batch_start" and trainer.global_step == self.step:
            self.wait(trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.where == "validation" and trainer.global_step == self.step and not trainer.sanity_checking:
            self.wait(trainer.global_step)


class PausingCheckpointIO(AtomicCheckpointIO):
    """Writes half of step ``step``'s checkpoint, then waits to be killed: a kill in the middle of a write."""

    def __init__(self, step: int | None) -> None:
        super().__init__()
        self.step = step

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if self.step is None or checkpoint.get("global_step") != self.step:
            return super().save_checkpoint(checkpoint, path, storage_options)
        import lightning_optim.plugins.checkpoint_io as atomic

        real_save = atomic.torch.save

        def half_then_wait(obj, fh):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            fh.write(data[: len(data) // 2])
            fh.flush()
            print(f"PAUSED {self.step}", flush=True)
            time.sleep(120)

        atomic.torch.save = half_then_wait
        try:
            super().save_checkpoint(checkpoint, path, storage_options)
        finally:
            atomic.torch.save = real_save


def _plain(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict as plain tensors: quantized tensors as their int8 values and scales, packed params
    flattened, anything else that is not a tensor left out (``weights_only``-loadable, exact to compare)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, tuple):  # packed params of quantized Linear: (weight, bias)
            out.update(_plain({f"{key}.{i}": v for i, v in enumerate(value)}))
        elif isinstance(value, torch.Tensor) and value.is_quantized:
            out[f"{key}.int_repr"] = value.int_repr().clone()
            if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                out[f"{key}.scale"] = torch.tensor(value.q_scale(), dtype=torch.float64)
                out[f"{key}.zero_point"] = torch.tensor(value.q_zero_point())
            else:
                out[f"{key}.scales"] = value.q_per_channel_scales().clone()
                out[f"{key}.zero_points"] = value.q_per_channel_zero_points().clone()
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().clone()
    return out


def run(out: Path, resume: bool, pause: str | None) -> int:
    where, _, step = (pause or "").partition(":")
    pause_step = int(step) if step else -1
    pl.seed_everything(0, workers=True)
    teacher = ConvNet3(image_size=8, channels=(16, 32, 64), hidden=64)
    module = ClassificationModule(
        ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32, dropout=0.25), optimizer="adam", lr=5e-3
    )
    pruning = ProgressivePruning(
        final_sparsity=0.5, start=0, end=PRUNE_END, unit="step", frequency=PRUNE_EVERY, verbose=False
    )
    qat = QuantizationAwareTraining(
        backend="eager",  # the fastest stack to prepare and convert (PT2E's tracing takes seconds)
        dry_run=False,
        start_after="pruning",
        freeze_observers_epoch=QAT_FREEZE_EPOCH,
        latency_batch_sizes=(),
        export=False,
        report=False,
        verbose=False,
    )
    kd = KnowledgeDistillation(teacher=teacher, temperature=4.0, alpha=0.5)
    interrupt = InterruptCheckpoint()
    record = Record()
    logger = MemoryLogger()
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        limit_val_batches=2,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        plugins=[PausingCheckpointIO(pause_step if where == "save" else None)],
        callbacks=[
            ExactResume(),
            pruning,
            qat,
            kd,
            record,
            Pause(where, pause_step, interrupt),  # before InterruptCheckpoint: a signal there stops this step
            interrupt,
            ckpt,
        ],
    )
    dm = ImageClassificationDataModule("digits", batch_size=32)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path="last" if resume else None)
    except SystemExit as stop:  # InterruptCheckpoint: saved, exits 128 + signal
        print(f"STOPPED {trainer.global_step} {interrupt.checkpoint_path}", flush=True)
        return int(stop.code or 0)
    result = {
        "global_step": torch.tensor(trainer.global_step),
        "weights": _plain(module.state_dict()),
        "masks": {k: v.clone() for k, v in pruning.masks.items()},
        "int8": _plain(qat.quantized_model.state_dict()),
        "logged": [(s, k, v) for s, k, v in logger.rows],
        "losses": dict(record.losses),
        "callback_metrics": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
        "qat_frozen": torch.tensor(bool(qat.observers_frozen)),
    }
    torch.save(result, out / "result.pt")
    print("DONE", flush=True)
    return 0


def _child(request: dict[str, Any]) -> int:
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    log = os.open(out / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    try:
        return run(out, bool(request.get("resume")), request.get("pause"))
    except BaseException as err:  # the child must end through os._exit, never back into the server loop
        import traceback

        traceback.print_exc()
        return 1 if not isinstance(err, SystemExit) else int(err.code or 0)


def serve() -> None:
    """Fork one child per request line; answer ``PID`` at once and ``EXIT`` when it ends."""
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = _child(request)
            sys.stdout.flush()
            os._exit(code)
        print(f"PID {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"EXIT {pid} {code}", flush=True)


def main() -> None:
    if "--serve" in sys.argv:
        serve()
        return
    out = Path(sys.argv[1])
    pause = sys.argv[sys.argv.index("--pause") + 1] if "--pause" in sys.argv else None
    sys.exit(run(out, "--resume" in sys.argv, pause))


if __name__ == "__main__":
    main()
