"""The small interface between our quantization callbacks and a quantization stack.

Two words, two meanings (as in ``torch.backends.quantized.engine``):

- the **backend** is the quantization stack, a :class:`QuantizationBackend` subclass registered by name in
  :data:`BACKENDS`: ``"eager"`` (eager ``torch.ao.quantization``); PT2E would be another one;
- the **engine** is the kernel target the stack converts for: ``"x86"`` or ``"fbgemm"``
  (:attr:`QuantizationBackend.engines` lists what a stack supports).

torch's quantization stack is moving (eager ``torch.ao.quantization``, FX, PT2E in torchao). The callbacks
only talk to a :class:`QuantizationBackend`; a new stack is a new subclass registered in
:data:`BACKENDS`, without touching the callbacks.

A backend works *in place* for training (``prepare_qat`` changes the given float model into a
fake-quantized one that trains with the same ``nn.Parameter`` objects, so optimizers keep working) and
*out of place* for the results (``convert`` and ``prepare_ptq`` leave their input alone).
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.functional.quantization.fusion import FusionPlan

#: the stack the callbacks use unless told otherwise
DEFAULT_BACKEND = "eager"
#: the kernel target unless told otherwise
DEFAULT_ENGINE = "x86"
#: the release that drops ``backend="x86"``/``"fbgemm"`` meaning the engine (and ``export_format`` for
#: :attr:`QuantizationBackend.file_format`)
ENGINE_AS_BACKEND_REMOVED_IN = "0.3.0"


#: buffer name endings that define the quantization grid of a prepared model
GRID_BUFFERS: tuple[str, ...] = (
    "scale",
    "zero_point",
    "min_val",
    "max_val",
    "observer_enabled",
    "fake_quant_enabled",
)


class QuantizationError(ValueError):
    """A model that a quantization backend cannot prepare, calibrate or convert; the message says why."""


class QuantizationBackend(ABC):
    """A quantization stack: prepare for QAT or PTQ, convert to int8, export, load.

    Subclasses set :attr:`name` (the string users pass as ``backend=``), :attr:`engines` (the kernel targets
    they convert for, the first being the default), :attr:`file_format` (what :meth:`export` writes) and
    :attr:`prepared_marker`; an instance has its :attr:`engine`.
    """

    #: the stack's name, as users pass it as ``backend=``
    name: str = ""
    #: the engines (kernel targets) this stack can convert for
    engines: tuple[str, ...] = ()
    #: the engine of this instance
    engine: str = ""
    #: the file format :meth:`export` writes (``"torchscript"``)
    file_format: str = ""
    #: the child module (and state-dict key part) that only a prepared model has: a checkpoint whose keys hold
    #: ``<model>.<prepared_marker>.`` was taken from a prepared model
    prepared_marker: str = ""

    # ----------------------------------------------------------------------------------- QAT
    @abstractmethod
    def prepare_qat(self, model: nn.Module, fuse: bool = True) -> FusionPlan:
        """Turn the float ``model`` (in train mode) into a fake-quantized one, in place.

        The model keeps its identity and its parameters (the same ``nn.Parameter`` objects), so an optimizer
        built on it keeps updating it. Returns the fusion that was applied.

        Raises:
            QuantizationError: no quantizable layer, or a model this backend cannot prepare.
        """

    @abstractmethod
    def is_prepared(self, model: nn.Module) -> bool:
        """Whether ``model`` has been prepared by :meth:`prepare_qat`."""

    @abstractmethod
    def freeze_observers(self, model: nn.Module) -> None:
        """Stop updating the quantization ranges (scales and zero points) of a prepared model."""

    @abstractmethod
    def freeze_bn_stats(self, model: nn.Module) -> None:
        """Stop updating the batch-norm running statistics of the fused conv-bn modules."""

    @abstractmethod
    def set_fake_quant(self, model: nn.Module, enabled: bool) -> None:
        """Switch fake quantization on or off (off: the prepared model computes in float)."""

    def quantization_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The tensors that define the quantization grid (scales, zero points, observer ranges): the buffers
        whose names end in one of :data:`GRID_BUFFERS` (the same in the eager and PT2E stacks)."""
        return {n: b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in GRID_BUFFERS}

    # ----------------------------------------------------------------------------------- PTQ
    @abstractmethod
    def prepare_ptq(self, model: nn.Module, fuse: bool = True) -> tuple[nn.Module, FusionPlan]:
        """A copy of the float ``model`` with observers, ready for calibration (``model`` is left alone)."""

    def calibrate(
        self, observed: nn.Module, batches: Iterable[Any], to_input: Callable[[Any], Any] | None = None
    ) -> int:
        """Run ``batches`` through an observed model (from :meth:`prepare_ptq`); returns how many ran."""
        import torch

        observed.eval()
        n = 0
        with torch.no_grad():
            for batch in batches:
                observed(to_input(batch) if to_input is not None else batch)
                n += 1
        return n

    # ----------------------------------------------------------------------------------- results
    @abstractmethod
    def convert(self, prepared: nn.Module) -> nn.Module:
        """A real int8 model (CPU, eval mode, float in and out) from a prepared/calibrated one.

        ``prepared`` is left as it is (training can go on).
        """

    @abstractmethod
    def export(self, quantized: nn.Module, path: str | Path, example_input: Tensor | None = None) -> Path:
        """Save a converted model so that it loads with ``torch`` alone; returns the path written."""

    @abstractmethod
    def load(self, path: str | Path) -> nn.Module:
        """Load what :meth:`export` wrote."""

    @property
    def export_format(self) -> str:
        """Deprecated name of :attr:`file_format` (what :meth:`export` writes; the export *format* of the
        callbacks is :data:`~lightning_optim.functional.quantization.export.EXPORT_FORMATS`)."""
        warnings.warn(
            "`QuantizationBackend.export_format` is renamed `file_format`; the old name is removed in "
            f"lightning-optim {ENGINE_AS_BACKEND_REMOVED_IN}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.file_format

    def int8_context(self) -> AbstractContextManager[None]:
        """A context in which the converted model runs (e.g. under ``torch.use_deterministic_algorithms``)."""
        return contextlib.nullcontext()

    def describe(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, engine={self.engine!r}, file_format={self.file_format!r})"


#: backend (stack) name -> the :class:`QuantizationBackend` subclass, built as ``cls(engine=...)``; add a
#: stack by registering here
BACKENDS: dict[str, Callable[..., QuantizationBackend]] = {}


def register_backend(name: str, factory: type[QuantizationBackend]) -> None:
    """Make ``backend=name`` available to the callbacks.

    Args:
        name: the stack's name.
        factory: the :class:`QuantizationBackend` subclass (its :attr:`~QuantizationBackend.engines` are the
            allowed ``engine=`` values); it is called as ``factory(engine=engine)``.
    """
    BACKENDS[name] = factory


def _all_engines() -> list[str]:
    return list(dict.fromkeys(e for factory in BACKENDS.values() for e in getattr(factory, "engines", ())))


def check_backend_name(name: str) -> str:
    """Validate a backend (stack) name; returns it in lower case.

    Raises:
        ValueError: for a name outside :data:`BACKENDS`.
    """
    _ensure_builtin_backends()
    value = name.lower() if isinstance(name, str) else name
    check_choice(
        "backend",
        value,
        sorted(BACKENDS),
        kind="quantization",
        hint=f" (the kernel target is `engine`: {_all_engines()})",
    )
    return value


def check_engine(engine: str, backend: str = DEFAULT_BACKEND) -> str:
    """Validate an engine (kernel target) for the stack ``backend``; returns it in lower case.

    Raises:
        ValueError: ``Unknown `engine` ...; allowed: [...]`` for an engine the stack does not convert for.
    """
    factory = BACKENDS[check_backend_name(backend)]
    value = engine.lower() if isinstance(engine, str) else engine
    return check_choice("engine", value, getattr(factory, "engines", ()), kind="quantization")


def resolve_backend(backend: str, engine: str, stacklevel: int = 2) -> tuple[str, str]:
    """``(backend, engine)``, validated; ``backend="x86"``/``"fbgemm"`` (the old meaning: the engine) becomes
    ``engine`` with a :class:`DeprecationWarning`, for one release.

    Raises:
        ValueError: an unknown backend or an engine the backend does not support.
    """
    _ensure_builtin_backends()
    if isinstance(backend, str) and backend.lower() not in BACKENDS and backend.lower() in _all_engines():
        warnings.warn(
            f"`backend={backend!r}` names a quantized engine: pass `engine={backend.lower()!r}` instead "
            f"(`backend` is now the quantization stack, {sorted(BACKENDS)}); this use of `backend` is removed in "
            f"lightning-optim {ENGINE_AS_BACKEND_REMOVED_IN}.",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        engine, backend = backend.lower(), DEFAULT_BACKEND
    backend = check_backend_name(backend)
    return backend, check_engine(engine, backend)


def create_backend(name: str = DEFAULT_BACKEND, engine: str = DEFAULT_ENGINE) -> QuantizationBackend:
    """Build the backend (stack) called ``name`` for ``engine`` (see :data:`BACKENDS`).

    ``create_backend("x86")`` (an engine as the name, the old meaning) still works for one release, with a
    :class:`DeprecationWarning`.
    """
    name, engine = resolve_backend(name, engine, stacklevel=2)
    return BACKENDS[name](engine=engine)


def _ensure_builtin_backends() -> None:
    if not BACKENDS:
        from lightning_optim.functional.quantization import eager  # noqa: F401 - registers itself
    if "pt2e" not in BACKENDS:
        from lightning_optim.functional.quantization import pt2e  # noqa: F401 - registers itself (torchao lazily)
