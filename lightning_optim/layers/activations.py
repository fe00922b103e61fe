"""Activations by name."""

from __future__ import annotations

from torch import nn

from lightning_optim.checks import check_choice

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
    "none": nn.Identity,
}


def create_act(name: str | None) -> nn.Module:
    """Build the activation called ``name`` (``None`` gives ``nn.Identity``).

    Raises:
        ValueError: for a name outside :data:`ACTIVATIONS`.
    """
    key = "none" if name is None else name.lower()
    if key not in ACTIVATIONS:  # the message shows the name as given
        check_choice("act", name, sorted(ACTIVATIONS))
    return ACTIVATIONS[key]()
