"""Tests of :mod:`lightning_optim.functional.compression_report`; :func:`batches` is their shared test data."""

from __future__ import annotations

import torch

from tests.nets import IN


def batches(n: int = 3, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded ``(inputs, targets)`` batches for the hand-checked MLP of ``tests.nets`` (3 classes)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, IN, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]
