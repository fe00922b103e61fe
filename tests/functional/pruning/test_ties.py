"""Which of several tied weights (or units, or channels) a mask prunes: the rule, at every level.

The rule (:mod:`lightning_optim.functional.pruning.importance`): the lowest scores are pruned first; equal
scores in the order of position, i.e. the flattened index within a tensor and, where several tensors are ranked
together (``scope="global"``), the tensors in the order given (the layers' registration order), then the
index. The score is ``|w|`` (so ``-1`` and ``1`` tie). With ``global`` structured masks the best unit of each
layer is guarded; among equal best units, the first one. Channel groups: by unit id (channel order).
These tests pin *which* entries go, not only how many.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.pruning.dependency import build_dependency_graph
from lightning_optim.functional.pruning.groups import group_masks, pruned_units
from lightning_optim.functional.pruning.masks import (
    compute_masks,
    global_magnitude_masks,
    global_structured_masks,
    magnitude_mask,
    structured_mask,
)
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs


def pruned(mask: torch.Tensor) -> list[int]:
    """Flat indices of the pruned entries (structured masks: of the pruned units)."""
    return (~mask.flatten()).nonzero().flatten().tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_equal_weights_are_pruned_from_the_first_position_on(dtype):
    w = torch.ones(10, dtype=dtype)
    assert pruned(magnitude_mask(w, 0.3)) == [0, 1, 2]
    assert pruned(magnitude_mask(w, 0.5)) == [0, 1, 2, 3, 4]


def test_ties_among_the_lowest_go_in_index_order_and_sign_does_not_count():
    w = torch.tensor([3.0, 1.0, 2.0, -1.0, 1.0, 5.0])
    assert pruned(magnitude_mask(w, 2 / 6)) == [1, 3]  # 1, -1 and 1 tie: the first two positions
    assert pruned(magnitude_mask(w, 3 / 6)) == [1, 3, 4]
    assert pruned(magnitude_mask(w, 4 / 6)) == [1, 2, 3, 4]  # then the next score up


def test_ties_in_a_matrix_follow_the_flattened_row_major_order():
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0]])
    mask = magnitude_mask(w, 3 / 6)
    assert mask.tolist() == [[True, False, False], [False, True, True]]


def test_equal_units_are_pruned_from_the_first_unit_on():
    w = torch.ones(6, 4, 3, 3)
    assert pruned(structured_mask(w, 0.5)) == [0, 1, 2]
    w[1] *= 2  # unit 1 stronger: the next tied ones go instead
    assert pruned(structured_mask(w, 0.5)) == [0, 2, 3]
    assert pruned(structured_mask(w, 0.5, "l2")) == [0, 2, 3]


def test_global_ties_across_layers_follow_the_order_of_the_layers():
    weights = {"a": torch.ones(4), "b": torch.ones(4)}
    masks = global_magnitude_masks(weights, 0.25)
    assert pruned(masks["a"]) == [0, 1] and pruned(masks["b"]) == []
    masks = global_magnitude_masks({"b": weights["b"], "a": weights["a"]}, 0.25)  # the order given decides
    assert pruned(masks["b"]) == [0, 1] and pruned(masks["a"]) == []
    masks = global_magnitude_masks(weights, 5 / 8)
    assert pruned(masks["a"]) == [0, 1, 2, 3] and pruned(masks["b"]) == [0]


def test_global_structured_guards_the_first_of_equal_best_units_then_prunes_in_order():
    weights = {"a": torch.ones(3, 2), "b": torch.ones(3, 2)}
    masks = global_structured_masks(weights, 0.5)  # 3 of 6 units; the first unit of each layer is guarded
    assert pruned(masks["a"]) == [1, 2] and pruned(masks["b"]) == [1]


def test_compute_masks_keeps_the_rule_with_layer_overrides():
    weights = {"fc1.weight": torch.ones(2, 4), "fc2.weight": torch.ones(2, 4)}
    masks = compute_masks(weights, 0.5, scope="global", layer_sparsity={"fc2.weight": 0.25})
    assert pruned(masks["fc2.weight"]) == [0, 1]
    assert pruned(masks["fc1.weight"]) == [0, 1, 2, 3]


def test_channel_groups_prune_tied_channels_in_channel_order():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
    graph = build_dependency_graph(net, torch.zeros(2, 4))
    masks, units = group_masks(net, graph, 0.5, importance="l1")
    assert pruned_units(graph, masks) == units
    assert pruned(masks["0.weight"]) == [0, 1, 2]  # rows of the first layer: the first three channels
    assert pruned(masks["0.bias"]) == [0, 1, 2]


def test_the_callback_prunes_tied_weights_from_the_first_position_on(tmp_path):
    """A network whose weights all tie is pruned at step 0 (before any update): the first entries of each
    layer go; the same on a second run."""

    def run(root):
        net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.25)
        cb = ProgressivePruning(final_sparsity=0.5, start=0, end=0, unit="step", verbose=False)
        module = ClassificationModule(net, lr=1e-3)
        data = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
        Trainer(**quiet_trainer_kwargs(root, max_steps=1, callbacks=[cb])).fit(module, train_dataloaders=data)
        return cb.masks

    masks = run(tmp_path / "a")
    assert pruned(masks["1.weight"]) == [0, 1, 2, 3, 4, 5]
    assert pruned(masks["3.weight"]) == [0, 1, 2]
    again = run(tmp_path / "b")
    assert all(torch.equal(masks[n], again[n]) for n in masks)
