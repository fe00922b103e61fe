"""Feature adapters: each maps a student feature shape to the teacher's, and learns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.layers.adapters import FlattenLinearAdapter, SpatialAdapter, build_feature_adapter


@pytest.mark.parametrize(
    ("student", "teacher", "kind"),
    [
        ((8, 7, 7), (8, 7, 7), nn.Identity),
        ((8, 7, 7), (32, 7, 7), SpatialAdapter),
        ((8, 14, 14), (32, 7, 7), SpatialAdapter),
        ((8, 3, 3), (16, 7, 7), SpatialAdapter),
        ((100,), (300,), FlattenLinearAdapter),
        ((8, 4, 4), (64,), FlattenLinearAdapter),
    ],
)
def test_build_feature_adapter_maps_to_teacher_shape(student, teacher, kind):
    adapter = build_feature_adapter(student, teacher)
    assert isinstance(adapter, kind)
    out = adapter(torch.randn(2, *student))
    assert tuple(out.shape) == (2, *teacher)
    if kind is not nn.Identity:
        out.sum().backward()
        assert all(p.grad is not None for p in adapter.parameters())
