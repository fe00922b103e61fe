"""Codebooks: 1-D k-means against hand-worked examples and a brute-force Lloyd reference, the three
initialisations, assignment, zeros without a codebook entry, trained centroids (the centroid gradient against
autograd and by hand, tied updates under SGD and Adam), selection of the shared parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.weight_sharing import (
    INITS,
    SharedWeight,
    assign,
    centroid_gradient,
    check_bits,
    check_bits_spec,
    cluster_weight,
    init_centroids,
    kmeans_1d,
    select_shared,
    share_gradients_,
    share_weights_,
    shared_values,
    tie_optimizer_state_,
    unmatched_patterns,
    update_codebook_,
    write_shared_,
)

VALUES = torch.tensor([0.1, 0.2, 0.9, 1.0, 1.1, 3.0])


def _lloyd_reference(values: list[float], centroids: list[float], max_iter: int = 300):
    """Textbook Lloyd in plain Python: nearest centroid by argmin (ties to the lower index), means, repeat until
    no value changes cluster; an empty cluster keeps its centroid."""
    labels = None
    for _ in range(max_iter + 1):
        new = [min(range(len(centroids)), key=lambda j: (abs(v - centroids[j]), j)) for v in values]
        if new == labels:
            break
        labels = new
        for j in range(len(centroids)):
            members = [v for v, label in zip(values, labels, strict=True) if label == j]
            if members:
                centroids[j] = sum(members) / len(members)
    return centroids, labels


# ------------------------------------------------------------------------------------------ by hand
def test_initialisations_by_hand():
    assert init_centroids(VALUES, 2, "linear").tolist() == pytest.approx([0.1, 3.0])
    assert init_centroids(VALUES, 3, "linear").tolist() == pytest.approx([0.1, 1.55, 3.0])
    # density: the values at the quantile levels (i + 1/2) / k of the sorted values: floor(0.25 * 6) = 1,
    # floor(0.75 * 6) = 4
    assert init_centroids(VALUES, 2, "density").tolist() == pytest.approx([0.2, 1.1])
    # random (Forgy): k distinct values of the data, ascending
    drawn = init_centroids(VALUES, 3, "random", torch.Generator().manual_seed(0))
    assert drawn.tolist() == sorted(drawn.tolist())
    assert all(any(abs(d - v) < 1e-7 for v in VALUES.tolist()) for d in drawn.tolist())
    assert len(set(drawn.tolist())) == 3


def test_kmeans_by_hand_linear_two_clusters():
    # init [0.1, 3.0]: edge 1.55 -> {0.1 .. 1.1} (mean 0.66) and {3.0}; edge (0.66 + 3) / 2 = 1.83: the same
    # clusters, the fixed point after one update
    result = kmeans_1d(VALUES, 2, "linear")
    assert result.centroids.tolist() == pytest.approx([0.66, 3.0])
    assert result.index.tolist() == [0, 0, 0, 0, 0, 1]
    assert result.iterations == 1 and result.converged


def test_kmeans_by_hand_density_finds_another_optimum():
    # init [0.2, 1.1]: edge 0.65 -> {0.1, 0.2} (0.15) and {0.9, 1.0, 1.1, 3.0} (1.5); edge 0.825: the same
    result = kmeans_1d(VALUES, 2, "density")
    assert result.centroids.tolist() == pytest.approx([0.15, 1.5])
    assert result.index.tolist() == [0, 0, 1, 1, 1, 1]


def test_kmeans_by_hand_three_clusters():
    # init [0.1, 1.55, 3.0]: edges 0.825, 2.275 -> {0.1, 0.2}, {0.9, 1.0, 1.1}, {3.0}; then edges 0.575, 2.0
    result = kmeans_1d(VALUES, 3, "linear")
    assert result.centroids.tolist() == pytest.approx([0.15, 1.0, 3.0])
    assert result.index.tolist() == [0, 0, 1, 1, 1, 2]


def test_empty_cluster_keeps_its_centroid():
    # init [0, 5.05, 10.1]: no value is nearest to 5.05
    result = kmeans_1d(torch.tensor([0.0, 0.1, 10.0, 10.1]), 3, "linear")
    assert result.centroids.tolist() == pytest.approx([0.05, 5.05, 10.05])
    assert result.index.tolist() == [0, 0, 2, 2]


def test_assign_nearest_and_ties_to_the_lower_centroid():
    centroids = torch.tensor([0.0, 1.0, 4.0])
    values = torch.tensor([-3.0, 0.4, 0.5, 0.6, 2.5, 2.6, 9.0])
    assert assign(values, centroids).tolist() == [0, 0, 0, 1, 1, 2, 2]


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("seed", range(6))
def test_kmeans_equals_textbook_lloyd(init, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(40, generator=g, dtype=torch.float64).float() * (1 + seed)
    k = [2, 3, 4, 5, 8, 16][seed]
    start = init_centroids(values, k, init, torch.Generator().manual_seed(seed))
    expected, labels = _lloyd_reference(values.double().tolist(), start.tolist())
    result = kmeans_1d(values, k, init, generator=torch.Generator().manual_seed(seed))
    assert result.converged
    assert result.centroids.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert result.index.tolist() == labels


def test_kmeans_max_iter_stops_early():
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    result = kmeans_1d(values, 64, "linear", max_iter=2)
    assert result.iterations == 2 and not result.converged


def test_kmeans_large_layer_reaches_its_fixed_point():
    values = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    result = kmeans_1d(values, 16, "density")
    assert result.converged
    # a fixed point: each centroid is the mean of its values, each value at its nearest centroid
    for j in range(16):
        members = values[result.index == j]
        assert float(members.double().mean()) == pytest.approx(float(result.centroids[j]), abs=1e-6)
    assert torch.equal(result.index, assign(values, result.centroids))


# ------------------------------------------------------------------------------------------ tensors
def test_cluster_weight_zeros_take_no_entry_and_stay_zero():
    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    w[w.abs() < 0.8] = 0
    shared = cluster_weight(w, 3)
    assert shared.k == 8 and shared.codebook.dtype == torch.float32
    assert torch.equal(shared.mask, w != 0)
    assert (shared.index[w == 0] == 8).all()
    values = shared.values()
    assert (values[w == 0] == 0).all() and (values[w != 0] != 0).all()
    assert torch.unique(values[w != 0]).numel() <= 8
    # the codebook is the k-means of the non-zero entries only
    assert torch.equal(shared.codebook, kmeans_1d(w[w != 0], 8, "linear").centroids)


def test_cluster_weight_refuses_fewer_nonzeros_than_centroids():
    w = torch.zeros(4, 5)
    w[0, :3] = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(
        ValueError, match=r"fc1\.weight \(4, 5\) 4 centroids, but it has only 3 non-zero.*at most 1 bits"
    ):
        cluster_weight(w, 2, name="fc1.weight")


@pytest.mark.parametrize("bad", [0, 9, -1, True, 4.0, "4", None])
def test_bits_outside_one_to_eight_refused(bad):
    with pytest.raises(ValueError, match=r"Unknown `bits` .*; allowed: \[1, 2, 3, 4, 5, 6, 7, 8\]\."):
        check_bits(bad)


def test_bits_map_values_checked():
    assert check_bits_spec({"fc*": 4, "*": 8}) == {"fc*": 4, "*": 8}
    with pytest.raises(ValueError, match=r"Unknown `bits\['fc1'\]` 12"):
        check_bits_spec({"fc1": 12})


def test_unknown_init_refused():
    with pytest.raises(
        ValueError, match=r"Unknown `init` 'kmeans\+\+'; allowed: \['linear', 'density', 'random'\]\."
    ):
        init_centroids(VALUES, 2, "kmeans++")


# ------------------------------------------------------------------------------------------ training
def _shared_linear(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, generator=g)
    w[w.abs() < 0.3] = 0
    return w, cluster_weight(w, 2)


def test_centroid_gradient_equals_autograd_through_the_codebook():
    w, shared = _shared_linear()
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    target = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    # reference: the codebook as the leaf, the weight computed from it (a reparametrisation)
    codebook = shared.codebook.clone().requires_grad_(True)
    loss = ((x @ shared_values(codebook, shared.index).t()) - target).pow(2).sum()
    loss.backward()
    # ours: the gradient of a plain weight holding the same values, summed per cluster
    weight = nn.Parameter(shared.values())
    ((x @ weight.t()) - target).pow(2).sum().backward()
    got = centroid_gradient(weight.grad, shared)
    assert torch.allclose(got, codebook.grad, rtol=1e-5, atol=1e-6)
    # and by hand: the sum of the gradients of the weights that share each centroid
    for j in range(shared.k):
        assert float(got[j]) == pytest.approx(float(weight.grad[shared.index == j].sum()), rel=1e-5, abs=1e-6)


def test_share_gradients_gives_each_weight_its_centroid_gradient_and_zeros_none():
    w, shared = _shared_linear()
    weight = nn.Parameter(shared.values())
    weight.grad = torch.randn(weight.shape)
    sums = centroid_gradient(weight.grad, shared)
    share_gradients_(weight, shared)
    assert (weight.grad[~shared.mask] == 0).all()
    for j in range(shared.k):
        assert torch.equal(weight.grad[shared.index == j], sums[j].expand(int((shared.index == j).sum())))


def test_sgd_step_moves_each_centroid_by_lr_times_its_gradient_sum():
    w, shared = _shared_linear()
    weight = nn.Parameter(shared.values())
    opt = torch.optim.SGD([weight], lr=0.01)
    weight.grad = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    expected = shared.codebook - 0.01 * centroid_gradient(weight.grad, shared)
    share_gradients_(weight, shared)
    opt.step()
    updated = update_codebook_(weight, shared)
    assert torch.allclose(updated.codebook, expected, atol=1e-7)
    assert torch.equal(weight.detach(), updated.values())
    assert (weight.detach()[~shared.mask] == 0).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adam([p], lr=0.01),
        lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=1e-3),
    ],
)
def test_clusters_stay_tied_under_stateful_optimizers(make):
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    weight = nn.Parameter(w.clone())
    opt = make(weight)
    for _ in range(3):  # optimizer state built up before sharing: different per weight
        weight.grad = torch.randn(weight.shape)
        opt.step()
    with torch.no_grad():
        weight[weight.abs() < 0.5] = 0
    shared = cluster_weight(weight, 3)
    write_shared_(weight, shared)
    tie_optimizer_state_(opt, weight, shared)
    for _ in range(5):
        weight.grad = torch.randn(weight.shape)
        share_gradients_(weight, shared)
        opt.step()
        # every weight of a cluster took the same step: tied before the codebook is read back
        for j in range(shared.k):
            assert torch.unique(weight.detach()[shared.index == j]).numel() <= 1
        shared = update_codebook_(weight, shared)
    assert (weight.detach()[~shared.mask] == 0).all()


def test_frozen_codebook_is_restored_after_a_step():
    w, shared = _shared_linear()
    weight = nn.Parameter(shared.values())
    opt = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.5)
    weight.grad = torch.zeros_like(weight)
    opt.step()  # decoupled weight decay moves the weights without a gradient
    kept = update_codebook_(weight, shared, train=False)
    assert torch.equal(kept.codebook, shared.codebook)
    assert torch.equal(weight.detach(), shared.values())


def test_entries_zeroed_by_another_phase_leave_their_cluster():
    w, shared = _shared_linear()
    weight = nn.Parameter(shared.values())
    first = torch.nonzero(shared.mask.flatten())[0].item()
    with torch.no_grad():
        weight.view(-1)[first] = 0.0  # a pruning step
    updated = update_codebook_(weight, shared)
    assert updated.index.view(-1)[first] == updated.k
    assert weight.detach().view(-1)[first] == 0


# ------------------------------------------------------------------------------------------ models
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)


def test_select_shared_int_takes_weights_of_two_or_more_dims():
    assert select_shared(_Net(), 4) == {"conv.weight": 4, "fc1.weight": 4, "fc2.weight": 4}


def test_select_shared_map_first_matching_pattern_module_or_parameter_name():
    net = _Net()
    assert select_shared(net, {"fc2": 2, "fc*": 5}) == {"fc1.weight": 5, "fc2.weight": 2}
    assert select_shared(net, {"*": 3}, exclude=["conv"]) == {"fc1.weight": 3, "fc2.weight": 3}
    assert select_shared(net, 3, include=["conv.weight"]) == {"conv.weight": 3}
    assert unmatched_patterns(dict(net.named_parameters()), ["fc*", "head", "norm"]) == ["head", "norm"]


def test_share_weights_in_place():
    torch.manual_seed(0)
    net = _Net()
    shared = share_weights_(net, {"fc1": 2, "*": 1})
    assert set(shared) == {"conv.weight", "fc1.weight", "fc2.weight"}
    assert torch.unique(net.fc1.weight).numel() <= 4 and torch.unique(net.conv.weight).numel() <= 2
    assert isinstance(shared["fc1.weight"], SharedWeight)
    assert torch.equal(net.fc1.weight.detach(), shared["fc1.weight"].values())
