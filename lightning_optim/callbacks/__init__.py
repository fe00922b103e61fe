"""Callbacks: LR scheduling, early stopping, pruning, quantization-aware training, distillation, reports.

Every callback exported here must have an entry in ``tests/callbacks/callback_settings.py``.
"""

from lightning_optim.callbacks.compression_report import CompressionReport
from lightning_optim.callbacks.distillation import KnowledgeDistillation
from lightning_optim.callbacks.early_stopping import EarlyStopping
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
from lightning_optim.functional.lr_scheduling.schedules import (
    SCHEDULES,
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
    "EarlyStopping",
    "LRScheduling",
    "SCHEDULES",
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
    "CompressionPhase",
    "find_phase",
    "OffersModel",
    "model_is_changing",
    "offered_model",
    "phase_done",
    "phase_states",
    "target_model",
]
