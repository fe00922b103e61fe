"""Learning-rate scheduling, pure Python: the closed forms (:mod:`.formulas`), the schedule objects that
:class:`~lightning_optim.callbacks.LRScheduling` takes and the LR at step t, warm-up included
(:func:`lr_and_momentum_at`) (:mod:`.schedules`)."""

from typing import Any

from lightning_optim._deprecation import moved
from lightning_optim.functional.lr_scheduling.formulas import (
    ANNEAL_STRATEGIES,
    CYCLIC_MODES,
    PLATEAU_MODES,
    THRESHOLD_MODES,
    WARMUP_MODES,
    PlateauState,
    constant_lr,
    cosine_lr,
    cyclic_lr,
    cyclic_momentum,
    cyclic_scale,
    exponential_lr,
    is_improvement,
    multistep_lr,
    one_cycle_lr,
    one_cycle_momentum,
    plateau_initial_state,
    plateau_lr,
    plateau_update,
    polynomial_lr,
    sgdr_position,
    step_lr,
    warmup_factor,
)
from lightning_optim.functional.lr_scheduling.schedules import (
    LR_SCHEDULES,
    Constant,
    CosineAnnealing,
    Cyclic,
    ExponentialDecay,
    LRSchedule,
    MultiStep,
    OneCycle,
    Polynomial,
    ReduceOnPlateau,
    ScheduledValues,
    StepDecay,
    create_schedule,
    lr_and_momentum_at,
)

__all__ = [
    "ANNEAL_STRATEGIES",
    "CYCLIC_MODES",
    "LR_SCHEDULES",
    "PLATEAU_MODES",
    "THRESHOLD_MODES",
    "WARMUP_MODES",
    "Constant",
    "CosineAnnealing",
    "Cyclic",
    "ExponentialDecay",
    "LRSchedule",
    "MultiStep",
    "OneCycle",
    "PlateauState",
    "Polynomial",
    "ReduceOnPlateau",
    "ScheduledValues",
    "StepDecay",
    "constant_lr",
    "cosine_lr",
    "create_schedule",
    "cyclic_lr",
    "cyclic_momentum",
    "cyclic_scale",
    "exponential_lr",
    "is_improvement",
    "lr_and_momentum_at",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "plateau_initial_state",
    "plateau_lr",
    "plateau_update",
    "polynomial_lr",
    "sgdr_position",
    "step_lr",
    "warmup_factor",
]

# deprecated (0.2.x): `SCHEDULES` is now `LR_SCHEDULES`; removed in 0.3.0
_RENAMED = {"SCHEDULES": f"{__name__}:LR_SCHEDULES"}
_moved = moved(__name__, __name__, renamed=_RENAMED)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
