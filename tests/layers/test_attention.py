"""Separate q/k/v projections: the same attention as ``nn.MultiheadAttention``, as three Linear layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.layers.attention import (
    SeparateProjectionAttention,
    separate_projections,
    unpack_attention,
)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_separate_projections_compute_what_multihead_attention_computes(batch_first, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    new = separate_projections(mha).eval()
    assert isinstance(new.q_proj, nn.Linear) and new.in_proj_weight is None and new.in_proj_bias is None
    assert "in_proj_weight" not in dict(new.named_parameters())
    x = torch.randn(3, 5, 16)
    mask = torch.zeros((3, 5) if batch_first else (5, 3), dtype=torch.bool)  # (batch, keys)
    mask[:, -1] = True
    with torch.no_grad():
        a = mha(x, x, x, need_weights=need_weights, key_padding_mask=mask)
        b = new(x, x, x, need_weights=need_weights, key_padding_mask=mask)
    assert torch.allclose(a[0], b[0], atol=1e-6)
    assert (a[1] is None) == (b[1] is None) and (a[1] is None or torch.allclose(a[1], b[1], atol=1e-6))


def test_unpack_attention_replaces_every_supported_module_in_place():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True))
    model.add_module("odd", nn.MultiheadAttention(8, 2, add_zero_attn=True))  # not supported: left as it is
    assert unpack_attention(model) == ["1"]
    assert isinstance(model[1], SeparateProjectionAttention)
    assert isinstance(model.odd, nn.MultiheadAttention)
    assert unpack_attention(model) == []  # already unpacked


def test_unpacked_attention_runs_inside_a_transformer_encoder_layer():
    """nn.TransformerEncoderLayer reads ``self_attn.in_proj_bias`` (and ``_qkv_same_embed_dim``) before its
    fused fast path: the unpacked module must send it to the ordinary path, which calls the module."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = layer(x)
        assert unpack_attention(layer) == ["self_attn"]
        assert isinstance(layer.self_attn, SeparateProjectionAttention)
        assert torch.allclose(layer(x), expected, atol=1e-5)
