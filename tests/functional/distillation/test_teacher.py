"""The frozen teacher and its logit cache: eval mode kept, memory bound, and a batch served from the cache."""

from __future__ import annotations

import torch
from torch import nn

from lightning_optim.functional.distillation.teacher import (
    FrozenTeacher,
    TeacherLogitCache,
    logits_through_cache,
)


def test_logit_cache_is_memory_bounded_and_handles_repeats():
    cache = TeacherLogitCache(max_bytes=10 * 4 * 3)  # room for 3 rows of 10 classes
    stored = cache.insert(torch.tensor([5, 2, 2, 9, 7]), torch.arange(50.0).reshape(5, 10))
    assert stored == 3 and len(cache) == 3 and cache.nbytes <= 120
    hit, rows = cache.lookup(torch.tensor([2, 5, 7, 9, 100]))
    assert hit.tolist() == [True, True, False, True, False]
    torch.testing.assert_close(
        rows, torch.stack([torch.arange(10.0, 20.0), torch.arange(10.0), torch.arange(30.0, 40.0)])
    )
    assert cache.insert(torch.tensor([7]), torch.zeros(1, 10)) == 0  # full: the teacher keeps running for it


def test_frozen_teacher_stays_in_eval_mode():
    teacher = FrozenTeacher(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.BatchNorm1d(4)))
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(8, 4)
    torch.testing.assert_close(teacher(x), teacher(x))
    assert not teacher(x).requires_grad


def test_logits_through_cache_runs_the_teacher_on_misses_only():
    torch.manual_seed(0)
    net = nn.Linear(3, 4).to(torch.float64)  # float64: served rows must still come back as float32
    inputs = torch.randn(6, 3, dtype=torch.float64)
    calls: list[int] = []

    def forward(x):
        calls.append(x.shape[0])
        with torch.no_grad():
            return net(x)

    cache = TeacherLogitCache(max_bytes=4 * 4 * 4)  # room for 4 rows of 4 classes
    first, n_hit = logits_through_cache(cache, torch.tensor([0, 1, 2]), inputs[:3], forward)
    assert n_hit == 0 and calls == [3] and first.dtype == torch.float32
    torch.testing.assert_close(first, net(inputs[:3]).float())
    # samples 1 and 2 come from the cache, 4 and 5 from the teacher (and 4 is stored: one row of room left)
    index = torch.tensor([4, 1, 5, 2])
    mixed, n_hit = logits_through_cache(cache, index, inputs[[4, 1, 5, 2]], forward)
    assert n_hit == 2 and calls == [3, 2] and len(cache) == 4
    torch.testing.assert_close(mixed, net(inputs[[4, 1, 5, 2]]).float().detach())
    # all hits: no teacher call, the cached rows themselves
    rows, n_hit = logits_through_cache(cache, torch.tensor([2, 0, 4]), inputs[[2, 0, 4]], forward)
    assert n_hit == 3 and calls == [3, 2]
    torch.testing.assert_close(rows, net(inputs[[2, 0, 4]]).float().detach())
