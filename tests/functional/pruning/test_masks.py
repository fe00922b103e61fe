"""Masks: exact sparsity, what is pruned, global ranking, structured units, packing."""

from __future__ import annotations

import pytest
import torch

from lightning_optim.functional.pruning.masks import (
    apply_masks_,
    compute_masks,
    global_magnitude_masks,
    global_structured_masks,
    magnitude_mask,
    mask_sparsity,
    pack_mask,
    structured_mask,
    unpack_mask,
)


@pytest.mark.parametrize("shape", [(300, 784), (20, 1, 5, 5), (7,), (10, 3)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_magnitude_mask_exact_count_of_smallest(shape, sparsity):
    torch.manual_seed(0)
    w = torch.randn(shape)
    mask = magnitude_mask(w, sparsity)
    k = round(sparsity * w.numel())
    assert mask.shape == w.shape and mask.dtype == torch.bool
    assert int((~mask).sum()) == k
    if 0 < k < w.numel():
        assert w[~mask].abs().max() <= w[mask].abs().min()


def test_magnitude_mask_ties_are_exact():
    w = torch.zeros(100)
    w[:10] = 1.0
    mask = magnitude_mask(w, 0.5)
    assert int((~mask).sum()) == 50 and mask[:10].all()


def test_structured_mask_prunes_lowest_norm_units():
    w = torch.ones(6, 4, 3, 3)
    w[1] *= 0.1
    w[4] *= 0.2
    mask = structured_mask(w, 1 / 3)
    assert mask.shape == (6, 1, 1, 1)
    assert mask.flatten().tolist() == [True, False, True, True, False, True]
    assert mask_sparsity(mask, w.shape) == pytest.approx(1 / 3)


def test_structured_l1_and_l2_differ():
    # unit 0: one large weight (l2 large, l1 small); unit 1: many medium weights (l1 large, l2 small)
    w = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert structured_mask(w, 1 / 3, "l1").flatten().tolist() == [False, True, True]
    assert structured_mask(w, 1 / 3, "l2").flatten().tolist() == [True, False, True]


def test_structured_keeps_one_unit():
    mask = structured_mask(torch.randn(3, 5), 0.99)
    assert int(mask.sum()) == 1


def test_global_ranks_layers_together():
    torch.manual_seed(0)
    weights = {"big": torch.randn(1000) * 10, "small": torch.randn(1000)}
    masks = global_magnitude_masks(weights, 0.5)
    pruned = {n: int((~m).sum()) for n, m in masks.items()}
    assert sum(pruned.values()) == 1000
    assert pruned["small"] > 3 * pruned["big"]


def test_global_structured_exact_and_keeps_one_per_layer():
    torch.manual_seed(0)
    weights = {"a": torch.randn(10, 8), "b": torch.randn(20, 3, 3, 3) * 0.01}
    masks = global_structured_masks(weights, 0.6)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * 30)
    assert all(int(m.sum()) >= 1 for m in masks.values())
    assert masks["b"].shape == (20, 1, 1, 1)


def test_compute_masks_layer_overrides():
    torch.manual_seed(0)
    weights = {"fc1.weight": torch.randn(50, 40), "fc2.weight": torch.randn(10, 50)}
    masks = compute_masks(weights, 0.9, scope="global", layer_sparsity={"fc2.weight": 0.5})
    assert int((~masks["fc2.weight"]).sum()) == 250
    assert int((~masks["fc1.weight"]).sum()) == 1800
    masks = compute_masks(weights, 0.8, scope="layer")
    assert [int((~m).sum()) for m in masks.values()] == [1600, 400]


def test_apply_masks_in_place():
    w = torch.randn(4, 3)
    mask = structured_mask(w, 0.5)
    apply_masks_({"w": w}, {"w": mask.to(w.dtype)})
    assert int((w.abs().sum(1) == 0).sum()) == 2


@pytest.mark.parametrize("shape", [(13,), (300, 784), (4, 1, 1, 1), (20, 1, 5, 5)])
def test_pack_roundtrip_and_size(shape):
    mask = torch.rand(shape) > 0.7
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, shape), mask)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"granularity": "block"}, "granularity"),
        ({"scope": "model"}, "scope"),
        ({"importance": "taylor"}, "importance"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
    ],
)
def test_bad_names(kwargs, match):
    args = {"sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        compute_masks({"w": torch.randn(3, 3)}, **args)
