"""The export of a converted (int8) model: the one place that decides the file format and how it is written.

Two formats, each with its file suffix (:data:`EXPORT_FORMATS`):

- ``"torchscript"`` (``.pt``): the backend's own TorchScript file (:meth:`QuantizationBackend.export`);
  ``torch.jit.load`` reads it without this package.
- ``"artifact"`` (``.lopt``): the compact artifact of :mod:`lightning_optim.functional.artifact` (the same
  TorchScript module, its int8 values, scales and code in LZMA streams); ``load_artifact`` reads it, and that
  module needs only torch and the standard library.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.functional.artifact import save_artifact
from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings
from lightning_optim.functional.quantization.backend import QuantizationBackend, create_backend

#: export format -> file suffix
EXPORT_FORMATS: dict[str, str] = {"torchscript": ".pt", "artifact": ".lopt"}


def check_export_format(export_format: str) -> str:
    """``export_format`` if it is one of :data:`EXPORT_FORMATS`.

    Raises:
        ValueError: ``Unknown `export_format` ...; allowed: ['torchscript', 'artifact'].``
    """
    return check_choice("export_format", export_format, EXPORT_FORMATS)


def export_format_of(path: str | Path) -> str:
    """The export format a file name implies, by its suffix (``model.lopt`` -> ``"artifact"``).

    Raises:
        ValueError: for a suffix that is not in :data:`EXPORT_FORMATS`.
    """
    suffix = Path(path).suffix.lower()
    formats = {s: f for f, s in EXPORT_FORMATS.items()}
    return formats[check_choice("suffix", suffix, formats, kind="export file")]


def export_file_path(directory: str | Path, filename: str, export_format: str) -> Path:
    """``<directory>/<stem of filename><suffix of export_format>``."""
    return Path(directory) / (Path(filename).stem + EXPORT_FORMATS[check_export_format(export_format)])


def export_quantized(
    model: nn.Module,
    path: str | Path,
    export_format: str,
    example_input: Tensor | None = None,
    backend: QuantizationBackend | None = None,
) -> Path:
    """Write a converted model to ``path`` in ``export_format``; returns the path written.

    Args:
        model: the int8 model (from :meth:`QuantizationBackend.convert`).
        path: the file to write (its folder is created).
        export_format: ``"torchscript"`` or ``"artifact"`` (see :data:`EXPORT_FORMATS`).
        example_input: an input batch: traces the model if it cannot be scripted, and the artifact checks that
            the reloaded model gives the same outputs on it.
        backend: the backend that converted ``model`` (default: the eager one).

    Raises:
        ValueError: an unknown ``export_format``.
        QuantizationError: a model that can be neither scripted nor traced.
    """
    check_export_format(export_format)
    backend = backend if backend is not None else create_backend()
    path = Path(path)
    if export_format == "torchscript":
        return backend.export(model, path, example_input)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the compact artifact: TorchScript inside, LZMA streams; its round-trip check runs the int8 kernels
    with quiet_quantization_warnings(), backend.int8_context():
        save_artifact(model, path, torchscript=True, example_input=example_input)
    return path


__all__ = [
    "EXPORT_FORMATS",
    "check_export_format",
    "export_format_of",
    "export_file_path",
    "export_quantized",
]
