"""Channels-first normalization layers and a small name map of norms."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_optim.checks import check_choice


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an ``(N, C, H, W)`` tensor, at each spatial position."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _group_norm(num_channels: int) -> nn.GroupNorm:
    groups = 8 if num_channels % 8 == 0 else 1
    return nn.GroupNorm(groups, num_channels)


#: name -> constructor taking the number of channels
NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "batchnorm": nn.BatchNorm2d,
    "layer": LayerNorm2d,
    "layernorm": LayerNorm2d,
    "group": _group_norm,
    "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
    "none": lambda c: nn.Identity(),
}

NORM_LAYERS_1D: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "batchnorm": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
    "layernorm": nn.LayerNorm,
    "none": lambda c: nn.Identity(),
}


def create_norm(name: str | None, num_channels: int, dims: int = 2) -> nn.Module:
    """Build the norm called ``name`` (``None`` or ``"none"`` gives ``nn.Identity``).

    Raises:
        ValueError: for a name outside :data:`NORM_LAYERS` (or :data:`NORM_LAYERS_1D` for ``dims=1``).
    """
    table = NORM_LAYERS if dims == 2 else NORM_LAYERS_1D
    key = "none" if name is None else name.lower()
    if key not in table:  # the message shows the name as given
        check_choice("norm", name, sorted(table))
    return table[key](num_channels)
