"""The Trainer settings every benchmark shares: CPU, no logger, checkpoints, progress bar or sanity check."""

from __future__ import annotations

from typing import Any


def quiet_trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a quiet single-process CPU ``Trainer``; ``overrides`` win."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return kwargs
