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


def phase_states(trainer: Any) -> dict[str, PhaseState]:
    """``{phase_name: state}`` for every phase on the trainer."""
    return {cb.phase_name: cb.phase_state(trainer) for cb in phases(trainer)}


def model_is_changing(trainer: Any, ignore: tuple[str, ...] = ()) -> bool:
    """Whether any phase (other than those named in ``ignore``) is still pending or active."""
    return any(state != "done" for name, state in phase_states(trainer).items() if name not in ignore)


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
