"""Bad-input catalogue part: faults (rows as in ``tests/bad_input_catalogue.py``).

What goes wrong around checkpoints and interrupts: a ``ckpt_path`` that is not a checkpoint file (a FIFO that
would block the reader forever, a folder, nothing, a truncated file), a checkpoint that cannot be written (its
folder is a file, the disk fills up while it is written), and bad settings of the fault-tolerance callbacks.
The command (``fit_cli``) and a plain Trainer with ``AtomicCheckpointIO`` (``resume``) are both tried.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from pathlib import Path

ENTRIES: list[tuple[str, str, str, str]] = [
    ("faults", "a FIFO as --ckpt_path", "fit_cli(['--ckpt_path', CKPT_FIFO])", "ValueError"),
    ("faults", "a folder as --ckpt_path", "fit_cli(['--ckpt_path', EMPTY])", "ValueError"),
    (
        "faults",
        "a --ckpt_path that does not exist",
        "fit_cli(['--ckpt_path', CKPT_MISSING])",
        "FileNotFoundError",
    ),
    (
        "faults",
        "a truncated checkpoint given to resume (the command)",
        "fit_cli(['--ckpt_path', CKPT_TRUNCATED])",
        "ValueError",
    ),
    (
        "faults",
        "a FIFO as ckpt_path of a Trainer with AtomicCheckpointIO",
        "resume(CKPT_FIFO)",
        "ValueError",
    ),
    (
        "faults",
        "a checkpoint folder that is a file",
        "AtomicCheckpointIO().save_checkpoint({'step': 1}, CKPT_UNDER_A_FILE)",
        "OSError",
    ),
    (
        "faults",
        "the disk fills up while a checkpoint is written",
        "save_on_full_disk(CKPT_GOOD)",
        "OSError",
    ),
    (
        "faults",
        "weights_only=False asked of AtomicCheckpointIO",
        "AtomicCheckpointIO().load_checkpoint(CKPT_GOOD, weights_only=False)",
        "ValueError",
    ),
    ("faults", "InterruptCheckpoint on SIGKILL", "InterruptCheckpoint(signals=['SIGKILL'])", "ValueError"),
    (
        "faults",
        "InterruptCheckpoint file name with a folder",
        "InterruptCheckpoint(filename='ckpts/last')",
        "ValueError",
    ),
    (
        "faults",
        "a checkpoint whose ExactResume state is damaged",
        "ExactResume().load_state_dict({'ranks': [{'step': {'torch': 0}}]})",
        "ValueError",
    ),
    ("faults", "ExactResume fast_forward not a bool", "ExactResume(fast_forward='yes')", "ValueError"),
]

MUST_NAME: dict[str, str] = {
    "a FIFO as --ckpt_path": "ckpt_path`",
    "a folder as --ckpt_path": "is a folder",
    "a --ckpt_path that does not exist": "`ckpt_path`",
    "a truncated checkpoint given to resume (the command)": "truncated",
    "a FIFO as ckpt_path of a Trainer with AtomicCheckpointIO": "not a regular file",
    "a checkpoint folder that is a file": "nothing was written",
    "the disk fills up while a checkpoint is written": "the previous checkpoint there is unchanged",
    "weights_only=False asked of AtomicCheckpointIO": "weights_only=True",
    "a checkpoint whose ExactResume state is damaged": "`torch`",
}


def fixtures(tmp: Path) -> dict:
    """Checkpoint files (a good one, a truncated one, a FIFO, a path under a file) and the runners."""
    import lightning.pytorch as pl
    import torch

    from lightning_optim.cli import build_cli
    from lightning_optim.data import ImageClassificationDataModule
    from lightning_optim.models import LeNet300100
    from lightning_optim.modules import ClassificationModule
    from lightning_optim.plugins import AtomicCheckpointIO
    from tests.conftest import quiet_trainer_kwargs

    folder = tmp / "faults"
    folder.mkdir(exist_ok=True)
    good = folder / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4096.0)}, "global_step": 3}, good)
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fifo = folder / "pipe.ckpt"
    if not fifo.exists():
        os.mkfifo(fifo)
    a_file = folder / "a_file"
    a_file.write_text("not a folder")

    def fit_cli(args: list[str]) -> None:
        """``lightning-optim fit`` on the digits, one step, with ``args`` (a ckpt_path is checked first)."""
        base = [
            "fit",
            "--model=ClassificationModule",
            "--model.model=LeNet300100",
            "--model.model.in_features=64",
            "--data=ImageClassificationDataModule",
            "--data.dataset=digits",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={folder / 'cli'}",
            "--test_after_fit=false",
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            build_cli([*base, *args])

    def resume(ckpt_path: str) -> None:
        """A plain Trainer with ``AtomicCheckpointIO`` resuming from ``ckpt_path``."""
        module = ClassificationModule(LeNet300100(in_features=64))
        trainer = pl.Trainer(
            plugins=[AtomicCheckpointIO()],
            **quiet_trainer_kwargs(folder / "resume", max_steps=1, limit_val_batches=0),
        )
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits"), ckpt_path=ckpt_path)

    def save_on_full_disk(path: str) -> None:
        """Save a checkpoint over ``path`` while the disk fills up half-way through the write."""
        import lightning_optim.plugins.checkpoint_io as atomic

        real_save = atomic.torch.save

        def full_disk(obj, fh):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        atomic.torch.save = full_disk
        try:
            AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(4096)}}, path)
        finally:
            atomic.torch.save = real_save

    return {
        "AtomicCheckpointIO": AtomicCheckpointIO,
        "CKPT_GOOD": str(good),
        "CKPT_TRUNCATED": str(truncated),
        "CKPT_FIFO": str(fifo),
        "CKPT_MISSING": str(folder / "missing.ckpt"),
        "CKPT_UNDER_A_FILE": str(a_file / "last.ckpt"),
        "fit_cli": fit_cli,
        "resume": resume,
        "save_on_full_disk": save_on_full_disk,
    }
