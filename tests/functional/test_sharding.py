"""``lightning_optim.functional.sharding`` in one process (the sharded paths run in the 2-process FSDP2 tests:
tests/callbacks/test_fsdp2.py, the FSDP2 modes of tests/callbacks/test_callback_matrix.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.sharding import (
    gathered_copy,
    is_sharded_module,
    matching_skeleton,
    sharded_zero_count,
    skeleton,
)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 4)
        self.head.weight = nn.Parameter(self.embed.weight.t().detach().clone())
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.embed.weight  # tied

    def forward(self, x):
        return self.out(self.head(self.bn(self.embed(x))))


def test_skeleton_is_on_meta_keeps_ties_and_leaves_the_network_alone():
    torch.manual_seed(0)
    net = Tied()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    skel = skeleton(net)
    assert all(p.is_meta for p in skel.parameters()) and all(b.is_meta for b in skel.buffers())
    assert skel.out.weight is skel.embed.weight
    assert not any(p.is_meta for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    assert not is_sharded_module(net)


def test_gathered_copy_of_a_plain_network_is_an_equal_independent_copy():
    torch.manual_seed(0)
    net = Tied()
    net.bn.running_mean += 1.5
    net.eval()
    net.bn.train()
    copy = gathered_copy(net, skeleton(net))
    assert copy is not net and not copy.training and copy.bn.training
    assert copy.out.weight is copy.embed.weight and not copy.embed.weight.is_meta
    for (name, a), (_, b) in zip(net.state_dict().items(), copy.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    copy.embed.weight.data.zero_()
    assert net.embed.weight.abs().sum() > 0
    x = torch.randn(3, 4)
    net.eval(), copy.eval()
    torch.testing.assert_close(copy(x), Tied.forward(copy, x))


def test_gathered_copy_takes_buffers_whose_shape_changed_since_the_skeleton():
    net = nn.Sequential(nn.Linear(3, 2))
    net.register_buffer("ranges", torch.zeros(0))
    skel = skeleton(net)
    net.ranges = torch.arange(5.0)  # an observer's per-channel ranges, allocated at the first batch
    assert torch.equal(gathered_copy(net, skel).ranges, torch.arange(5.0))


def test_gathered_copy_refuses_a_skeleton_of_another_network():
    with pytest.raises(ValueError, match="changed since its skeleton"):
        gathered_copy(nn.Linear(3, 2), skeleton(nn.Sequential(nn.Linear(3, 2))))


def test_matching_skeleton_is_the_first_with_the_same_names():
    net = nn.Sequential(nn.Linear(3, 2))
    other, same = skeleton(nn.Linear(3, 2)), skeleton(net)
    assert matching_skeleton(net, None, other, same) is same
    assert matching_skeleton(net, other) is None


def test_sharded_zero_count_of_plain_tensors_needs_no_process_group():
    tensors = [torch.tensor([0.0, 1.0, 0.0]), torch.zeros(2, 2), torch.ones(4)]
    assert sharded_zero_count(tensors) == (6, 11)
    assert sharded_zero_count([]) == (0, 0)
