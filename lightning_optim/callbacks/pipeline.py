"""Prune, then quantize, then distill, in one ``fit``: the two small pieces a recipe needs, and a demo.

The compression callbacks coordinate only through the phase contract (:mod:`lightning_optim.callbacks.phases`):
pruning (``phase_name="pruning"``) ramps the sparsity and is ``done`` at the end of its ramp; quantization-aware
training starts with ``start_after: pruning`` (the first epoch at which pruning is done) and converts to int8
at fit end; distillation from a dense teacher is a loss term during fine-tuning and QAT; EarlyStopping holds
off while any phase is not done; :class:`~lightning_optim.callbacks.CompressionReport` records a row at each
phase boundary. This module adds:

- :class:`WarmStart`: the student starts from the dense checkpoint's weights (the usual "prune a trained
  network" start) - loaded at ``setup``, so a resumed run still restores its own checkpoint over it;
- :class:`CompressionPipeline`: checks the recipe (stage order, overlaps the order forbids, distillation
  without a teacher) at setup, and at every epoch start that no stage is active before the stages it
  follows are done; records the hand-offs (epoch at which each phase changed state) and says them in plain text
  (``CompressionPipeline: start of epoch 2: distillation: running (epoch 1 of 4)``), and what each phase did at
  the end of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_optim.callbacks.phases import find_phase, phase_states, phase_status, phases, target_model
from lightning_optim.weights import load_weights

#: stage name -> the phase_name of the callback that implements it
STAGE_PHASES: dict[str, str] = {
    "pruning": "pruning",
    "quantization": "quantization",
    "distillation": "distillation",
}


class WarmStart(Callback):
    """Start training from the network weights of a checkpoint (for example the dense teacher's).

    The weights are loaded at ``setup``, before Lightning restores a checkpoint passed as ``ckpt_path``, so
    resuming a pipeline run continues from its own checkpoint.

    Args:
        checkpoint: a Lightning checkpoint of a module with the network in ``attribute`` (as
            :class:`~lightning_optim.modules.ClassificationModule`), or a plain state dict of the network.
        attribute: the LightningModule attribute holding the network.
        strict: require an exact key match.

    Raises:
        FileNotFoundError: at setup, if ``checkpoint`` does not exist.
        ValueError: at setup, if its weights do not fit the network.

    Example::

        Trainer(callbacks=[WarmStart("artifacts/lenet5/teacher.ckpt"), ProgressivePruning(...)])
    """

    #: loads at setup, before `configure_model` shards the network: works on sharded parameters
    sharded_parameters = "supported"

    def __init__(self, checkpoint: str, attribute: str = "model", strict: bool = True) -> None:
        if not checkpoint:
            raise ValueError("`checkpoint` must be the path of a checkpoint or state dict.")
        self.checkpoint = checkpoint
        self.attribute = attribute
        self.strict = strict
        self.loaded = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(checkpoint=self.checkpoint)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._run_load(pl_module)

    def _run_load(self, pl_module: pl.LightningModule) -> None:
        if self.loaded:
            return
        load_weights(
            target_model(pl_module, self.attribute),
            self.checkpoint,
            "checkpoint",
            prefix=f"{self.attribute}.",
            strict=self.strict,
        )
        self.loaded = True
        rank_zero_info(f"WarmStart: network weights loaded from {self.checkpoint}.")

    def state_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = bool(state_dict.get("loaded", False))


def _epoch_bounds(cb: Any) -> tuple[int | None, int | None]:
    """(first epoch, epoch from which it is done) of a phase callback, where its settings say so."""
    name = getattr(cb, "phase_name", "")
    if name == "pruning" and getattr(cb, "unit", "epoch") == "epoch":
        return int(cb.start), int(cb.end)
    if name == "quantization":
        return (int(cb.start_epoch) if getattr(cb, "start_after", None) is None else None), None
    if name == "distillation":
        return int(getattr(cb, "start_epoch", 0)), getattr(cb, "end_epoch", None)
    return None, None


class CompressionPipeline(Callback):
    """Check and trace a compression recipe: the stages run in ``order`` and hand over through phases.

    At setup it checks that every stage of ``order`` has its callback on the Trainer, that a stage does not
    start before the previous one ends where the settings make that certain (QAT with a ``start_epoch``
    before the pruning ramp's end and no ``start_after``), and, with ``distill=True``, that a
    distillation callback (which always has a teacher) is present and starts no earlier than
    ``distill_from``. At each epoch start it checks that no stage is active while an earlier one is not
    done, and records every change of phase state in :attr:`handoffs` (in its state). It prints, on rank 0,
    one line whenever what a phase does changes, in plain words
    (:func:`~lightning_optim.callbacks.phases.phase_status`: ``pruning: running (pruning step 1 of 4, target
    35%)``, ``distillation: running (epoch 1 of 6)``: distillation without an end epoch is ``done`` for the
    contract from its first epoch but runs to the end of training), and at the end of training what each phase
    did (``distillation: done``, ``quantization: done (int8)``).

    Args:
        order: the stages in the order they must run, from ``pruning`` and ``quantization``.
        distill: require distillation from a teacher.
        distill_from: the stage distillation must not start before (``pruning``: not during the ramp, i.e.
            during fine-tuning and QAT); ``None`` allows any start.

    Raises:
        ValueError: for unknown or repeated stage names, or a ``distill_from`` not in ``order``; at setup, for
            a recipe whose stages are missing or overlap, or ``distill=True`` without a distillation callback.
        RuntimeError: during fit, if a stage becomes active while an earlier stage is not done.

    Example::

        Trainer(callbacks=[ProgressivePruning(...), QuantizationAwareTraining(start_after="pruning"),
                           KnowledgeDistillation(teacher=..., teacher_checkpoint=...), CompressionPipeline()])
    """

    #: orders the phases and touches no parameters (each phase declares its own support)
    sharded_parameters = "supported"

    def __init__(
        self,
        order: Sequence[str] = ("pruning", "quantization"),
        distill: bool = True,
        distill_from: str | None = "pruning",
    ) -> None:
        order = tuple(order)
        unknown = [s for s in order if s not in ("pruning", "quantization")]
        if unknown or not order:
            raise ValueError(f"`order` must list stages from ['pruning', 'quantization'], got {list(order)}.")
        if len(set(order)) != len(order):
            raise ValueError(f"`order` names a stage twice: {list(order)}.")
        if distill_from is not None and distill_from not in order:
            raise ValueError(f"`distill_from` must be one of {list(order)} or None, got {distill_from!r}.")
        self.order = order
        self.distill = distill
        self.distill_from = distill_from
        self.handoffs: list[dict[str, Any]] = []
        self._last: dict[str, str] = {}
        self._last_words: dict[str, str] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(order=self.order)

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._run_check_recipe(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_trace(trainer, "epoch start")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_trace(trainer, "train end", finished=True)

    # ------------------------------------------------------------------------------------------ work
    def _run_check_recipe(self, trainer: pl.Trainer) -> None:
        callbacks = {s: find_phase(trainer, STAGE_PHASES[s]) for s in self.order}
        missing = [s for s, cb in callbacks.items() if cb is None]
        if missing:
            raise ValueError(
                f"CompressionPipeline: the recipe lists stages {list(self.order)} but the Trainer has no callback for "
                f"{missing} (phases present: {list(phase_states(trainer))})."
            )
        for earlier, later in zip(self.order, self.order[1:]):
            _, earlier_end = _epoch_bounds(callbacks[earlier])
            later_start, _ = _epoch_bounds(callbacks[later])
            if earlier_end is not None and later_start is not None and later_start < earlier_end:
                raise ValueError(
                    f"CompressionPipeline: {later} starts at epoch {later_start}, before {earlier} ends at epoch "
                    f"{earlier_end}, but the recipe runs {earlier} first. Start {later} at epoch >= {earlier_end}, "
                    f"or with `start_after: {STAGE_PHASES[earlier]}`."
                )
        if self.distill:
            kd = find_phase(trainer, STAGE_PHASES["distillation"])
            if kd is None or getattr(kd, "teacher", None) is None:
                raise ValueError(
                    "CompressionPipeline: `distill=True` but there is no distillation callback with a teacher on the "
                    "Trainer; add KnowledgeDistillation(teacher=..., teacher_checkpoint=...) or set `distill: false`."
                )
            if self.distill_from is not None:
                kd_start, _ = _epoch_bounds(kd)
                _, from_end = _epoch_bounds(callbacks[self.distill_from])
                if kd_start is not None and from_end is not None and kd_start < from_end:
                    raise ValueError(
                        f"CompressionPipeline: distillation starts at epoch {kd_start}, during {self.distill_from} "
                        f"(until epoch {from_end}); the recipe distills after it: set its `start_epoch` >= {from_end}."
                    )

    def _run_trace(self, trainer: pl.Trainer, when: str, finished: bool = False) -> None:
        states = dict(phase_states(trainer))
        for earlier, later in zip(self.order, self.order[1:]):
            e, l_ = states.get(STAGE_PHASES[earlier]), states.get(STAGE_PHASES[later])
            if l_ in ("active", "done") and e != "done" and (self._last.get(STAGE_PHASES[later]) != l_):
                raise RuntimeError(
                    f"CompressionPipeline: {later} is {l_} at epoch {trainer.current_epoch} while {earlier} is {e}; "
                    f"the recipe runs {earlier} first (use `start_after: {STAGE_PHASES[earlier]}` on {later})."
                )
        callbacks = {cb.phase_name: cb for cb in phases(trainer)}
        said = []
        for name, state in states.items():
            status = phase_status(callbacks[name], trainer, finished=finished)
            word = status.split(" (", 1)[0]  # "running", "done", "pending"...: what is said changes with it
            if self._last.get(name) != state:
                self.handoffs.append(
                    {
                        "phase": name,
                        "state": state,
                        "status": status,
                        "epoch": trainer.current_epoch,
                        "step": trainer.global_step,
                        "when": when,
                    }
                )
            if self._last.get(name) != state or self._last_words.get(name) != word:
                said.append(f"{name}: {status}")
            self._last_words[name] = word
        if said:
            epoch = trainer.current_epoch
            at = (
                "end of training"
                if finished
                else (f"start of epoch {epoch}" if when == "epoch start" else f"epoch {epoch} ({when})")
            )
            # one phase: one line; several: one line each, under the moment (readable in 100 columns)
            rank_zero_info(
                f"CompressionPipeline: {at}:" + ("\n  " if len(said) > 1 else " ") + "\n  ".join(said)
            )
        self._last = states

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "handoffs": [dict(h) for h in self.handoffs],
            "last": dict(self._last),
            "last_words": dict(self._last_words),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.handoffs = [dict(h) for h in state_dict.get("handoffs", [])]
        self._last = dict(state_dict.get("last", {}))
        self._last_words = dict(state_dict.get("last_words", {}))


__all__ = ["STAGE_PHASES", "CompressionPipeline", "WarmStart"]
