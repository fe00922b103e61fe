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


# ---------------------------------------------------------------------------------------------------------
# one tiny network per dependency pattern of structured pruning (random init, 3x16x16 inputs)
class ResidualCNN(nn.Module):
    """A stem, two residual blocks on one stream (their additions tie the stream's channels), a head."""

    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                nn.BatchNorm2d(2 * width),
                nn.ReLU(),
                nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConcatCNN(nn.Module):
    """Two branches concatenated along the channels, then a convolution and a flatten -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 10, 1), nn.ReLU())
        self.mix = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(12 * 4, 5)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(torch.flatten(self.pool(torch.relu(self.mix(h))), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class SEDepthwiseCNN(nn.Module):
    """An inverted residual (1x1 expand, depthwise 3x3, squeeze-excitation, 1x1 project) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()
        )
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.SiLU()
        )
        self.se = SqueezeExcite(24, 6)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        return self.head(x.mean((2, 3)))


class GroupedCNN(nn.Module):
    """A grouped convolution (groups=2, not depthwise): the channels around it are kept, with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv3(torch.relu(self.grouped(torch.relu(self.conv1(x))))))
        return self.head(h.mean((2, 3)))


class TokenMLPBlock(nn.Module):
    """A pre-norm transformer MLP block on (batch, tokens, width) inputs: the hidden neurons can go, the
    residual stream (behind a layer norm) stays."""

    def __init__(self, width: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class TokenClassifier(nn.Module):
    """(batch, tokens, features) -> a linear embedding, two pre-norm MLP blocks, mean over tokens, a head."""

    def __init__(self, features: int = 8, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.blocks = nn.Sequential(TokenMLPBlock(width, 2 * width), TokenMLPBlock(width, 2 * width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))
