"""The small contract by which callbacks coordinate without knowing each other's internals.

A callback that changes the model over a schedule (pruning ramp, quantization-aware training,
distillation) is a *phase*: it has a ``phase_name`` and reports its state with ``phase_state(trainer)``,
one of ``"pending"`` (not started), ``"active"`` (still changing the model) or ``"done"`` (finished; the
model is only fine-tuned from here). Others ask through the functions below:

- :class:`~lightning_optim.callbacks.EarlyStopping` holds off while any phase is ``pending``/``active``
  (:func:`model_is_changing`), so a run is not stopped in the middle of a pruning ramp.
- a QAT callback with ``start_after="pruning"`` starts at the first epoch at which the pruning phase is
  ``done`` (:func:`phase_done`).
- the compression report records a row at each phase boundary (:func:`phase_states`).

What a user reads is not the contract's word: distillation without an end epoch is ``"done"`` for the contract
from its first epoch (it never holds off early stopping) while it still distills every epoch. Messages say what
runs, in plain text, through :func:`phase_status`/:func:`describe_phases` (``"distillation: running (epoch 3
of 5)"``); a phase says more about itself with an optional ``describe_phase(trainer, finished)`` method.
:func:`phase_states` gives a dict that prints that way too.

A callback that ends with a model *other than the network it trained* (the int8 model of quantization)
offers it as ``compressed_model`` (:class:`OffersModel`; ``None`` until it exists); the report measures it
through :func:`offered_model`. A callback that changes the network in place (compaction) offers nothing: the
network itself is the result.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from torch import nn

PhaseState = Literal["pending", "active", "done"]
PHASE_STATES: tuple[str, ...] = ("pending", "active", "done")


@runtime_checkable
class CompressionPhase(Protocol):
    """Implemented by callbacks that change the model over a schedule."""

    phase_name: str

    def phase_state(self, trainer: Any) -> PhaseState:
        """``"pending"``, ``"active"`` or ``"done"`` at the trainer's current position."""


def phases(trainer: Any) -> list[Any]:
    """The callbacks of ``trainer`` that are compression phases, in the trainer's order."""
    return [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, CompressionPhase)]


#: how each contract state reads to a user, where the phase does not say more (:func:`phase_status`)
STATE_WORDS: dict[str, str] = {"pending": "pending", "active": "running", "done": "done"}
#: how each contract state reads once training has ended
FINISHED_WORDS: dict[str, str] = {
    "pending": "never started",
    "active": "stopped before its end",
    "done": "done",
}


class PhaseStates(dict):
    """``{phase_name: state}`` (a plain ``dict`` of the contract's words, compared and copied as one) that
    prints as what runs: ``str()`` and f-strings give :func:`describe_phases`'s text, taken when it was made,
    so that a message like ``f"... {phase_states(trainer)}"`` never shows a raw dict to a user."""

    def __init__(self, states: dict[str, PhaseState], text: str = "") -> None:
        super().__init__(states)
        self.text = text

    def __str__(self) -> str:
        return self.text or "no compression phase"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def phase_states(trainer: Any) -> PhaseStates:
    """``{phase_name: state}`` for every phase on the trainer; printed, it reads as :func:`describe_phases`."""
    found = phases(trainer)
    return PhaseStates(
        {cb.phase_name: cb.phase_state(trainer) for cb in found}, _describe(found, trainer, False)
    )


def phase_status(cb: Any, trainer: Any, finished: bool = False) -> str:
    """What phase ``cb`` is doing at the trainer's position, in plain words: ``"pending"``, ``"running"``,
    ``"done"``, with details where the phase gives them (``"running (epoch 3 of 5)"``).

    The phase's own ``describe_phase(trainer, finished)`` answers where it has one (and returns a string);
    else the contract state's word (:data:`STATE_WORDS`). With ``finished=True`` (training has ended) a phase
    that never started reads ``"never started"``, one cut short ``"stopped before its end"``
    (:data:`FINISHED_WORDS`).
    """
    describe = getattr(cb, "describe_phase", None)
    if callable(describe):
        text = describe(trainer, finished=finished)
        if isinstance(text, str) and text:
            return text
    state = cb.phase_state(trainer)
    return (FINISHED_WORDS if finished else STATE_WORDS).get(state, str(state))


