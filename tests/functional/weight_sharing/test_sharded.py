"""The sharded-layer functions of weight sharing on plain tensors (one process, no mesh): they must do exactly what
the single-tensor functions do, so that a sharded run differs from one process only by the sums over the mesh
(those are tested on 2 processes in ``tests/callbacks/test_fsdp2_weight_sharing.py``)."""

from __future__ import annotations

import torch

from lightning_optim.functional.weight_sharing import (
    SharedWeight,
    cluster_weight,
    share_gradients_,
    tie_optimizer_state_,
    update_codebook_,
)
from lightning_optim.functional.weight_sharing.sharded import (
    ShardLayout,
    cluster_sharded,
    gather_index,
    local_index,
    share_gradients_sharded_,
    tie_optimizer_states_sharded_,
    update_codebooks_sharded_,
    used_centroids,
)


def _weights() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    out = []
    for shape in [(7, 5), (3, 4, 2)]:
        w = torch.randn(*shape, generator=g)
        w[w.abs() < 0.3] = 0.0  # pruned entries: no codebook entry
        out.append(torch.nn.Parameter(w))
    return out


def _clustered() -> tuple[list[torch.nn.Parameter], list[SharedWeight]]:
    params = _weights()
    shared = [cluster_weight(p, 2) for p in params]
    return params, shared


def test_plain_parameters_have_no_layout_and_keep_their_index():
    params, shared = _clustered()
    assert ShardLayout.of(params[0]) is None
    assert local_index(shared[0].index, params[0]) is shared[0].index
    assert gather_index(shared[0].index, None) is shared[0].index
    assert used_centroids(shared[0], None) == int(torch.unique(shared[0].index[shared[0].mask]).numel())


def test_cluster_sharded_of_a_plain_weight_is_cluster_weight():
    w = _weights()[0]
    local, whole = cluster_sharded(w, 2, "random", generator=torch.Generator().manual_seed(3))
    expected = cluster_weight(w, 2, "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(local.codebook, expected.codebook) and torch.equal(local.index, expected.index)
    assert local is whole


def test_gradients_equal_the_single_tensor_function():
    params, shared = _clustered()
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    expected = []
    for p, s, grad in zip(params, shared, grads, strict=True):
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = grad.clone()
        share_gradients_(q, s)
        expected.append(q.grad)
        p.grad = grad.clone()
    share_gradients_sharded_(params, shared, [None, None])
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.grad, e)


def test_codebook_update_equals_the_single_tensor_function():
    params, shared = _clustered()
    moved = [p.detach() + 0.01 * torch.arange(p.numel()).view(p.shape) for p in params]
    moved[0][0, :] = 0.0  # a row another phase zeroed since: it leaves its clusters
    expected = []
    for m, s in zip(moved, shared, strict=True):
        q = m.clone()
        expected.append((update_codebook_(q, SharedWeight(s.codebook.clone(), s.index.clone())), q))
    with torch.no_grad():
        for p, m in zip(params, moved, strict=True):
            p.copy_(m)
    got = update_codebooks_sharded_(params, shared, [None, None], train=True)
    for (e, q), s, p in zip(expected, got, params, strict=True):
        assert torch.equal(s.codebook, e.codebook) and torch.equal(s.index, e.index)
        assert torch.equal(p.detach(), q)
    # frozen codebooks: the weights are reset to them
    frozen = update_codebooks_sharded_(params, got, [None, None], train=False)
    assert all(torch.equal(a.codebook, b.codebook) for a, b in zip(frozen, got, strict=True))


def _stepped_adam(params: list[torch.nn.Parameter]) -> torch.optim.Adam:
    """Adam after one step, with per-entry moments to tie."""
    opt = torch.optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.linspace(-1, 1, p.numel()).view(p.shape)
    opt.step()
    return opt


def test_tied_optimizer_moments_equal_the_single_tensor_function():
    params, shared = _clustered()
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt_a, opt_b = _stepped_adam(params), _stepped_adam(twins)
    for q, s in zip(twins, shared, strict=True):
        tie_optimizer_state_(opt_b, q, s)
    tie_optimizer_states_sharded_(opt_a, params, shared, [None, None])
    for p, q, s in zip(params, twins, shared, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key]), key
        for c in range(s.k):  # tied: one value per cluster
            values = opt_a.state[p]["exp_avg"][s.index == c]
            assert values.numel() == 0 or bool((values == values[0]).all())
