"""L1/L2 regularization helpers."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

#: Module types whose parameters are never decayed nor L1-penalized (scale/shift parameters, lookup tables).
NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
    nn.EmbeddingBag,
)


def _is_no_decay_module(module: nn.Module) -> bool:
    return isinstance(module, NO_DECAY_MODULES) or getattr(module, "no_weight_decay", False) is True


def split_decay_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into (decayed, not decayed).

    Biases, every parameter of normalization layers and embeddings, and any 0/1-d parameter are not decayed.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if _is_no_decay_module(module) or name.endswith("bias") or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    return decay, no_decay


def weight_decay_param_groups(model: nn.Module, weight_decay: float | None) -> list[dict]:
    """Parameter groups for an optimizer: weights decayed by ``weight_decay``, biases and norms at 0.

    With ``weight_decay=None`` the decayed group carries no ``weight_decay`` key, so the optimizer's own
    default (for example ``AdamW(weight_decay=0.01)``) applies to it, while the other group stays at 0.
    """
    if weight_decay is not None and (not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"`weight_decay` must be a finite number >= 0, got {weight_decay}.")
    decay, no_decay = split_decay_parameters(model)
    groups: list[dict] = []
    if decay:
        group: dict = {"params": decay, "name": "decay"}
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        groups.append(group)
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def l1_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of absolute values of ``params`` (a scalar tensor; 0 for no parameters)."""
    total: Tensor | None = None
    for p in params:
        term = p.abs().sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
