"""Norm layers: LayerNorm2d against a reference computation, and the name map of create_norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.layers.norm import NORM_LAYERS, LayerNorm2d, create_norm


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


def test_none_gives_identity():
    assert isinstance(create_norm(None, 4), nn.Identity)
    assert isinstance(create_norm("None", 4), nn.Identity)  # names are case-insensitive


def test_1d_norms():
    assert isinstance(create_norm("batch", 8, dims=1), nn.BatchNorm1d)
    assert isinstance(create_norm("layer", 8, dims=1), nn.LayerNorm)


def test_unknown_norm_raises_naming_the_option_and_allowed_values():
    with pytest.raises(ValueError, match=r"Unknown `norm` 'Batchy'; allowed: \['batch', 'batchnorm'"):
        create_norm("Batchy", 4)
