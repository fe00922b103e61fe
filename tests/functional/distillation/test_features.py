"""Feature distillation without Lightning: layer lookup, hooks, the dry run that sizes adapters, the loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.distillation.features import (
    build_feature_adapters,
    dry_run,
    feature_pairs_loss,
    first_tensor,
    get_layer,
    hook_feature_pairs,
)
from lightning_optim.functional.distillation.losses import feature_distillation_loss
from lightning_optim.functional.distillation.teacher import FrozenTeacher
from lightning_optim.layers.adapters import FlattenLinearAdapter


def _nets():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3))
    teacher = FrozenTeacher(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    return student, teacher


def test_first_tensor_of_nested_outputs():
    a, b = torch.ones(1), torch.zeros(2)
    assert first_tensor(a) is a
    assert first_tensor((None, [{"x": b}, a])) is b
    assert first_tensor({"n": 1, "t": (a,)}) is a
    assert first_tensor([1, "x"]) is None


def test_get_layer_names_the_option_and_the_layers():
    student, _ = _nets()
    assert get_layer(student, "3", "feature_pairs", "student") is student[3]
    with pytest.raises(
        ValueError, match=r"`feature_pairs`: the student has no layer named '9'; its layers are: 0, 1, 2, 3\."
    ):
        get_layer(student, "9", "feature_pairs", "student")


def test_dry_run_captures_features_restores_modes_and_removes_hooks():
    student, teacher = _nets()
    student.train()
    x = torch.randn(2, 6)
    s_out, t_out, s_feats, t_feats = dry_run(student, teacher, x, {"0": "0"})
    assert s_out.shape == t_out.shape == (2, 3)
    torch.testing.assert_close(s_feats["0"], student[0](x))
    torch.testing.assert_close(t_feats["0"], teacher.module[0](x))
    assert all(m.training for m in student.modules())  # train mode given back
    assert not student[0]._forward_hooks and not teacher.module[0]._forward_hooks
    adapters = build_feature_adapters({"0": "0"}, s_feats, t_feats)
    assert list(adapters) == ["pair0"] and isinstance(adapters["pair0"], FlattenLinearAdapter)
    assert adapters["pair0"](s_feats["0"]).shape == t_feats["0"].shape


def test_hooks_capture_only_while_enabled_and_the_loss_sums_the_pairs():
    student, teacher = _nets()
    pairs = {"0": "0", "3": "2"}
    s_sink, t_sink = {}, {}
    capture = [False]
    handles = hook_feature_pairs(student, teacher, pairs, s_sink, t_sink, enabled=lambda: capture[0])
    x = torch.randn(4, 6)
    student(x), teacher(x)
    assert s_sink == {} and t_sink == {}
    capture[0] = True
    student(x), teacher(x)
    assert set(s_sink) == {"0", "3"} and set(t_sink) == {"0", "2"}
    adapters = build_feature_adapters(pairs, s_sink, t_sink)
    expected = feature_distillation_loss(
        adapters["pair0"](s_sink["0"]), t_sink["0"]
    ) + feature_distillation_loss(adapters["pair1"](s_sink["3"]), t_sink["2"])
    total = feature_pairs_loss(adapters, pairs, s_sink, t_sink, "mse")
    torch.testing.assert_close(total, expected)
    assert s_sink == {} and t_sink == {}  # the features are taken
    with pytest.raises(RuntimeError, match=r"Feature pair '0' -> '0' produced no activation"):
        feature_pairs_loss(adapters, pairs, s_sink, t_sink)
    for handle in handles:
        handle.remove()
    assert feature_pairs_loss(adapters, {}, {}, {}) is None
