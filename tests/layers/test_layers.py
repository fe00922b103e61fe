"""Layers: shapes, gradients, parameter counts, LayerNorm2d against a reference computation, name maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.layers import (
    ACTIVATIONS,
    NORM_LAYERS,
    DepthwiseSeparableConv2d,
    LayerNorm2d,
    create_act,
    create_norm,
)


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


def reference_layer_norm_2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Normalize over channels at each (n, h, w), by hand."""
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)  # biased, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 3, 1, 1), (4, 16, 3, 3)])
def test_layer_norm_2d_matches_reference(shape):
    torch.manual_seed(0)
    layer = LayerNorm2d(shape[1], eps=1e-5)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(layer(x), reference_layer_norm_2d(x, layer.weight, layer.bias, 1e-5))


def test_layer_norm_2d_normalizes_each_position_over_channels():
    layer = LayerNorm2d(6, affine=False)
    y = layer(torch.randn(3, 6, 4, 4) * 5 + 2)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(3, 4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(3, 4, 4), atol=1e-3, rtol=0)
    assert y.shape == (3, 6, 4, 4)


def test_layer_norm_2d_gradients():
    layer = LayerNorm2d(4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_every_norm_builds_and_keeps_shape(name):
    norm = create_norm(name, 8)
    assert norm(torch.randn(2, 8, 4, 4)).shape == (2, 8, 4, 4)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_keeps_shape(name):
    assert create_act(name)(torch.randn(3, 5)).shape == (3, 5)


def test_none_gives_identity():
    assert isinstance(create_norm(None, 4), nn.Identity)
    assert isinstance(create_act(None), nn.Identity)


def test_1d_norms():
    assert isinstance(create_norm("batch", 8, dims=1), nn.BatchNorm1d)
    assert isinstance(create_norm("layer", 8, dims=1), nn.LayerNorm)


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: create_norm("batchy", 4), "`norm`"),
        (lambda: create_act("swishy"), "`act`"),
        (lambda: DepthwiseSeparableConv2d(4, 8, norm="bogus"), "`norm`"),
        (lambda: DepthwiseSeparableConv2d(4, 8, act="bogus"), "`act`"),
    ],
)
def test_unknown_names_raise_naming_the_option_and_allowed_values(build, option):
    with pytest.raises(ValueError, match=option) as info:
        build()
    assert "allowed" in str(info.value)
