"""Depthwise-separable convolution (MobileNet style)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_optim.layers.activations import create_act
from lightning_optim.layers.norm import create_norm


class DepthwiseSeparableConv2d(nn.Module):
    """A depthwise ``k x k`` convolution followed by a pointwise ``1 x 1`` one, then norm and activation.

    It has ``C_in * k^2 + C_in * C_out`` weights where a standard convolution has ``C_in * C_out * k^2``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        padding: depthwise padding; ``None`` gives "same" padding ``kernel_size // 2 * dilation``.
        dilation: depthwise dilation.
        bias: whether the pointwise convolution has a bias (off by default when a norm follows).
        norm: norm after the pointwise convolution (``"batch"``, ``"layer"``, ``"group"``, ``"none"``...).
        act: activation after the norm (``"relu"``, ``"gelu"``, ``"none"``...).
        channel_multiplier: depthwise output channels per input channel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
        norm: str | None = "batch",
        act: str | None = "relu",
        channel_multiplier: int = 1,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 * dilation if padding is None else padding
        mid = in_channels * channel_multiplier
        self.conv_dw = nn.Conv2d(
            in_channels,
            mid,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        self.conv_pw = nn.Conv2d(mid, out_channels, 1, bias=bias)
        self.bn = create_norm(norm, out_channels)
        self.act = create_act(act)

    @property
    def in_channels(self) -> int:
        return self.conv_dw.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv_pw.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv_pw(self.conv_dw(x))))
