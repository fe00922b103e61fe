"""Channels behind a layer norm across them (ConvNeXt): units like any other, with the masked model normalising
over the kept channels only, so that the masked and compacted models compute the same function; token
tensors (a transformer's residual stream) stay pinned unless asked."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_optim.functional.pruning.dependency import TOKEN_LAYER_NORM, build_dependency_graph
from lightning_optim.functional.pruning.groups import (
    CompactionMismatch,
    MaskedLayerNorm,
    apply_layer_norm_masks,
    check_equivalent,
    group_unit_scores,
    layer_norm_masks,
    prune_channels,
    remove_layer_norm_masks,
    remove_units,
    select_units,
    unit_masks,
)
from lightning_optim.layers.attention import PrunedMultiheadAttention
from tests.nets import ChannelsFirstLayerNorm, TinyConvNeXt, TinyViT

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
TOKENS = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))


def _randomize_layer_norms(model: nn.Module) -> nn.Module:
    """Layer norms with scales and shifts away from 1 and 0 (a pruned channel's entries then matter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model.eval()


def _masked(model: nn.Module, graph, pruned, layer_norms: bool = True) -> nn.Module:
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in unit_masks(masked, graph, pruned).items():
            params[name].mul_(mask)
    if layer_norms:
        apply_layer_norm_masks(masked, graph, pruned)
    return masked


def _hooks(model: nn.Module) -> int:
    return sum(isinstance(h, MaskedLayerNorm) for m in model.modules() for h in m._forward_hooks.values())


@pytest.mark.parametrize("method", ["fx", "export"])
def test_convnext_streams_are_units_through_their_layer_norms(method, monkeypatch):
    from lightning_optim.functional.pruning import tracing

    trace = tracing.trace_graph
    monkeypatch.setattr(tracing, "trace_graph", lambda m, x, **kw: trace(m, x, method=method))
    graph = build_dependency_graph(TinyConvNeXt().eval(), X)
    pinned = {u.pinned for u in graph.units} - {None}
    assert pinned == {"the model's output"}, graph.summary()
    sites = {s.module: s.axis for s in graph.layer_norms}
    assert sites == {
        "stem.1": -3,
        "stage1.0.norm": -1,
        "stage1.1.norm": -1,
        "down.0": -3,
        "stage2.0.norm": -1,
        "norm": -3,
    }
    groups = {tuple(g.producers): g for g in graph.groups}
    stream = groups[("stage1.0.dwconv", "stage1.0.fc2", "stage1.1.dwconv", "stage1.1.fc2", "stem.0")]
    unit = graph.units[stream.units[3]]
    written = {(s.module, s.name) for s in unit.outputs}
    assert {
        ("stem.1", "weight"),
        ("stage1.0.norm", "bias"),
        ("down.0", "weight"),
        ("stage1.1", "layer_scale"),
    } <= written
    assert {s.module for s in unit.inputs} == {"stage1.0.fc1", "stage1.1.fc1", "down.1"}
    site = next(s for s in graph.layer_norms if s.module == "stage1.0.norm")
    assert site.units == stream.units and site.eps == 1e-6 and (site.weight, site.bias) == ("weight", "bias")


def test_compacted_convnext_equals_the_masked_model_with_its_layer_norms_masked():
    torch.manual_seed(0)
    model = _randomize_layer_norms(TinyConvNeXt())
    compact, graph, pruned = prune_channels(model, X, sparsity=0.5)  # checked against the masked model
    free = [u for u in graph.units if u.pinned is None]
    assert len(pruned) == sum(round(0.5 * len(g.units)) for g in graph.prunable_groups()) and free
    # both streams lost half their channels, layer norms included (their width attribute too)
    assert compact.stem[0].out_channels == 4 and compact.stem[1].normalized_shape == (4,)
    assert compact.stage1[1].norm.normalized_shape == (4,) and compact.stage1[1].norm.weight.shape == (4,)
    assert compact.stage1[0].layer_scale.shape == (4, 1, 1) and compact.down[0].normalized_shape == (4,)
    assert compact.down[1].out_channels == 8 and compact.norm.normalized_shape == (8,)
    assert compact.stage1[0].fc1.out_features == 16 and compact.head.in_features == 8
    assert _hooks(compact) == 0
    # the same check spelled out; without the masked layer norms the models differ
    masked = _masked(model, graph, pruned)
    assert _hooks(masked) == 6 and set(layer_norm_masks(graph, pruned)) == {
        s.module for s in graph.layer_norms
    }
    assert check_equivalent(masked, compact, X) <= 1e-5
    with pytest.raises(CompactionMismatch):
        check_equivalent(_masked(model, graph, pruned, layer_norms=False), compact, X)
    # and the compacted model trains on
    compact.train()
    compact(X).sum().backward()


@pytest.mark.parametrize("axis", [1, -1])
def test_masked_layer_norm_is_the_layer_norm_of_the_kept_channels(axis):
    torch.manual_seed(0)
    norm = ChannelsFirstLayerNorm(6) if axis == 1 else nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    keep = torch.tensor([True, False, True, True, False, True])
    x = torch.randn(2, 6, 3, 3) if axis == 1 else torch.randn(2, 3, 3, 6)
    handle = norm.register_forward_hook(MaskedLayerNorm(axis, keep, norm.eps), with_kwargs=True)
    out = norm(x)
    narrow = nn.LayerNorm(4)
    with torch.no_grad():
        narrow.weight.copy_(norm.weight[keep])
        narrow.bias.copy_(norm.bias[keep])
    expected = narrow(x.movedim(axis, -1)[..., keep]).movedim(-1, axis)
    torch.testing.assert_close(out.movedim(axis, -1)[..., keep], expected.movedim(axis, -1))
    assert out.movedim(axis, -1)[..., ~keep].abs().max() == 0
    out.square().sum().backward()  # gradients reach the kept entries only
    assert norm.weight.grad[~keep].abs().max() == 0 and norm.weight.grad[keep].abs().min() > 0
    handle.remove()
    assert not torch.allclose(norm(x), out)


def test_layer_norm_masks_follow_the_pruned_units_and_come_off():
    torch.manual_seed(0)
    model = TinyConvNeXt().eval()
    graph = build_dependency_graph(model, X)
    pruned = select_units(graph, group_unit_scores(model, graph), 0.5)
    stage2 = {u for g in graph.groups if "stage2.0.fc2" in g.producers for u in g.units}
    only = pruned & stage2
    assert set(layer_norm_masks(graph, only)) == {"stage2.0.norm", "norm"}  # the second stream's norms only
    assert layer_norm_masks(graph, set()) == {}
    apply_layer_norm_masks(model, graph, pruned)
    apply_layer_norm_masks(model, graph, only)  # replaces, does not stack
    assert _hooks(model) == 2
    copied = copy.deepcopy(model)  # copies and pickles carry them (a masked model stays masked)
    assert _hooks(copied) == 2 and _hooks(pickle.loads(pickle.dumps(model))) == 2
    compact = remove_units(copied, graph, only, X)  # a model that carries them is compacted without them
    assert _hooks(compact) == 0 and _hooks(copied) == 2
    assert remove_layer_norm_masks(model) == 2 and _hooks(model) == 0
    with pytest.raises(RuntimeError, match="expects 16 channels on axis -1"):
        apply_layer_norm_masks(compact, graph, only)
        compact(X)


def test_layer_norm_scales_do_not_score_the_channels():
    model = TinyConvNeXt().eval()
    graph = build_dependency_graph(model, X)
    before = group_unit_scores(model, graph)
    with torch.no_grad():
        model.stage1[0].norm.weight.mul_(torch.linspace(0.1, 10, 8))
    assert torch.equal(before, group_unit_scores(model, graph))


def test_a_layer_norm_module_that_computes_more_keeps_its_channels():
    class ScaledNorm(nn.LayerNorm):
        def forward(self, x):
            return (
                F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias).permute(
                    0, 3, 1, 2
                )
                * x.mean()
            )

    class Net(nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.conv, self.norm, self.out = nn.Conv2d(3, 8, 3), norm, nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.out(self.norm(self.conv(x))).mean((2, 3))

    graph = build_dependency_graph(Net(ScaledNorm(8)).eval(), X)
    conv = [u for u in graph.units if any(s.module == "conv" for s in u.outputs)]
    assert conv and all("whose forward does more than the layer norm" in u.pinned for u in conv)
    assert not graph.layer_norms
    graph = build_dependency_graph(Net(ChannelsFirstLayerNorm(8, elementwise_affine=False)).eval(), X)
    conv = [u for u in graph.units if any(s.module == "conv" for s in u.outputs)]
    assert conv and all("without a scale" in u.pinned for u in conv)

    class Twice(Net):
        def forward(self, x):
            return self.out(self.norm(self.norm(self.conv(x)))).mean((2, 3))

    graph = build_dependency_graph(Twice(ChannelsFirstLayerNorm(8)).eval(), X)
    conv = [u for u in graph.units if any(s.module == "conv" for s in u.outputs)]
    assert conv and all(u.pinned == "the layer norm `norm` runs more than once" for u in conv)
    graph = build_dependency_graph(Net(ChannelsFirstLayerNorm(8)).eval(), X)
    assert [s.module for s in graph.layer_norms] == ["norm"]
    assert all(u.pinned is None for u in graph.units if any(s.module == "conv" for s in u.outputs))


@pytest.mark.parametrize("kind", ["split", "mha"])
def test_a_token_stream_stays_by_default_and_goes_with_the_option(kind):
    torch.manual_seed(0)
    model = _randomize_layer_norms(TinyViT(kind=kind))
    graph = build_dependency_graph(model, TOKENS)
    stream = [u for u in graph.units if any(s.module == "embed" for s in u.outputs)]
    assert len(stream) == 16 and all(u.pinned == TOKEN_LAYER_NORM for u in stream)
    assert not graph.layer_norms
    compact, graph, pruned = prune_channels(model, TOKENS, sparsity=0.5, prune_layer_norm_tokens=True)
    assert len(graph.layer_norms) == 5 and all(s.axis == -1 for s in graph.layer_norms)
    assert compact.embed.out_features == 8 and compact.norm.normalized_shape == (8,)
    assert compact.blocks[1].mlp.norm.normalized_shape == (8,) and compact.head.in_features == 8
    # only the stream: an nn.MultiheadAttention that keeps its heads gets a narrower embedding all the same
    stream = next(g for g in graph.groups if "embed" in g.producers)
    compact = remove_units(model, graph, set(stream.units[:6]), TOKENS)
    assert compact.embed.out_features == 10
    if kind == "mha":
        attn = compact.blocks[0].attn
        assert isinstance(attn, PrunedMultiheadAttention) and (attn.embed_dim, attn.num_heads) == (10, 4)


def test_torchvision_convnext_tiny_loses_what_is_requested():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    compact, graph, pruned = prune_channels(model, x, sparsity=0.5)  # checked against the masked model
    logits = {u.id for u in graph.units if u.pinned == "the model's output"}
    assert {u.id for u in graph.units if u.pinned} == logits, graph.summary()
    requested = sum(round(0.5 * len(g.units)) for g in graph.groups if not set(g.units) & logits)
    assert len(pruned) >= 0.95 * requested, graph.summary()
    assert len(graph.layer_norms) == 23  # 18 blocks, 3 downsamples, the stem and the classifier
    assert compact.features[0][1].normalized_shape == (48,) and compact.classifier[0].normalized_shape == (
        384,
    )
    assert compact.features[1][0].block[2].normalized_shape == (48,)
