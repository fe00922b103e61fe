"""Normalization fitted on the training split: min-max to [0, 1] or [-1, 1], and z-score.

Statistics are per channel, computed in one streaming pass over chunks (float64 accumulators, no full
float copy of the data), and stored as plain tensors so that they travel in a data module's
``state_dict`` and in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lightning_optim.checks import check_choice

NORMALIZATIONS: tuple[str, ...] = ("none", "minmax", "minmax_symmetric", "zscore")


def check_normalization(name: str) -> str:
    """Validate a normalization name.

    Raises:
        ValueError: for a name outside :data:`NORMALIZATIONS`.
    """
    return check_choice("normalization", name, NORMALIZATIONS)


def fit_normalization(chunks: Iterable[Tensor], method: str, channel_dim: int = 1) -> dict[str, Tensor]:
    """Fit per-channel statistics over an iterable of tensor chunks in one pass.

    Args:
        chunks: tensors of shape ``(N, C, ...)`` (any dtype); together they are the training split.
        method: one of :data:`NORMALIZATIONS`.
        channel_dim: the channel dimension of each chunk.

    Returns:
        ``{"method", "min", "max"}`` for min-max methods, ``{"mean", "std"}`` for z-score (float32 tensors of
        shape ``(C,)``); an empty dict for ``"none"``.
    """
    check_normalization(method)
    if method == "none":
        return {}
    count = 0
    total = total_sq = lo = hi = None
    for chunk in chunks:
        x = chunk.movedim(channel_dim, 0).reshape(chunk.shape[channel_dim], -1)
        if method == "zscore":
            xd = x.double()
            s, sq = xd.sum(1), (xd * xd).sum(1)
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
            count += x.shape[1]
        else:
            cmin, cmax = x.min(1).values.double(), x.max(1).values.double()
            lo = cmin if lo is None else torch.minimum(lo, cmin)
            hi = cmax if hi is None else torch.maximum(hi, cmax)
    if method == "zscore":
        if total is None or count == 0:
            raise ValueError("Cannot fit z-score normalization on an empty training split.")
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        std = var.sqrt().clamp_min(1e-8)
        return {"mean": mean.float(), "std": std.float()}
    if lo is None:
        raise ValueError("Cannot fit min-max normalization on an empty training split.")
    return {"min": lo.float(), "max": hi.float()}


def normalize(x: Tensor, method: str, stats: dict[str, Tensor], channel_dim: int = 1) -> Tensor:
    """Apply fitted statistics to a float tensor ``x`` of shape ``(N, C, ...)``.

    ``minmax`` maps the training range to exactly [0, 1], ``minmax_symmetric`` to exactly [-1, 1] (values
    outside the training range fall outside, as they should), ``zscore`` gives zero mean and unit variance.
    """
    if method == "none":
        return x
    shape = [1] * x.ndim
    shape[channel_dim] = -1

    def view(t: Tensor) -> Tensor:
        return t.to(device=x.device, dtype=x.dtype).view(shape)

    if method == "zscore":
        return (x - view(stats["mean"])) / view(stats["std"])
    lo, hi = view(stats["min"]), view(stats["max"])
    scaled = (x - lo) / (hi - lo).clamp_min(1e-12)
    return scaled * 2.0 - 1.0 if method == "minmax_symmetric" else scaled
