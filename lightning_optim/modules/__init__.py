"""LightningModules and the loss-term extension point."""

from lightning_optim.modules.classification import ClassificationModule
from lightning_optim.modules.loss_terms import (
    LossTermProvider,
    StepContext,
    combine_losses,
    loss_term_providers,
    unpack_batch,
)
from lightning_optim.modules.optimizers import OPTIMIZERS, optimizer_factory

__all__ = [
    "OPTIMIZERS",
    "ClassificationModule",
    "LossTermProvider",
    "StepContext",
    "combine_losses",
    "loss_term_providers",
    "optimizer_factory",
    "unpack_batch",
]
