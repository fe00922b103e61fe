"""Knowledge distillation, pure torch: the losses and ramps (:mod:`.losses`) and the frozen teacher with its
logit cache (:mod:`.teacher`)."""

from lightning_optim.functional.distillation.losses import (
    FEATURE_LOSSES,
    SCHEDULES,
    check_alpha,
    check_logit_shapes,
    check_temperature,
    distillation_loss,
    feature_distillation_loss,
    kd_loss,
    scheduled_value,
)
from lightning_optim.functional.distillation.teacher import (
    FrozenTeacher,
    TeacherLogitCache,
    load_teacher_weights,
    teacher_state_dict_from_checkpoint,
)

__all__ = [
    "FEATURE_LOSSES",
    "SCHEDULES",
    "FrozenTeacher",
    "TeacherLogitCache",
    "check_alpha",
    "check_logit_shapes",
    "check_temperature",
    "distillation_loss",
    "feature_distillation_loss",
    "kd_loss",
    "load_teacher_weights",
    "scheduled_value",
    "teacher_state_dict_from_checkpoint",
]