def _describe(found: list[Any], trainer: Any, finished: bool) -> str:
    return "; ".join(f"{cb.phase_name}: {phase_status(cb, trainer, finished)}" for cb in found)


def describe_phases(trainer: Any, finished: bool = False) -> str:
    """Every phase of ``trainer`` in one line of plain text, ``"pruning: done; distillation: running (epoch 3
    of 5)"`` (:func:`phase_status`); ``"no compression phase"`` when there is none."""
    return _describe(phases(trainer), trainer, finished) or "no compression phase"


def transition_label(trainer: Any, name: str, state: str, previous: str | None = None) -> str:
    """The label of a measurement taken at the end of the epoch in which phase ``name`` went from ``previous``
    to ``state``: it says what the measurement holds, not when the phase changed.

    Such a measurement already holds that epoch's work: a pruning ramp whose first step came in that epoch is
    measured *after* it (already sparse), so it reads ``"after the first pruning step"`` (``"after 3 pruning
    steps"`` where a phase exposes ``phase_steps_done``), another phase that began ``"after the first epoch of
    <name>"`` (also distillation without an end epoch, ``"done"`` for the contract from its first epoch); one
    that ended ``"<name> done"``, one whose schedule ended while it runs on ``"<name> schedule done"``.
    """
    cb = find_phase(trainer, name)
    running = cb is not None and phase_status(cb, trainer).startswith("running")
    began = previous in (None, "pending") and (state == "active" or (state == "done" and running))
    if began:
        steps = getattr(cb, "phase_steps_done", None)
        if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
            return f"after the first {name} step" if steps == 1 else f"after {steps} {name} steps"
        return f"after the first epoch of {name}"
    if state == "done":  # still running: its schedule (a ramp, the observation of ranges) is over
        return f"{name} schedule done" if running else f"{name} done"
    return f"{name} {STATE_WORDS.get(state, state)}"


def model_is_changing(trainer: Any, ignore: tuple[str, ...] = ()) -> bool:
    """Whether any phase (other than those named in ``ignore``) is still pending or active."""
    return any(cb.phase_state(trainer) != "done" for cb in phases(trainer) if cb.phase_name not in ignore)


def find_phase(trainer: Any, name: str) -> Any | None:
    """The phase callback called ``name``, or ``None``."""
    for cb in phases(trainer):
        if cb.phase_name == name:
            return cb
    return None


def phase_done(trainer: Any, name: str) -> bool:
    """Whether the phase called ``name`` is done.

    Raises:
        ValueError: if no callback on the trainer is a phase called ``name``.
    """
    cb = find_phase(trainer, name)
    if cb is None:
        raise ValueError(
            f"No callback with phase_name={name!r} on the Trainer; phases present: {list(phase_states(trainer))}."
        )
    return cb.phase_state(trainer) == "done"


@runtime_checkable
class Compacts(Protocol):
    """Implemented by phases that can remove, during ``fit``, what they have zeroed (structured pruning): a
    later phase asks before it starts (quantization-aware training compacts first)."""

    phase_name: str

    def compact(self, trainer: Any, pl_module: Any) -> bool:
        """Compact the network now; whether anything was done."""


@runtime_checkable
class OffersModel(Protocol):
    """Implemented by callbacks that end with a compressed model other than the network they train."""

    @property
    def compressed_model(self) -> nn.Module | None:
        """The compressed model (for example int8), or ``None`` before it exists."""


def offered_model(trainer: Any) -> nn.Module | None:
    """The compressed model offered by the last callback of ``trainer`` that has one, or ``None``."""
    found = None
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, OffersModel):
            model = cb.compressed_model
            if isinstance(model, nn.Module):
                found = model
    return found


def target_model(pl_module: nn.Module, attribute: str = "model") -> nn.Module:
    """The network a compression callback works on: ``pl_module.<attribute>`` where that is an
    ``nn.Module`` (as in :class:`~lightning_optim.modules.ClassificationModule`), else ``pl_module`` itself."""
    inner = getattr(pl_module, attribute, None)
    return inner if isinstance(inner, nn.Module) else pl_module
