"""Small networks the tests share (one definition each): models our tools must handle or refuse clearly."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


class NoLayers(nn.Module):
    """A bare matrix product: no conv or linear layer to quantize."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(64, 10) * 0.1)

    def forward(self, x):
        return torch.flatten(x, 1) @ self.weight


class Residual(nn.Module):
    """A residual addition of two conv outputs on 1x8x8 inputs: a float ``+`` the eager int8 path cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        h = self.conv1(x)
        return self.fc(torch.flatten(h + self.conv2(h), 1))


#: the hand-checked MLP of the measurement tests: sizes
IN, HIDDEN, OUT = 10, 20, 3


def mlp() -> nn.Sequential:
    """IN -> HIDDEN -> OUT with a ReLU, seeded (figures computed by hand in the measurement tests)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def int8_mlp(model: nn.Module) -> nn.Module:
    """``model`` quantized to int8 by eager ``torch.ao`` (x86), calibrated on 64 random inputs."""
    import torch.ao.quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = tq.QuantWrapper(copy.deepcopy(model)).eval()
        q.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(q, inplace=True)
        q(torch.randn(64, IN))
        return tq.convert(q)
