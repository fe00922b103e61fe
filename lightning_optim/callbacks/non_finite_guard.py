"""Stop a run at the first non-finite loss or weight, before it reaches a checkpoint."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


class NonFiniteError(RuntimeError):
    """Raised when a loss or weight stops being finite."""


class NonFiniteGuard(Callback):
    """Detect a NaN/inf loss (before backward) or weight, and stop the run with a message naming the step.

    The loss is checked in ``on_before_backward``, before any gradient reaches the weights, and the run is
    stopped by raising :class:`NonFiniteError`. Lightning then saves nothing more, so the last checkpoint
    on disk is the last good one: resume from it with ``ckpt_path="last"`` (after fixing the cause).
    Weights are also checked every ``check_weights_every_n_steps`` optimizer steps. Under DDP the decision is
    reduced over all ranks (any rank non-finite stops all of them), so no rank is left waiting.

    Args:
        check_weights_every_n_steps: how often to check every parameter (0 disables the weight check).
        check_loss: check the training loss before every backward.

    Raises:
        ValueError: for a negative ``check_weights_every_n_steps``.

    Example::

        trainer = Trainer(callbacks=[NonFiniteGuard(check_weights_every_n_steps=100)])
    """

    #: checks the loss and each rank's shards of the weights: works on sharded parameters
    sharded_parameters = "supported"

    def __init__(self, check_weights_every_n_steps: int = 50, check_loss: bool = True) -> None:
        super().__init__()
        if check_weights_every_n_steps < 0:
            raise ValueError(
                f"`check_weights_every_n_steps` must be >= 0, got {check_weights_every_n_steps}."
            )
        self.check_weights_every_n_steps = check_weights_every_n_steps
        self.check_loss = check_loss
        self.checks = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(check_weights_every_n_steps=self.check_weights_every_n_steps)

    # ------------------------------------------------------------------------------------------- hooks
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self.check_loss:
            self._run_loss_check(trainer, loss)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.check_weights_every_n_steps
        if every and trainer.global_step % every == 0:
            self._run_weight_check(trainer, pl_module)

    # ------------------------------------------------------------------------------------------- logic
    def _where(self, trainer: pl.Trainer) -> str:
        return f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {trainer.fit_loop.batch_idx})"

    def _any_rank(self, trainer: pl.Trainer, bad: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def _run_loss_check(self, trainer: pl.Trainer, loss: Tensor) -> None:
        self.checks += 1
        bad = self._any_rank(trainer, not bool(torch.isfinite(loss.detach()).all()))
        if not bad:
            return
        raise NonFiniteError(
            f"Non-finite loss ({loss.detach().float().item()}) at {self._where(trainer)}. The run was stopped before "
            "the update; the last checkpoint on disk is the last good one."
        )

    def _run_weight_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad_names = [n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if self._any_rank(trainer, bool(bad_names)):
            raise NonFiniteError(
                f"Non-finite weights at {self._where(trainer)} in {bad_names[:5] or 'another rank'}. The run was "
                "stopped; the last checkpoint on disk is the last good one."
            )

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"checks": self.checks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.checks = int(state_dict.get("checks", 0))
