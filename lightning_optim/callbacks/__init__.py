"""Callbacks: LR scheduling, early stopping, pruning, quantization-aware training, distillation, reports.

Every callback exported here must have an entry in the settings table (``tests/callbacks/settings/<area>.py``).
"""

from typing import Any

from lightning_optim._deprecation import moved
from lightning_optim.callbacks.compression_report import CompressionReport
from lightning_optim.callbacks.distillation import KnowledgeDistillation
from lightning_optim.callbacks.early_stopping import EarlyStopping
from lightning_optim.callbacks.exact_resume import ExactResume
from lightning_optim.callbacks.interrupt_checkpoint import InterruptCheckpoint
from lightning_optim.callbacks.lr_scheduling import LRScheduling
from lightning_optim.callbacks.non_finite_guard import NonFiniteError, NonFiniteGuard
from lightning_optim.callbacks.phases import (
    CompressionPhase,
    OffersModel,
    find_phase,
    model_is_changing,
    offered_model,
    phase_done,
    phase_states,
    target_model,
)
from lightning_optim.callbacks.pipeline import CompressionPipeline, WarmStart
from lightning_optim.callbacks.pruning import ProgressivePruning
from lightning_optim.callbacks.quantization import PostTrainingQuantization, QuantizationAwareTraining
from lightning_optim.callbacks.weight_sharing import WeightSharing
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
    StepDecay,
)

__all__ = [
    "CompressionPipeline",
    "CompressionReport",
    "WarmStart",
    "KnowledgeDistillation",
    "ProgressivePruning",
    "PostTrainingQuantization",
    "QuantizationAwareTraining",
    "WeightSharing",
    "EarlyStopping",
    "LRScheduling",
    "LR_SCHEDULES",
    "Constant",
    "CosineAnnealing",
    "Cyclic",
    "ExponentialDecay",
    "LRSchedule",
    "MultiStep",
    "OneCycle",
    "Polynomial",
    "ReduceOnPlateau",
    "StepDecay",
    "NonFiniteError",
    "NonFiniteGuard",
    "ExactResume",
    "InterruptCheckpoint",
    "CompressionPhase",
    "find_phase",
    "OffersModel",
    "model_is_changing",
    "offered_model",
    "phase_done",
    "phase_states",
    "target_model",
]

# deprecated (0.2.x): `SCHEDULES` is now `LR_SCHEDULES`; removed in 0.3.0
_RENAMED = {"SCHEDULES": f"{__name__}:LR_SCHEDULES"}
_moved = moved(__name__, __name__, renamed=_RENAMED)


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
