"""Physical compaction: the compact model equals the masked one, is smaller, and untraceable models are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.functional.pruning.compaction import CompactionError, channel_followers, compact_model
from lightning_optim.models import ConvNet3, LeNet5, LeNet300100, SeparableCNN

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def prune_units(model: nn.Module, fraction: float, skip_last: bool = True, seed: int = 0) -> int:
    """Zero a random ``fraction`` of the output units of every (non-depthwise) conv and linear layer, with
    their biases and the scale/shift of the batch norm that follows (as ProgressivePruning does)."""
    gen = torch.Generator().manual_seed(seed)
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    ]
    if skip_last:
        layers = layers[:-1]
    followers = channel_followers(model, [n for n, _ in layers])
    modules = dict(model.named_modules())
    pruned = 0
    for name, m in layers:
        units = m.weight.shape[0]
        drop = torch.randperm(units, generator=gen)[: int(units * fraction)]
        m.weight[drop] = 0
        if m.bias is not None:
            m.bias[drop] = 0
        for f in followers[name]:
            modules[f].weight[drop] = 0
            modules[f].bias[drop] = 0
        pruned += len(drop)
    # non-trivial batch-norm statistics
    for m in model.modules():
        if isinstance(m, NORMS):
            m.running_mean.uniform_(-0.5, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return pruned


CASES = {
    "convnet3_28": (lambda: ConvNet3(image_size=28), (4, 1, 28, 28)),
    "convnet3_8_gelu_dropout": (lambda: ConvNet3(image_size=8, act="gelu", dropout=0.3), (4, 1, 8, 8)),
    "convnet3_no_hidden": (lambda: ConvNet3(image_size=16, hidden=0), (4, 1, 16, 16)),
    "separable_cnn": (lambda: SeparableCNN(in_channels=3), (4, 3, 32, 32)),
    "lenet5_caffe": (lambda: LeNet5(variant="caffe"), (4, 1, 28, 28)),
    "lenet5_classic_bn": (lambda: LeNet5(norm="batch"), (4, 1, 28, 28)),
    "lenet300100": (lambda: LeNet300100(), (4, 1, 28, 28)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compact_equals_masked_and_is_smaller(case):
    builder, shape = CASES[case]
    torch.manual_seed(0)
    model = builder()
    assert prune_units(model, 0.5) > 0
    model.eval()
    x = torch.randn(shape)
    compact = compact_model(model, x)
    assert type(compact) is type(model)
    assert count_parameters(compact) < 0.75 * count_parameters(model)
    x2 = torch.randn(shape)
    with torch.no_grad():
        assert (model(x2) - compact(x2)).abs().max() <= 1e-5
    # the original is untouched
    assert count_parameters(model) == count_parameters(builder())


def test_convnet3_half_channels():
    torch.manual_seed(0)
    model = ConvNet3(image_size=28)
    prune_units(model, 0.5)
    compact = compact_model(model.eval(), torch.randn(2, 1, 28, 28))
    convs = [m for m in compact.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert [c.in_channels for c in convs] == [1, 16, 32]
    assert compact.classifier.fc1.in_features == 64 * 3 * 3
    assert compact.classifier.fc1.out_features == 64  # hidden neurons pruned as well
    assert compact.classifier.fc2.out_features == 10  # the output is never compacted


def test_separable_blocks_follow_depthwise():
    torch.manual_seed(0)
    model = SeparableCNN()
    prune_units(model, 0.5)
    compact = compact_model(model.eval(), torch.randn(2, 1, 28, 28))
    sep1 = compact.features.sep1
    assert sep1.conv_dw.groups == sep1.conv_dw.in_channels == sep1.conv_dw.out_channels == 16
    assert sep1.conv_pw.in_channels == 16 and sep1.conv_pw.out_channels == 32


def test_nothing_pruned_is_unchanged():
    model = ConvNet3(image_size=8).eval()
    compact = compact_model(model, torch.randn(2, 1, 8, 8))
    assert count_parameters(compact) == count_parameters(model)


def test_channels_reaching_the_output_or_an_add_are_kept():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = h + self.b(h)
            return self.head(h.mean((2, 3)))

    torch.manual_seed(0)
    model = Residual().eval()
    with torch.no_grad():
        model.a.weight[:4] = 0
        model.a.bias[:4] = 0
    compact = compact_model(model, torch.randn(2, 3, 8, 8))
    assert compact.a.out_channels == 8  # used by the addition: kept
    x = torch.randn(2, 3, 8, 8)
    assert (model(x) - compact(x)).abs().max() <= 1e-5


def test_zeroed_filter_without_zeroed_batchnorm_is_kept():
    """A zero filter followed by a batch norm with a shift is a constant channel, not a zero one."""
    torch.manual_seed(0)
    model = ConvNet3(image_size=8).eval()
    with torch.no_grad():
        model.features.block1.conv.weight[:4] = 0
        model.features.block1.bn.bias.fill_(0.3)
    compact = compact_model(model, torch.randn(2, 1, 8, 8))
    assert compact.features.block1.conv.out_channels == 32


def test_untraceable_model_is_refused():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 2)

        def forward(self, x):
            h = self.fc1(x)
            if h.sum() > 0:
                h = torch.relu(h)
            return self.fc2(h)

    with pytest.raises(CompactionError, match="could not trace"):
        compact_model(DataDependent(), torch.randn(2, 4))


def test_followers_found_by_tracing():
    model = ConvNet3(image_size=8)
    followers = channel_followers(model, ["features.block1.conv", "classifier.fc1"])
    assert followers == {"features.block1.conv": ["features.block1.bn"], "classifier.fc1": []}
