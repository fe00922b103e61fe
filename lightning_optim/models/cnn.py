"""Plain and depthwise-separable convolutional networks."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from lightning_optim.layers.activations import create_act
from lightning_optim.layers.norm import create_norm
from lightning_optim.layers.separable_conv import DepthwiseSeparableConv2d


def conv_block(in_channels: int, out_channels: int, norm: str, act: str, pool: bool = True) -> nn.Sequential:
    """``conv3x3 -> norm -> act -> maxpool2`` with named children (``conv``, ``bn``, ``act``, ``pool``)."""
    layers: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm in ("none", None))),
        ("bn", create_norm(norm, out_channels)),
        ("act", create_act(act)),
    ]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    return nn.Sequential(OrderedDict(layers))


class ConvNet3(nn.Module):
    """Three conv-bn-relu-maxpool blocks (32-64-128 channels) and a linear head.

    The reference model for structured pruning and int8 speed. The head flattens the last feature map
    (``128 * (image_size // 8)^2`` features) into ``hidden`` units, so channel pruning of the last
    block follows a conv -> flatten -> linear dependency.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        channels: widths of the three blocks.
        image_size: input height/width (8, 28 and 32 all work).
        hidden: width of the hidden fully connected layer (0 for none).
        norm: ``"batch"``, ``"layer"``, ``"group"``, ``"none"``...
        act: activation name.
        dropout: dropout before the last layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, int, int] = (32, 64, 128),
        image_size: int = 28,
        hidden: int = 128,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"ConvNet3 `channels` needs three widths, got {channels}.")
        self.num_classes = num_classes
        widths = (in_channels, *channels)
        self.features = nn.Sequential(
            OrderedDict((f"block{i + 1}", conv_block(widths[i], widths[i + 1], norm, act)) for i in range(3))
        )
        spatial = max(image_size // 8, 1)
        head: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        features = channels[-1] * spatial * spatial
        if hidden:
            head += [("fc1", nn.Linear(features, hidden)), ("act", create_act(act))]
            features = hidden
        head += [("dropout", nn.Dropout(dropout)), ("fc2", nn.Linear(features, num_classes))]
        self.classifier = nn.Sequential(OrderedDict(head))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SeparableCNN(nn.Module):
    """A compact CNN: a standard 3x3 stem, then depthwise-separable blocks, global average pooling.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        channels: stem width followed by the widths of the separable blocks.
        strides: stride of each separable block (downsampling).
        norm: norm name.
        act: activation name.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, ...] = (32, 64, 128, 128),
        strides: tuple[int, ...] = (2, 2, 1),
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"SeparableCNN `strides` needs one entry per separable block (len(channels) - 1 = {len(channels) - 1}), "
                f"got {strides} for `channels`={channels}."
            )
        self.num_classes = num_classes
        stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)),
                    ("bn", create_norm(norm, channels[0])),
                    ("act", create_act(act)),
                ]
            )
        )
        blocks: list[tuple[str, nn.Module]] = [("stem", stem)]
        for i, stride in enumerate(strides):
            blocks.append(
                (
                    f"sep{i + 1}",
                    DepthwiseSeparableConv2d(
                        channels[i], channels[i + 1], 3, stride=stride, norm=norm, act=act
                    ),
                )
            )
        self.features = nn.Sequential(OrderedDict(blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.features(x)))))
