"""Batched augmentation (placeholder: only 'none' until the augmentation module lands)."""

from __future__ import annotations

from typing import Any

from torch import nn

AUGMENTATION_PRESETS: tuple[str, ...] = ("none",)


def build_batch_augmentation(spec: Any) -> nn.Module | None:
    """Build a batched augmentation module from a preset name or a list of steps; ``None`` for 'none'."""
    if spec in (None, "none"):
        return None
    raise ValueError(f"Unknown `augmentation` {spec!r}; allowed presets: {list(AUGMENTATION_PRESETS)}.")
