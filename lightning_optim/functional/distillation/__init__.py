"""Knowledge distillation, pure torch: the losses and the temperature/alpha ramp (:mod:`.losses`), the frozen
teacher with its logit cache (:mod:`.teacher`) and the feature hooks and adapters (:mod:`.features`)."""

from typing import Any

from lightning_optim._deprecation import moved
from lightning_optim.functional.distillation.features import (
    adapter_optimizer_like,
    build_feature_adapters,
    dry_run,
    feature_hook,
    feature_pairs_loss,
    first_tensor,
    get_layer,
    hook_feature_pairs,
)
from lightning_optim.functional.distillation.losses import (
    DISTILLATION_RAMPS,
    FEATURE_LOSSES,
    check_alpha,
    check_logit_shapes,
    check_temperature,
    distillation_loss,
    feature_distillation_loss,
    kd_loss,
    ramp_length,
    ramp_progress,
    scheduled_value,
)
from lightning_optim.functional.distillation.teacher import (
    TEACHER_SHARDINGS,
    FrozenTeacher,
    TeacherLogitCache,
    load_teacher_weights,
    logits_through_cache,
    shard_teacher,
    teacher_state_dict_from_checkpoint,
)

__all__ = [
    "DISTILLATION_RAMPS",
    "FEATURE_LOSSES",
    "TEACHER_SHARDINGS",
    "FrozenTeacher",
    "TeacherLogitCache",
    "adapter_optimizer_like",
    "build_feature_adapters",
    "check_alpha",
    "check_logit_shapes",
    "check_temperature",
    "distillation_loss",
    "dry_run",
    "feature_distillation_loss",
    "feature_hook",
    "feature_pairs_loss",
    "first_tensor",
    "get_layer",
    "hook_feature_pairs",
    "kd_loss",
    "load_teacher_weights",
    "logits_through_cache",
    "ramp_length",
    "ramp_progress",
    "scheduled_value",
    "shard_teacher",
    "teacher_state_dict_from_checkpoint",
]

# deprecated (0.2.x): `SCHEDULES` is now `DISTILLATION_RAMPS`; removed in 0.3.0
_RENAMED = {"SCHEDULES": f"{__name__}:DISTILLATION_RAMPS"}
_moved = moved(__name__, __name__, renamed=_RENAMED)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
