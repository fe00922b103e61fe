"""Dependency groups: which channels go together, which are kept and why, on one tiny net per pattern and on
torchvision models; removing the selected channels computes what the masked model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.functional.pruning.dependency import DependencyError, build_dependency_graph
from lightning_optim.functional.pruning.groups import (
    CompactionMismatch,
    check_equivalent,
    group_unit_scores,
    prune_channels,
    remove_units,
    select_units,
    unit_masks,
)
from tests.nets import ConcatCNN, GroupedCNN, ResidualCNN, SEDepthwiseCNN, TokenMLPBlock

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics and affine terms (eval mode uses them)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _groups_by_producers(graph):
    return {tuple(g.producers): g for g in graph.groups}


def test_residual_stream_is_one_group_of_coupled_layers():
    torch.manual_seed(0)
    model = _randomize_norms(ResidualCNN(width=8))
    graph = build_dependency_graph(model, X)
    groups = _groups_by_producers(graph)
    stream = groups[("blocks.0.3", "blocks.1.3", "stem.0")]  # stem and both blocks' last convs write it
    assert len(stream.units) == 8
    unit = graph.units[stream.units[0]]
    written = {(s.module, s.name) for s in unit.outputs}
    assert {("stem.1", "weight"), ("blocks.0.4", "bias"), ("blocks.1.4", "running_var")} <= written
    read = {s.module for s in unit.inputs}
    assert read == {"blocks.0.0", "blocks.1.0", "head"}
    # each block's inner width is its own group
    assert len(groups[("blocks.0.0",)].units) == 16 and len(groups[("blocks.1.0",)].units) == 16
    pinned = {graph.units[u].pinned for g in graph.groups for u in g.units} - {None}
    assert pinned == {"the model's output"}  # only the logits stay
    assert all(graph.units[u].pinned for u in groups[("head",)].units)


@pytest.mark.parametrize("factory", [ResidualCNN, ConcatCNN, SEDepthwiseCNN], ids=lambda f: f.__name__)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_removed_channels_compute_what_the_masked_model_computes(factory, scope):
    torch.manual_seed(0)
    model = _randomize_norms(factory())
    compact, graph, pruned = prune_channels(model, X, sparsity=0.5, scope=scope)
    free = sum(u.pinned is None for u in graph.units)
    assert free > 0 and len(pruned) >= 0.4 * free
    assert count_parameters(compact) < 0.75 * count_parameters(model)
    # the same check, spelled out: mask in place, compare
    masked = _randomize_norms(factory())
    masked.load_state_dict(model.state_dict())
    params = dict(masked.named_parameters())
    for name, mask in unit_masks(masked, graph, pruned).items():
        params[name].data.mul_(mask)
    assert check_equivalent(masked, compact, X) <= 1e-4
    # and the compacted model still trains (a plain nn.Module with consistent shapes)
    compact.train()
    compact(X).sum().backward()


def test_concat_offsets_map_each_branch_to_its_slice_of_the_consumer():
    graph = build_dependency_graph(ConcatCNN().eval(), X)
    groups = _groups_by_producers(graph)
    a = graph.units[groups[("a.0",)].units[2]]
    b = graph.units[groups[("b.0",)].units[3]]
    assert [s.index for s in a.inputs if s.module == "mix"] == [2]
    assert [s.index for s in b.inputs if s.module == "mix"] == [6 + 3]
    # mix's outputs go through a pool and a flatten: 4 head features per channel
    mix = graph.units[groups[("mix",)].units[1]]
    assert sorted(s.index for s in mix.inputs if s.module == "head") == [4, 5, 6, 7]


def test_squeeze_excitation_gate_joins_the_gated_channels():
    graph = build_dependency_graph(SEDepthwiseCNN().eval(), X)
    groups = _groups_by_producers(graph)
    expanded = groups[("depthwise.0", "expand.0", "se.fc2")]  # the gate's rows go with the channels they gate
    unit = graph.units[expanded.units[5]]
    modules = {s.module for s in unit.outputs}
    assert {"expand.0", "expand.1", "depthwise.0", "depthwise.1", "se.fc2"} <= modules
    assert {s.module for s in unit.inputs} == {"se.fc1", "project.0"}
    assert len(groups[("se.fc1",)].units) == 6  # the squeeze width is a group of its own


def test_grouped_convolution_loses_the_same_channels_in_every_conv_group():
    torch.manual_seed(0)
    model = GroupedCNN().eval()
    graph = build_dependency_graph(model, X)
    groups = _groups_by_producers(graph)
    coupled = groups[("conv1", "grouped")]  # conv1's outputs are the grouped conv's inputs and outputs
    assert sorted(set(coupled.divisions.values())) == [0, 1] and len(coupled.units) == 8
    assert all(graph.units[u].pinned is None for u in coupled.units)
    compact, graph, pruned = prune_channels(model, X, 0.5)
    assert compact.grouped.groups == 2 and compact.grouped.in_channels == compact.grouped.out_channels == 4
    assert compact.grouped.weight.shape == (4, 2, 3, 3) and compact.conv1.out_channels == 4
    per_group = [sum(coupled.divisions[u] == g for u in pruned & set(coupled.units)) for g in (0, 1)]
    assert per_group == [2, 2]


def test_grouped_convolution_that_changes_width_is_kept_with_its_reason():
    class Widening(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2)
            self.conv3 = nn.Conv2d(16, 8, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.conv3(torch.relu(self.grouped(torch.relu(self.conv1(x))))))
            return h.mean((2, 3))

    graph = build_dependency_graph(Widening().eval(), X)
    groups = _groups_by_producers(graph)
    assert all(
        "grouped convolution `grouped` (groups=2, in != out)" in graph.units[u].pinned
        for u in groups[("conv1",)].units
    )
    assert "grouped convolution" in graph.summary()


def test_transformer_mlp_neurons_go_and_the_residual_stream_stays():
    torch.manual_seed(0)
    model = TokenMLPBlock().eval()
    tokens = torch.randn(2, 5, 16)
    compact, graph, pruned = prune_channels(model, tokens, sparsity=0.5)
    assert compact.fc1.out_features == 16 and compact.fc2.in_features == 16
    assert compact.norm.normalized_shape == (16,) and compact.fc2.out_features == 16
    stream = [u for u in graph.units if any(s.module == "fc2" and s.axis == 0 for s in u.outputs)]
    assert stream and all(u.pinned for u in stream)
    assert len(pruned) == 16


def test_a_channel_read_after_a_non_zero_preserving_op_is_kept():
    class SigmoidFeature(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x))).mean((2, 3))

    graph = build_dependency_graph(SigmoidFeature().eval(), X)
    a_units = [u for u in graph.units if any(s.module == "a" for s in u.outputs)]
    assert a_units and all("non-zero-preserving" in u.pinned for u in a_units)


def test_every_group_keeps_one_unit_and_pinned_units_are_never_chosen():
    graph = build_dependency_graph(ResidualCNN().eval(), X)
    scores = group_unit_scores(ResidualCNN().eval(), graph)
    pruned = select_units(graph, scores, 0.99, scope="layer")
    for g in graph.groups:
        assert len(set(g.units) - pruned) >= 1
    graph.units[0].pinned = "test"
    assert 0 not in select_units(graph, group_unit_scores(ResidualCNN().eval(), graph), 0.99, scope="global")


def test_lowest_norm_channels_are_the_ones_removed():
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    with torch.no_grad():
        model.blocks[0][0].weight[[3, 11]] *= 1e-3  # two inner channels of block 0 with tiny filters
    graph = build_dependency_graph(model, X)
    group = _groups_by_producers(graph)[("blocks.0.0",)]
    pruned = select_units(graph, group_unit_scores(model, graph), 2 / 16, scope="layer")
    removed = {
        s.index for u in pruned & set(group.units) for s in graph.units[u].outputs if s.module == "blocks.0.0"
    }
    assert removed == {3, 11}


def test_untraceable_model_is_refused_with_the_way_out():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(DependencyError, match="exclude that module from pruning, or leave it dense"):
        build_dependency_graph(DataDependent(), X)


def test_removing_changes_that_are_not_equivalent_is_refused():
    model = ResidualCNN().eval()
    graph = build_dependency_graph(model, X)
    other = ResidualCNN().eval()  # different weights: the check must notice
    compact = remove_units(other, graph, {graph.groups[0].units[0]})
    with pytest.raises(CompactionMismatch):
        check_equivalent(model, compact, X)


@pytest.mark.parametrize(
    ("name", "min_removed"),
    [("resnet18", 0.95), ("mobilenet_v2", 0.95), ("efficientnet_b0", 0.95), ("densenet121", 0.95)],
)
def test_torchvision_models_lose_what_is_requested(name, min_removed):
    import torchvision

    torch.manual_seed(0)
    model = _randomize_norms(getattr(torchvision.models, name)(weights=None, num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    compact, graph, pruned = prune_channels(model, x, sparsity=0.5)
    # everything but the logits (the model's output) can go: request half of it
    logits = {u.id for u in graph.units if u.pinned == "the model's output"}
    assert {u.id for u in graph.units if u.pinned} == logits, graph.summary()
    requested = sum(round(0.5 * len(g.units)) for g in graph.groups if not set(g.units) & logits)
    assert len(pruned) >= min_removed * requested, graph.summary()
    assert count_parameters(compact) < 0.45 * count_parameters(model)


def test_group_masks_have_fixed_names_and_pruned_units_inverts_them():
    from lightning_optim.functional.pruning.groups import group_masks, pruned_units

    torch.manual_seed(0)
    model = _randomize_norms(ResidualCNN(width=8))
    graph = build_dependency_graph(model, X)
    none, pruned_none = group_masks(model, graph, 0.0)
    half, pruned_half = group_masks(model, graph, 0.5, scope="global", group_sparsity={1: 0.25})
    assert set(none) == set(half) and not pruned_none and all(bool(m.all()) for m in none.values())
    assert pruned_units(graph, half) == pruned_half
    assert sum(graph.units[u].group == 1 for u in pruned_half) == 4  # its own target, also in global scope
    assert len(pruned_half) == 4 + round(0.5 * 24)  # the other 24 free channels ranked together


def test_a_request_that_would_empty_a_group_keeps_one_channel_and_is_named():
    from lightning_optim.functional.pruning.groups import groups_kept_whole

    class Narrow(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 2, 3, padding=1)  # 2 channels: 90% of 2 rounds to 2
            self.b = nn.Conv2d(2, 16, 3, padding=1)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    model = Narrow().eval()
    graph = build_dependency_graph(model, X)
    assert groups_kept_whole(graph, 0.9) == ["a"]
    assert groups_kept_whole(graph, 0.5) == []
    compact, _, _ = prune_channels(model, X, 0.9)
    assert compact.a.out_channels == 1 and compact.b.out_channels == 2


def test_an_untraceable_block_is_named_and_can_be_kept_whole():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Sequential(nn.ReLU(), DataDependent())
            self.mid = nn.Conv2d(8, 16, 3, padding=1)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(torch.relu(self.mid(self.body(self.stem(x)))).mean((2, 3)))

    model = Net().eval()
    with pytest.raises(DependencyError, match=r"cannot follow: `body.1` \(DataDependent\)"):
        build_dependency_graph(model, X)
    graph = build_dependency_graph(model, X, leaves=["body.1"])
    groups = _groups_by_producers(graph)
    assert all(graph.units[u].pinned for u in groups[("stem",)].units)  # read by the block kept whole
    assert all(graph.units[u].pinned is None for u in groups[("mid",)].units)
    assert not any(s.module.startswith("body") for u in graph.units for s in u.slices)


def test_a_tensor_that_only_gives_a_dtype_or_shape_does_not_keep_channels():
    class Cast(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.c, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            h = torch.relu(self.a(x))
            g = self.b(h).type_as(h)  # h only gives the dtype
            return self.head(torch.relu(self.c(torch.relu(g))).mean((2, 3)))

    graph = build_dependency_graph(Cast().eval(), X)
    groups = _groups_by_producers(graph)
    assert all(graph.units[u].pinned is None for u in groups[("a",)].units + groups[("b",)].units)
