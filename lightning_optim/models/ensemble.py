"""An ensemble of classifiers that averages their logits: the teacher Hinton et al. (2015) distill.

Averaging the members' logits is the geometric mean of their class distributions, renormalized, at *every*
temperature: ``softmax(mean_i z_i / T)`` is proportional to ``prod_i softmax(z_i / T) ** (1 / n)``. So one
ensemble module serves as a distillation teacher for any temperature or temperature schedule.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_optim.weights import load_weights

__all__ = ["LogitEnsemble"]


class LogitEnsemble(nn.Module):
    """Classifiers run side by side on the same input; the output is the mean of their logits.

    Args:
        members: the member networks (at least one). They must return logits of one shape; they need not
            share an architecture.
        checkpoints: optional weights for each member, in order (Lightning checkpoints of our modules or saved
            state dicts, read with ``weights_only=True``); ``None`` (or omitted) keeps the weights the members
            have.

    Raises:
        TypeError: a member is not an ``nn.Module``.
        ValueError: no members; ``checkpoints`` of another length than ``members``; a checkpoint that is missing,
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
        self, members: Sequence[nn.Module], checkpoints: Sequence[str | os.PathLike] | None = None
    ) -> None:
        super().__init__()
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
        return torch.stack(outputs).mean(0)
