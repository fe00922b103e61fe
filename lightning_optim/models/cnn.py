"""Plain, depthwise-separable and residual convolutional networks."""

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


class BasicBlock(nn.Module):
    """ResNet's basic block: ``act(bn(conv(act(bn(conv(x))))) + shortcut(x))``.

    The shortcut is the identity when the block keeps the shape, else a strided 1x1 conv and a norm.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (2 halves the height and width).
        norm: norm name.
        act: activation name.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch", act: str = "relu"
    ) -> None:
        super().__init__()
        bias = norm in ("none", None)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = create_norm(norm, out_channels)
        self.act1 = create_act(act)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = create_norm(norm, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)),
                        ("bn", create_norm(norm, out_channels)),
                    ]
                )
            )
        self.act2 = create_act(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small residual CNN: a 3x3 stem, stages of basic blocks, global average pooling, a linear head.

    The first stage keeps the input size, each later one starts with a stride-2 block (a 1x1 projection on
    its shortcut). With the defaults (widths 32-64, one block each: 8x8 inputs are 8x8 then 4x4 inside) it has
    77,290 parameters. Each residual addition ties the channels of its stream (the stem's output and the
    first stage's blocks; a projection shortcut starts a new stream), the pattern that channel-group pruning
    (``ProgressivePruning(granularity="channel_groups")``) prunes as one coupling group. Any input size works
    (global average pooling before the head); the demo (``make demo``) trains it on the 8x8 digits.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        widths: channels of each stage.
        blocks: basic blocks per stage (one number for all stages, or one per stage).
        norm: norm name.
        act: activation name.
        dropout: dropout before the head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64),
        blocks: int | tuple[int, ...] = 1,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        depths = (blocks,) * len(widths) if isinstance(blocks, int) else tuple(blocks)
        if not widths or len(depths) != len(widths) or min(depths) < 1 or min(widths) < 1:
            raise ValueError(
                f"SmallResNet needs one or more stage `widths` (>= 1) and one `blocks` count (>= 1) per stage, "
                f"got widths={widths}, blocks={blocks}."
            )
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=norm in ("none", None))),
                    ("bn", create_norm(norm, widths[0])),
                    ("act", create_act(act)),
                ]
            )
        )
        stages: list[tuple[str, nn.Module]] = []
        previous = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            layers = [
                BasicBlock(previous if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1, norm, act)
                for j in range(depth)
            ]
            stages.append((f"stage{i + 1}", nn.Sequential(*layers)))
            previous = width
        self.stages = nn.Sequential(OrderedDict(stages))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.stages(self.stem(x))))))
