"""The small interface between our quantization callbacks and a quantization stack.

torch's quantization stack is moving (eager ``torch.ao.quantization``, FX, PT2E in torchao). The callbacks
only talk to a :class:`QuantizationBackend`; a new stack is a new subclass registered in
:data:`BACKENDS`, without touching the callbacks.

A backend works *in place* for training (``prepare_qat`` changes the given float model into a
fake-quantized one that trains with the same ``nn.Parameter`` objects, so optimizers keep working) and
*out of place* for the results (``convert`` and ``prepare_ptq`` leave their input alone).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lightning_optim.functional.quantization.fusion import FusionPlan


class QuantizationError(ValueError):
    """A model that a quantization backend cannot prepare, calibrate or convert; the message says why."""


class QuantizationBackend(ABC):
    """A quantization stack: prepare for QAT or PTQ, convert to int8, export, load.

    Subclasses set :attr:`name` (the string users pass as ``backend=``) and :attr:`export_format`.
    """

    name: str = ""
    export_format: str = ""

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

    @abstractmethod
    def quantization_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The tensors that define the quantization grid (scales, zero points, observer ranges)."""

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

    def describe(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, export_format={self.export_format!r})"


#: backend name -> factory; add a stack by registering here
BACKENDS: dict[str, Callable[[], QuantizationBackend]] = {}


def register_backend(name: str, factory: Callable[[], QuantizationBackend]) -> None:
    """Make ``backend=name`` available to the callbacks."""
    BACKENDS[name] = factory


def check_backend_name(name: str) -> str:
    """Validate a backend name.

    Raises:
        ValueError: for a name outside :data:`BACKENDS`.
    """
    _ensure_builtin_backends()
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"Unsupported quantization `backend` {name!r}; allowed: {sorted(BACKENDS)}.")
    return name.lower()


def create_backend(name: str) -> QuantizationBackend:
    """Build the backend called ``name`` (see :data:`BACKENDS`)."""
    return BACKENDS[check_backend_name(name)]()


def _ensure_builtin_backends() -> None:
    if not BACKENDS:
        from lightning_optim.functional.quantization import eager  # noqa: F401 - registers itself
