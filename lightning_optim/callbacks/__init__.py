"""Callbacks: LR scheduling, early stopping, pruning, quantization-aware training, distillation, reports.

Every callback exported here must have an entry in ``tests/callbacks/callback_settings.py``.
"""

from lightning_optim.callbacks.non_finite_guard import NonFiniteError, NonFiniteGuard
from lightning_optim.callbacks.phases import (
    CompressionPhase,
    find_phase,
    model_is_changing,
    phase_done,
    phase_states,
    target_model,
)

__all__ = [
    "NonFiniteError",
    "NonFiniteGuard",
    "CompressionPhase",
    "find_phase",
    "model_is_changing",
    "phase_done",
    "phase_states",
    "target_model",
]
