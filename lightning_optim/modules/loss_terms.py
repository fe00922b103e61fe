"""The extension point by which callbacks add loss terms to a training step and see its logits.

A :class:`StepContext` describes one forward pass (inputs, targets, logits, the task loss). Any object
that implements :class:`LossTermProvider` (usually a callback on the Trainer) is asked for extra terms
with :func:`collect_loss_terms`, and may down-weight the task loss (distillation's ``1 - alpha``).

:class:`~lightning_optim.modules.ClassificationModule` calls it in ``training_step``. A user's own
``LightningModule`` takes part with three lines::

    ctx = StepContext(stage="train", inputs=x, targets=y, logits=logits, task_loss=ce, batch=batch, batch_idx=i)
    loss, parts = combine_losses(self, ctx)
    self.log_dict({f"train_{k}": v for k, v in parts.items()})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class StepContext:
    """What a loss-term provider may look at for one step.

    Attributes:
        stage: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
        inputs: the model inputs after the data module's device transforms (normalized, augmented).
        targets: integer class labels.
        logits: the model's outputs for ``inputs``.
        task_loss: the module's own loss (for example cross-entropy), before any weighting.
        batch: the batch as the data loader produced it.
        batch_idx: index of the batch in the epoch.
        sample_index: dataset indices of the samples, where the data module provides them (else ``None``).
        extras: free-form values a module may pass on.
    """

    stage: str
    inputs: Any
    targets: Tensor
    logits: Tensor
    task_loss: Tensor
    batch: Any = None
    batch_idx: int = 0
    sample_index: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LossTermProvider(Protocol):
    """Implemented by callbacks that add terms to the training loss."""

    def loss_terms(self, trainer: Any, pl_module: Any, ctx: StepContext) -> Mapping[str, Tensor]:
        """Return named scalar terms that are added to the loss (already weighted)."""

    def task_loss_weight(self, trainer: Any, pl_module: Any, ctx: StepContext) -> float:
        """Return the factor applied to the task loss (1.0 leaves it as it is)."""


def loss_term_providers(pl_module: Any) -> list[Any]:
    """The callbacks of the module's Trainer that provide loss terms (empty when no Trainer is attached)."""
    trainer = getattr(pl_module, "_trainer", None)
    if trainer is None:
        return []
    return [cb for cb in trainer.callbacks if callable(getattr(cb, "loss_terms", None))]


def combine_losses(pl_module: Any, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
    """Combine the task loss with the terms of every provider.

    Returns:
        The total loss and a dict of its parts (``task``, each provider's named terms, ``total``), detached.
    """
    trainer = getattr(pl_module, "_trainer", None)
    weight = 1.0
    terms: dict[str, Tensor] = {}
    for provider in loss_term_providers(pl_module):
        weight_fn = getattr(provider, "task_loss_weight", None)
        if callable(weight_fn):
            weight *= float(weight_fn(trainer, pl_module, ctx))
        for name, value in provider.loss_terms(trainer, pl_module, ctx).items():
            if name in terms:
                raise ValueError(
                    f"Two loss-term providers both returned a term named {name!r}; names must be unique."
                )
            terms[name] = value
    total = ctx.task_loss * weight if weight != 1.0 else ctx.task_loss
    for value in terms.values():
        total = total + value.to(total.dtype) if value.dtype != total.dtype else total + value
    parts = {"task": ctx.task_loss.detach(), **{k: v.detach() for k, v in terms.items()}}
    parts["total"] = total.detach()
    return total, parts


def unpack_batch(batch: Any) -> tuple[Any, Tensor, Tensor | None]:
    """Split a batch into ``(inputs, targets, sample_index)``.

    Accepts ``(x, y)``, ``(x, y, index)`` and dicts with ``input``/``target``/optional ``index`` keys.
    """
    if isinstance(batch, Mapping):
        return batch["input"], batch["target"], batch.get("index")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            return batch[0], batch[1], batch[2]
    raise TypeError(
        "A batch must be (inputs, targets), (inputs, targets, index) or a dict with 'input' and 'target' keys; "
        f"got {type(batch).__name__}."
    )


def zero_like_loss(reference: Tensor) -> Tensor:
    """A zero scalar on the device and dtype of ``reference`` (for providers with nothing to add)."""
    return torch.zeros((), device=reference.device, dtype=reference.dtype)
