"""Deprecated: ``WarmStart`` and ``CompressionPipeline`` moved to :mod:`lightning_optim.callbacks.pipeline`,
``run_digits_pipeline`` to :mod:`lightning_optim.demo`, and ``load_model_weights`` became
:func:`lightning_optim.weights.load_weights` (this path is removed in 0.3.0)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from lightning_optim._deprecation import REMOVED_IN, moved

__getattr__ = moved(
    __name__,
    "lightning_optim.callbacks.pipeline",
    renamed={"run_digits_pipeline": "lightning_optim.demo:run_digits_pipeline"},
)


def load_model_weights(
    checkpoint: str, model: nn.Module, attribute: str = "model", strict: bool = True
) -> Any:
    """Deprecated: ``lightning_optim.weights.load_weights(model, checkpoint, "checkpoint", prefix=f"{attribute}.")``."""
    from lightning_optim.weights import load_weights

    warnings.warn(
        "`lightning_optim.compression.pipeline.load_model_weights(checkpoint, model, attribute, strict)` moved to "
        "`lightning_optim.weights.load_weights(model, checkpoint, option, prefix=f'{attribute}.', strict=strict)`; "
        f"the old path is removed in lightning-optim {REMOVED_IN}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_weights(model, checkpoint, "checkpoint", prefix=f"{attribute}.", strict=strict)
