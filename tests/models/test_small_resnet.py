"""SmallResNet: the zoo's small residual CNN (the ``make demo`` model): shapes, size, options, and the coupling
groups its residual additions make for channel-group pruning."""

from __future__ import annotations

import pytest
import torch

from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.functional.pruning.groups import prune_channels
from lightning_optim.models import SmallResNet
from lightning_optim.models.cnn import BasicBlock


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (1, 8, 8)),
        ({}, (1, 28, 28)),
        ({"in_channels": 3, "widths": (16, 32, 64), "blocks": (2, 1, 1)}, (3, 32, 32)),
        ({"norm": "none", "act": "gelu", "dropout": 0.2}, (1, 8, 8)),
    ],
)
def test_small_resnet_outputs_logits_and_backpropagates(kwargs, shape):
    torch.manual_seed(0)
    model = SmallResNet(**kwargs)
    logits = model(torch.randn(3, *shape))
    assert logits.shape == (3, 10)
    logits.logsumexp(-1).mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_small_resnet_default_size_and_layout():
    model = SmallResNet()
    assert count_parameters(model) == 77_290  # the figure of the docstring
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 2
    assert isinstance(blocks[0].shortcut, torch.nn.Identity)  # 32 -> 32 at stride 1
    assert blocks[1].conv1.stride == (2, 2) and blocks[1].shortcut.conv.stride == (2, 2)
    assert len(SmallResNet(blocks=(2, 3)).stages.stage2) == 3


@pytest.mark.parametrize(
    "kwargs", [{"widths": ()}, {"blocks": (1,)}, {"blocks": 0}, {"widths": (8, 0)}, {"norm": "bogus"}]
)
def test_small_resnet_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        SmallResNet(**kwargs)


def test_residual_streams_are_pruned_as_one_group_and_compaction_is_exact():
    """The stem and both first-stage convs that write into the residual stream share one coupling group: after
    pruning half the channels they all have the same, halved, width, and the compacted model computes what the
    masked one does (checked inside ``remove_units``)."""
    torch.manual_seed(0)
    model = SmallResNet().eval()
    x = torch.randn(4, 1, 8, 8)
    compact, graph, pruned = prune_channels(model, x, sparsity=0.5)
    stream = [g for g in graph.groups if "stem.conv" in g.producers]
    assert len(stream) == 1 and "stages.stage1.0.conv2" in stream[0].producers
    assert compact.stem.conv.out_channels == 16
    assert compact.stages.stage1[0].conv2.out_channels == 16
    assert compact.stages.stage2[0].shortcut.conv.in_channels == 16
    assert compact.fc.in_features == 32
    assert count_parameters(compact) < count_parameters(model) / 3
    assert compact(x).shape == (4, 10)
