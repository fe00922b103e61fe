"""An ensemble of classifiers that averages their predictions: the teacher Hinton et al. (2015) distill.

Two ways to combine the members (``combine``):

- ``"logits"``: the mean of the members' logits. That is the geometric mean of their class distributions,
  renormalized, at *every* temperature: ``softmax(mean_i z_i / T)`` is proportional to
  ``prod_i softmax(z_i / T) ** (1 / n)``, so it serves any temperature or temperature schedule.
- ``"probabilities"``: the arithmetic mean of the members' distributions at ``temperature`` (how Hinton et
  al. average an ensemble's predictions). The output ``T * log(mean_i softmax(z_i / T))`` is a logit vector
  whose ``softmax(. / T)`` is exactly that mean, so distilling at the same temperature uses it as is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.weights import load_weights

__all__ = ["ENSEMBLE_COMBINES", "LogitEnsemble"]

#: ``combine`` name -> what is averaged
ENSEMBLE_COMBINES: dict[str, str] = {
    "logits": "the members' logits (geometric mean of their distributions at every temperature)",
    "probabilities": "the members' distributions at `temperature` (arithmetic mean)",
}


class LogitEnsemble(nn.Module):
    """Classifiers run side by side on the same input; the output is the mean of their logits.

    Args:
        members: the member networks (at least one). They must return logits of one shape; they need not
            share an architecture.
        checkpoints: optional weights for each member, in order (Lightning checkpoints of our modules or saved
            state dicts, read with ``weights_only=True``); ``None`` (or omitted) keeps the weights the members
            have.
        combine: ``"logits"`` (default) or ``"probabilities"`` (see the module docs).
        temperature: with ``combine="probabilities"``, the temperature at which the distributions are
            averaged: give the distillation temperature. Ignored for ``"logits"``.

    Raises:
        TypeError: a member is not an ``nn.Module``.
        ValueError: an unknown ``combine``; ``temperature`` not > 0; no members; ``checkpoints`` of another length than ``members``; a checkpoint that is missing,
            unreadable or does not fit its member (named by its position); members whose outputs differ in
            shape (at the first forward).

    Example::

        from lightning_optim.models import LeNet300100, LogitEnsemble

        teacher = LogitEnsemble(
            [LeNet300100(hidden=(1200, 1200), dropout=0.3) for _ in range(3)],
            checkpoints=["runs/t0.ckpt", "runs/t1.ckpt", "runs/t2.ckpt"],
        )

    In YAML (for example as ``KnowledgeDistillation``'s ``teacher``)::

        teacher:
          class_path: lightning_optim.models.LogitEnsemble
          init_args:
            members:
              - {class_path: lightning_optim.models.LeNet300100, init_args: {hidden: [1200, 1200]}}
              - {class_path: lightning_optim.models.LeNet300100, init_args: {hidden: [1200, 1200]}}
            checkpoints: [runs/t0.ckpt, runs/t1.ckpt]
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        checkpoints: Sequence[str | os.PathLike] | None = None,
        combine: str = "logits",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("combine", combine, ENSEMBLE_COMBINES)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
        self.combine = combine
        self.temperature = float(temperature)
        members = list(members)
        if not members:
            raise ValueError("`members` must hold at least one network, got none.")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(f"`members[{i}]` must be an nn.Module, got {type(member).__name__}.")
        if checkpoints is not None:
            checkpoints = list(checkpoints)
            if len(checkpoints) != len(members):
                raise ValueError(
                    f"`checkpoints` must give one file per member ({len(members)}), got {len(checkpoints)}."
                )
            for i, (member, path) in enumerate(zip(members, checkpoints)):
                load_weights(member, path, f"checkpoints[{i}]")
        self.members = nn.ModuleList(members)
        num_classes = {getattr(m, "num_classes", None) for m in members}
        if len(num_classes) == 1:
            self.num_classes = num_classes.pop()

    def forward(self, x: Tensor) -> Tensor:
        outputs = [member(x) for member in self.members]
        shapes = {tuple(o.shape) for o in outputs}
        if len(shapes) != 1:
            raise ValueError(
                "`members` must return logits of one shape; got "
                + ", ".join(f"members[{i}]: {tuple(o.shape)}" for i, o in enumerate(outputs))
                + "."
            )
        stacked = torch.stack(outputs)
        if self.combine == "logits":
            return stacked.mean(0)
        t = self.temperature
        # T * log(mean_i softmax(z_i / T)), computed in log space
        log_mean = torch.logsumexp(torch.log_softmax(stacked.float() / t, -1), 0) - math.log(len(outputs))
        return (t * log_mean).to(stacked.dtype)
