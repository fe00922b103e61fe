"""Masks: exact sparsity, what is pruned, global ranking, structured units, applying them (weights, gradients,
optimizer state, the unit's bias and norm), packing."""

from __future__ import annotations

import pytest
import torch

from lightning_optim.functional.pruning.masks import (
    apply_masks_,
    cast_masks,
    compute_masks,
    global_magnitude_masks,
    global_structured_masks,
    magnitude_mask,
    mask_gradients_,
    mask_optimizer_state_,
    mask_sparsity,
    pack_mask,
    structured_mask,
    unit_masks_with_followers,
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


def test_unit_masks_reach_the_bias_and_the_following_norm():
    conv, bn, fc = torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 3)
    params = {
        "conv.weight": conv.weight,
        "conv.bias": conv.bias,
        "bn.weight": bn.weight,
        "bn.bias": bn.bias,
        "fc.weight": fc.weight,
        "fc.bias": fc.bias,
    }
    unit = torch.tensor([True, False, True, False])
    masks = {"conv.weight": unit.view(4, 1, 1, 1)}
    out = unit_masks_with_followers(masks, params, {"conv": ["bn"]})
    assert list(out) == ["conv.weight", "conv.bias", "bn.weight", "bn.bias"]
    assert torch.equal(out["conv.weight"], masks["conv.weight"])
    assert all(torch.equal(out[n], unit) for n in ("conv.bias", "bn.weight", "bn.bias"))
    # without followers only the bias; a parameter of another size (fc.bias has 3 entries) is never masked
    assert list(unit_masks_with_followers(masks, params)) == ["conv.weight", "conv.bias"]
    fc_mask = torch.tensor([True, True, False]).view(3, 1)
    assert list(unit_masks_with_followers({"fc.weight": fc_mask}, params, {"fc": ["conv"]})) == [
        "fc.weight",
        "fc.bias",
    ]
    # a parameter reached twice keeps what both masks keep
    twice = unit_masks_with_followers(
        {"conv.weight": unit.view(4, 1, 1, 1), "bn.weight": torch.tensor([True, True, False, False])},
        params,
        {"conv": ["bn"]},
    )
    assert twice["bn.weight"].tolist() == [True, False, False, False]


def test_cast_masks_to_each_tensor():
    tensors = {"a": torch.ones(2, 2, dtype=torch.bfloat16), "b": torch.ones(3)}
    masks = {
        "a": torch.tensor([[True, False], [False, True]]),
        "b": torch.tensor([True, False, True]),
        "c": torch.ones(1),
    }
    cast = cast_masks(masks, tensors)
    assert set(cast) == {"a", "b"}
    assert cast["a"].dtype == torch.bfloat16 and cast["b"].dtype == torch.float32
    apply_masks_(tensors, cast)
    assert tensors["a"].tolist() == [[1.0, 0.0], [0.0, 1.0]] and tensors["b"].tolist() == [1.0, 0.0, 1.0]


def test_mask_gradients_skips_parameters_without_gradient():
    a, b = torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(2))
    a.grad = torch.ones(2, 3)
    mask = {"a": torch.tensor([[1.0], [0.0]]), "b": torch.tensor([0.0, 1.0])}
    mask_gradients_({"a": a, "b": b}, mask)
    assert a.grad.tolist() == [[1.0] * 3, [0.0] * 3] and b.grad is None
    assert a.detach().sum() == 6  # the weights themselves are left alone


def test_mask_optimizer_state_zeroes_pruned_moments():
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3, 2)
    opt.step()
    mask = {"w": torch.tensor([[1.0], [0.0], [1.0]])}
    mask_optimizer_state_(opt, {"w": w}, mask)
    state = opt.state[w]
    for key in ("exp_avg", "exp_avg_sq"):
        assert state[key][1].abs().sum() == 0 and (state[key][[0, 2]] != 0).all(), key
    assert state["step"].numel() == 1 and float(state["step"]) == 1.0  # state of another shape is left alone
    # a parameter the optimizer never stepped has no state: nothing to do
    mask_optimizer_state_(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), {"w": w}, mask)
