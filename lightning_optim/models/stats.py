"""Parameter counts."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of non-zero parameter entries of ``model``."""
    with torch.no_grad():
        return sum(int(torch.count_nonzero(p)) for p in model.parameters())
