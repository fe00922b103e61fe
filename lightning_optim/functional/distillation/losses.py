"""Knowledge-distillation losses and helpers (pure PyTorch, no Lightning).

- :func:`kd_loss`: Hinton et al. (2015) soft-target loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``.
- :func:`distillation_loss`: ``alpha * kd_loss + (1 - alpha) * cross_entropy``.
- :func:`feature_distillation_loss`: MSE or cosine distance between (adapted) intermediate features.
- :func:`scheduled_value`, :func:`ramp_length`, :func:`ramp_progress`: the temperature/alpha ramp (constant,
  linear or cosine) over training progress, a :func:`~lightning_optim.functional.ramps.ramp`.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lightning_optim._deprecation import moved
from lightning_optim.checks import check_choice
from lightning_optim.functional.ramps import ramp

#: feature-loss name -> function ``(student, teacher) -> scalar``
FEATURE_LOSSES: tuple[str, ...] = ("mse", "cosine")
#: ramp shapes (:data:`lightning_optim.functional.ramps.RAMPS`) for the temperature and alpha of distillation
DISTILLATION_RAMPS: tuple[str, ...] = ("linear", "cosine")


def check_temperature(value: float, name: str = "temperature") -> float:
    """Validate a softmax temperature.

    Raises:
        ValueError: if ``value`` is not a finite number > 0.
    """
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return float(value)


def check_alpha(value: float, name: str = "alpha") -> float:
    """Validate a distillation weight.

    Raises:
        ValueError: if ``value`` is outside ``[0, 1]``.
    """
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {value!r}.")
    return float(value)


def check_logit_shapes(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Raise a clear error when teacher and student logits cannot be compared.

    Raises:
        ValueError: if the shapes differ (for example a different number of classes).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Teacher and student outputs must have the same shape for distillation: teacher gives "
            f"{tuple(teacher_logits.shape)}, student gives {tuple(student_logits.shape)}. Check that both "
            "predict the same classes (num_classes) and return logits of shape (batch, num_classes)."
        )


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    Averaged over the batch (``batchmean``), computed in float32. The ``T^2`` factor keeps the gradient
    magnitude of the soft targets roughly independent of ``T`` (Hinton, Vinyals, Dean 2015, section 2).
    The teacher logits are treated as constants (detached).

    Args:
        student_logits: ``(batch, classes)`` (or ``(batch, ..., classes)``; softmax over the last dim).
        teacher_logits: same shape as ``student_logits``.
        temperature: ``T > 0``.

    Raises:
        ValueError: for mismatched shapes or ``temperature <= 0``.

    Example::

        loss = kd_loss(student(x), teacher(x).detach(), temperature=4.0)
    """
    check_temperature(temperature)
    check_logit_shapes(student_logits, teacher_logits)
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = F.kl_div(
        log_p_student.reshape(-1, log_p_student.shape[-1]),
        log_p_teacher.reshape(-1, log_p_teacher.shape[-1]),
        reduction="batchmean",
        log_target=True,
    )
    return kl * (t * t)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``alpha * kd_loss(student, teacher, T) + (1 - alpha) * cross_entropy(student, targets)``.

    Raises:
        ValueError: for mismatched shapes, ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.
    """
    check_alpha(alpha)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    return alpha * kd + (1.0 - alpha) * ce


def feature_distillation_loss(student_feature: Tensor, teacher_feature: Tensor, kind: str = "mse") -> Tensor:
    """Distance between a (projected) student feature and the teacher's, in float32.

    Args:
        student_feature: ``(batch, ...)``, already mapped to the teacher's shape by an adapter.
        teacher_feature: same shape; treated as a constant.
        kind: ``"mse"`` (mean squared error) or ``"cosine"`` (``1 - cosine similarity`` of the flattened
            per-sample features, averaged over the batch).

    Raises:
        ValueError: for an unknown ``kind`` or mismatched shapes.
    """
    check_choice("kind", kind, FEATURE_LOSSES, kind="feature loss")
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"Feature shapes differ after the adapter: student {tuple(student_feature.shape)}, "
            f"teacher {tuple(teacher_feature.shape)}."
        )
    s = student_feature.float()
    t = teacher_feature.detach().float()
    if kind == "mse":
        return F.mse_loss(s, t)
    return (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1, eps=1e-8)).mean()


def scheduled_value(start: float, end: float | None, progress: float, kind: str = "linear") -> float:
    """The value of a ramp from ``start`` to ``end`` at ``progress`` in ``[0, 1]`` (clamped).

    ``end=None`` means constant ``start``. ``kind`` is ``"linear"`` or ``"cosine"`` (half-cosine ease), the
    distillation's ``schedule`` option.

    Raises:
        ValueError: for a ``kind`` outside :data:`DISTILLATION_RAMPS`.
    """
    check_choice("schedule", kind, DISTILLATION_RAMPS)
    if end is None:
        return float(start)
    return ramp(progress, start, end, kind)


def ramp_length(
    schedule_epochs: int | None, start_epoch: int, end_epoch: int | None, max_epochs: int | None
) -> float:
    """The length in epochs of a temperature/alpha ramp that starts at ``start_epoch``: ``schedule_epochs``,
    else up to ``end_epoch``, else up to ``max_epochs`` (at least one epoch).

    Raises:
        ValueError: when none of the three is known (``max_epochs`` ``None`` or negative: an endless training).
    """
    if schedule_epochs is not None:
        return float(schedule_epochs)
    if end_epoch is not None:
        return float(end_epoch - start_epoch)
    if max_epochs is None or max_epochs < 0:
        raise ValueError(
            "A temperature/alpha ramp (`final_temperature`/`final_alpha`) needs `schedule_epochs` or `end_epoch` "
            "when the Trainer has no `max_epochs`."
        )
    return float(max(max_epochs - start_epoch, 1))


def ramp_progress(epoch: int, start_epoch: int, length: float, batch_idx: int = 0, batches: Any = 0) -> float:
    """The progress (not clamped) of a ramp of ``length`` epochs from ``start_epoch``, at batch ``batch_idx`` of
    ``batches`` in ``epoch``: progress moves per step (``batches`` not a positive int, e.g. unknown: per epoch)."""
    frac = batch_idx / batches if isinstance(batches, int) and batches > 0 else 0.0
    return (epoch - start_epoch + frac) / length


__all__ = [
    "DISTILLATION_RAMPS",
    "FEATURE_LOSSES",
    "check_alpha",
    "check_logit_shapes",
    "check_temperature",
    "distillation_loss",
    "feature_distillation_loss",
    "kd_loss",
    "ramp_length",
    "ramp_progress",
    "scheduled_value",
]

# deprecated (0.2.x): `SCHEDULES` was one of three constants of that name; removed in 0.3.0
_RENAMED = {"SCHEDULES": f"{__name__}:DISTILLATION_RAMPS"}
_moved = moved(__name__, __name__, renamed=_RENAMED)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
