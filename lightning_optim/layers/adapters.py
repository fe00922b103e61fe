"""Feature adapters for distillation: learned maps from a student feature shape to a teacher's.

- :func:`build_feature_adapter` picks one: identity for equal shapes, :class:`SpatialAdapter` (1x1 conv,
  then pooled/upsampled) between ``(C, H, W)`` maps, else :class:`FlattenLinearAdapter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class SpatialAdapter(nn.Module):
    """1x1 convolution from student to teacher channels, then resize to the teacher's spatial size.

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        size: teacher spatial size ``(H, W)``; the projected map is average-pooled (or bilinearly
            upsampled) to it when it differs.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.size = tuple(int(s) for s in size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if tuple(x.shape[-2:]) == self.size:
            return x
        if x.shape[-2] >= self.size[0] and x.shape[-1] >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class FlattenLinearAdapter(nn.Module):
    """Flatten a student feature to ``(batch, -1)`` and map it linearly to the teacher's flattened size."""

    def __init__(self, in_features: int, out_features: int, out_shape: Sequence[int]) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features, bias=False)
        self.out_shape = tuple(int(s) for s in out_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.flatten(1)).reshape(x.shape[0], *self.out_shape)


def build_feature_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """A learned map from a student feature shape to a teacher feature shape (batch dim excluded).

    - equal shapes: :class:`torch.nn.Identity` (no parameters);
    - both ``(C, H, W)``: :class:`SpatialAdapter` (1x1 conv, then pooled/upsampled to the teacher's H, W);
    - otherwise: :class:`FlattenLinearAdapter` (a linear map of the flattened features).

    Args:
        student_shape: per-sample shape of the student feature, e.g. ``(16, 7, 7)`` or ``(100,)``.
        teacher_shape: per-sample shape of the teacher feature.
    """
    s, t = tuple(int(v) for v in student_shape), tuple(int(v) for v in teacher_shape)
    if s == t:
        return nn.Identity()
    if len(s) == 3 and len(t) == 3:
        return SpatialAdapter(s[0], t[0], (t[1], t[2]))
    return FlattenLinearAdapter(math.prod(s), math.prod(t), t)


__all__ = ["FlattenLinearAdapter", "SpatialAdapter", "build_feature_adapter"]
