"""Attention heads as units: separate q/k/v projections, a packed qkv projection (timm), torch's
``nn.MultiheadAttention`` and scaled-dot-product attention; whole heads go, the head count follows, the compacted
model computes what the masked one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.functional.pruning.dependency import build_dependency_graph
from lightning_optim.functional.pruning.groups import (
    group_unit_scores,
    prune_channels,
    remove_units,
    select_units,
)
from lightning_optim.layers.attention import PrunedMultiheadAttention, from_multihead_attention
from tests.nets import TinyViT

TOKENS = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
KINDS = ["split", "fused", "packed", "mha"]


def _head_groups(graph):
    return [g for g in graph.groups if g.kind == "heads"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_head_is_one_unit_of_its_layer(kind):
    torch.manual_seed(0)
    graph = build_dependency_graph(TinyViT(kind=kind).eval(), TOKENS)
    heads = _head_groups(graph)
    assert len(heads) == 2 and all(len(g.units) == 4 for g in heads), graph.summary()
    assert all(graph.units[u].pinned is None for g in heads for u in g.units)
    assert len(graph.attention) == 2 and {s.head_dim for s in graph.attention} == {4}
    unit = graph.units[
        heads[0].units[1]
    ]  # head 1: features 4..7 of q, k and v, columns 4..7 of the projection
    rows = sorted(s.index for s in unit.outputs if s.axis == 0 and s.name in ("weight", "in_proj_weight"))
    if kind in ("packed", "mha"):
        assert rows == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    else:
        assert rows == sorted([4, 5, 6, 7] * 3)
    cols = sorted(s.index for s in unit.inputs if s.axis == 1)
    assert cols == [4, 5, 6, 7]


@pytest.mark.parametrize("kind", KINDS)
def test_heads_go_whole_and_the_head_count_follows(kind):
    torch.manual_seed(0)
    model = TinyViT(kind=kind).eval()
    compact, graph, pruned = prune_channels(model, TOKENS, sparsity=0.5)  # checked against the masked model
    head_units = {u for g in _head_groups(graph) for u in g.units}
    assert len(pruned & head_units) == 4  # 2 of 4 heads in each layer
    attn = compact.blocks[0].attn
    if kind == "mha":
        assert isinstance(attn, PrunedMultiheadAttention) and attn.num_heads == 2
        assert attn.in_proj_weight.shape == (24, 16) and attn.out_proj.in_features == 8
    else:
        assert attn.num_heads == 2
        assert attn.proj.in_features == 8
    assert compact(TOKENS).shape == (2, 10)
    assert count_parameters(compact) < 0.75 * count_parameters(model)


def test_the_weakest_heads_are_removed():
    torch.manual_seed(0)
    model = TinyViT(kind="split").eval()
    with torch.no_grad():
        for proj in (model.blocks[0].attn.q, model.blocks[0].attn.k, model.blocks[0].attn.v):
            proj.weight[8:12] *= 1e-3  # head 2 of layer 0 is nearly silent
    graph = build_dependency_graph(model, TOKENS)
    group = _head_groups(graph)[0]
    pruned = select_units(graph, group_unit_scores(model, graph), 0.25, scope="layer")
    assert pruned & set(group.units) == {group.units[2]}


def test_a_module_whose_head_count_cannot_be_found_is_refused_not_miscompacted():
    from lightning_optim.functional.pruning.groups import CompactionMismatch

    class Hidden(nn.Module):
        """The head count is a literal in forward: nothing to update."""

        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
            return self.proj(
                nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 16)
            )

    model = Hidden().eval()
    x = torch.randn(2, 5, 16)
    graph = build_dependency_graph(model, x)
    heads = _head_groups(graph)[0]
    with pytest.raises((CompactionMismatch, RuntimeError)):
        remove_units(model, graph, set(heads.units[:2]), x)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_pruned_attention_with_every_head_equals_torchs(batch_first, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = from_multihead_attention(mha)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}):
        expected, w_expected = mha(x, x, x, need_weights=need_weights, **kwargs)
        got, w_got = ours(x, x, x, need_weights=need_weights, **kwargs)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        if need_weights:
            torch.testing.assert_close(w_got, w_expected, atol=1e-5, rtol=1e-5)
    assert set(dict(ours.named_parameters())) == set(dict(mha.named_parameters()))


def test_pruned_attention_validates_its_options():
    with pytest.raises(ValueError, match="`num_heads` must be >= 1"):
        PrunedMultiheadAttention(16, 0, 4)
    with pytest.raises(ValueError, match="`heads` must be a non-empty subset of range\\(4\\)"):
        from_multihead_attention(nn.MultiheadAttention(16, 4), [])


def test_torchvision_vit_loses_half_its_heads_and_neurons():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)  # vit_b_16's layout (torch's MultiheadAttention, 12 heads), narrower and shallower
    model = VisionTransformer(
        32, 16, num_layers=2, num_heads=12, hidden_dim=96, mlp_dim=384, num_classes=10
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    compact, graph, pruned = prune_channels(model, x, sparsity=0.5)
    assert [len(g.units) for g in _head_groups(graph)] == [12, 12]
    assert isinstance(compact.encoder.layers[0].self_attention, PrunedMultiheadAttention)
    assert compact.encoder.layers[0].self_attention.num_heads == 6
    assert compact.encoder.layers[0].mlp[0].out_features == 192


def test_timm_vit_loses_half_its_heads():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    compact, graph, _ = prune_channels(model, x, sparsity=0.5)
    assert [len(g.units) for g in _head_groups(graph)] == [3, 3]
    attn = compact.blocks[0].attn
    assert attn.num_heads in (1, 2) and attn.attn_dim == attn.num_heads * 64
    assert attn.qkv.out_features == 3 * attn.attn_dim


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_dict_saved_after_head_pruning_loads_into_the_unpruned_architecture(kind):
    from lightning_optim.weights import resize_to_state_dict

    torch.manual_seed(0)
    model = TinyViT(kind=kind).eval()
    compact, _, _ = prune_channels(model, TOKENS, sparsity=0.5)
    fresh = TinyViT(kind=kind).eval()
    resize_to_state_dict(fresh, compact.state_dict())
    fresh.load_state_dict(compact.state_dict())
    torch.testing.assert_close(fresh(TOKENS), compact(TOKENS))


def test_a_hugging_face_bert_loses_heads_and_neurons_through_torch_export():
    transformers = pytest.importorskip("transformers")
    from lightning_optim.weights import resize_to_state_dict
    from tests.nets import tiny_bert_config

    config = tiny_bert_config(num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 100, (2, 7))
    compact, graph, _ = prune_channels(
        model, ids, sparsity=0.5
    )  # torch.fx cannot trace it: torch.export does
    assert [len(g.units) for g in _head_groups(graph)] == [4, 4]
    attn = compact.bert.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and attn.all_head_size == 16 and attn.query.out_features == 16
    assert compact.bert.encoder.layer[0].intermediate.dense.out_features == 32
    fresh = transformers.BertForSequenceClassification(config).eval()
    resize_to_state_dict(fresh, compact.state_dict())
    fresh.load_state_dict(compact.state_dict())
    torch.testing.assert_close(fresh(ids).logits, compact(ids).logits)
