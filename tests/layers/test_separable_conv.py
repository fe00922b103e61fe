"""DepthwiseSeparableConv2d: shapes, parameter counts against a standard conv, the depthwise-then-pointwise
equivalence, gradients, and the names of its norm and activation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.layers.separable_conv import DepthwiseSeparableConv2d


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "k", "stride", "size", "out_size"),
    [(3, 8, 3, 1, 16, 16), (8, 16, 3, 2, 16, 8), (4, 4, 5, 1, 7, 7), (16, 32, 3, 2, 7, 4)],
)
def test_separable_conv_shape(in_ch, out_ch, k, stride, size, out_size):
    layer = DepthwiseSeparableConv2d(in_ch, out_ch, k, stride=stride)
    y = layer(torch.randn(2, in_ch, size, size))
    assert y.shape == (2, out_ch, out_size, out_size)
    assert layer.in_channels == in_ch and layer.out_channels == out_ch


@pytest.mark.parametrize(("in_ch", "out_ch", "k"), [(32, 64, 3), (16, 16, 5), (3, 128, 3)])
def test_separable_conv_parameter_count_vs_standard_conv(in_ch, out_ch, k):
    separable = DepthwiseSeparableConv2d(in_ch, out_ch, k, norm="none", act="none", bias=False)
    standard = nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=False)
    assert n_params(separable) == in_ch * k * k + in_ch * out_ch
    assert n_params(standard) == in_ch * out_ch * k * k
    assert n_params(separable) < n_params(standard)
    # with norm and bias: + 2 * out_ch (BatchNorm affine) + out_ch (bias)
    with_norm = DepthwiseSeparableConv2d(in_ch, out_ch, k, norm="batch", bias=True)
    assert n_params(with_norm) == in_ch * k * k + in_ch * out_ch + 3 * out_ch


def test_separable_conv_channel_multiplier():
    layer = DepthwiseSeparableConv2d(4, 8, 3, channel_multiplier=2, norm="none", act="none")
    assert layer.conv_dw.out_channels == 8 and layer.conv_dw.groups == 4
    assert n_params(layer) == 4 * 2 * 9 + 8 * 8
    assert layer(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)


def test_separable_conv_equals_depthwise_then_pointwise():
    layer = DepthwiseSeparableConv2d(3, 5, 3, norm="none", act="none", bias=True).eval()
    x = torch.randn(2, 3, 9, 9)
    dw = torch.nn.functional.conv2d(x, layer.conv_dw.weight, padding=1, groups=3)
    ref = torch.nn.functional.conv2d(dw, layer.conv_pw.weight, layer.conv_pw.bias)
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "instance", "none"])
def test_separable_conv_gradients_reach_every_parameter(norm):
    layer = DepthwiseSeparableConv2d(8, 16, 3, norm=norm, act="gelu", bias=True)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    layer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: DepthwiseSeparableConv2d(4, 8, norm="bogus"), "`norm`"),
        (lambda: DepthwiseSeparableConv2d(4, 8, act="bogus"), "`act`"),
    ],
)
def test_unknown_norm_or_act_raises_naming_the_option_and_allowed_values(build, option):
    with pytest.raises(ValueError, match=option) as info:
        build()
    assert "allowed" in str(info.value)
