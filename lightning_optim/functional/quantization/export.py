"""The export of a converted (int8) model: the one place that decides the file format and how it is written.

Four formats, each with its file suffix (:data:`EXPORT_FORMATS`), each for the stacks in
:data:`BACKEND_FORMATS`:

- ``"pt2"`` (``.pt2``, PT2E): a ``torch.export`` program holding int8 weights only, with the input
  preprocessing and checksums (:meth:`~lightning_optim.functional.quantization.Pt2eBackend.export`);
  ``torch.export.load(path).module()`` runs it without this package.
- ``"onnx"`` (``.onnx``, PT2E): ONNX with QDQ nodes for ONNX Runtime; needs the ``onnx`` extra. Given the
  float network and calibration batches (post-training quantization: the PTQ callback gives them), ONNX
  Runtime's own static quantizer writes the QDQ graph (``quantize_onnx_static``: the quantizer matched to the
  runtime, as torchao's ``X86InductorQuantizer`` is to inductor; ONNX Runtime then runs every conv as an int8
  kernel); otherwise (QAT: the trained quantization ranges must be kept) the PT2E int8 graph is exported as it is
  (:func:`~lightning_optim.functional.quantization.export_onnx`: the same arithmetic, but ONNX Runtime runs the
  convolutions that PT2E fused with an addition in float). Either file is checked in ONNX Runtime against the
  PyTorch int8 model.
- ``"torchscript"`` (``.pt``, eager): the eager backend's TorchScript file; ``torch.jit.load`` reads it.
- ``"artifact"`` (``.lopt``, eager): the compact artifact of :mod:`lightning_optim.functional.artifact` (the same
  TorchScript module, its int8 values, scales and code in LZMA streams); ``load_artifact`` reads it, and that
  module needs only torch and the standard library.

:func:`unused_path` gives a file name that does not overwrite an earlier export (``model_int8-v1.pt2``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.functional.artifact import save_artifact
from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings
from lightning_optim.functional.quantization.backend import QuantizationBackend, create_backend

#: export format -> file suffix
EXPORT_FORMATS: dict[str, str] = {"torchscript": ".pt", "artifact": ".lopt", "pt2": ".pt2", "onnx": ".onnx"}
#: quantization stack -> the export formats it writes, its default first
BACKEND_FORMATS: dict[str, tuple[str, ...]] = {"eager": ("torchscript", "artifact"), "pt2e": ("pt2", "onnx")}
#: the largest relative difference (L2) between ONNX Runtime's outputs and the PyTorch int8 model's allowed at
#: export: both run int8 arithmetic that rounds differently after a few layers (about 1e-3); a wrong file is ~1
ONNX_TOLERANCE = 0.05
#: an ONNX file quantized by ONNX Runtime's own calibration (MinMax ranges, not PT2E's) that differs from the
#: PyTorch int8 model by more than :data:`ONNX_TOLERANCE` is kept when it predicts that model's class on at least
#: this fraction of the calibration inputs, or when it is about as close to the float network as the PyTorch int8
#: model is (:data:`ONNX_FAITHFULNESS` times its relative error at most)
ONNX_MIN_AGREEMENT = 0.95
ONNX_FAITHFULNESS = 1.5


def check_export_format(export_format: str, backend: str | None = None) -> str:
    """``export_format`` if it is one of :data:`EXPORT_FORMATS` (and, with ``backend``, one that stack writes).

    Raises:
        ValueError: ``Unknown `export_format` ...; allowed: ['torchscript', 'artifact', 'pt2', 'onnx'].``
    """
    if backend is not None and backend in BACKEND_FORMATS:
        return check_choice(
            "export_format",
            export_format,
            BACKEND_FORMATS[backend],
            hint=f" (what backend={backend!r} writes; the others: {dict(BACKEND_FORMATS)})",
        )
    return check_choice("export_format", export_format, EXPORT_FORMATS)


def check_export_formats(
    export_format: str | list[str] | tuple[str, ...] | None, backend: str | None = None
) -> list[str]:
    """One format, several, or ``None`` (the backend's default, the first of :data:`BACKEND_FORMATS`) as a list.

    Raises:
        ValueError: an unknown format, one the backend does not write, or an empty list.
    """
    if export_format is None:
        return [BACKEND_FORMATS[backend][0]] if backend in BACKEND_FORMATS else []
    formats = [export_format] if isinstance(export_format, str) else list(export_format)
    if not formats:
        raise ValueError(f"`export_format` must name at least one format of {list(EXPORT_FORMATS)}, got [].")
    return list(dict.fromkeys(check_export_format(f, backend) for f in formats))


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


def unused_path(path: str | Path, siblings: tuple[str, ...] = ()) -> Path:
    """``path`` if neither it nor its ``siblings`` (other suffixes of the same stem) exist, else the first
    ``<stem>-v<k><suffix>`` that is free for all of them (as ``ModelCheckpoint`` names versions): an export never
    overwrites an earlier one."""
    path = Path(path)

    def taken(candidate: Path) -> bool:
        return candidate.exists() or any(candidate.with_suffix(s).exists() for s in siblings)

    if not taken(path):
        return path
    k = 1
    while taken(path.with_name(f"{path.stem}-v{k}{path.suffix}")):
        k += 1
    return path.with_name(f"{path.stem}-v{k}{path.suffix}")


def _check_onnx_file(
    path: Path, model: nn.Module, inputs: list[Tensor], by_class: bool, float_model: nn.Module | None = None
) -> dict[str, float]:
    """Run the ONNX file in ONNX Runtime against the PyTorch int8 ``model``: the relative L2 difference (a file
    with the model's own arithmetic); for ONNX Runtime's own calibration (``by_class``) also the argmax agreement
    and, with ``float_model``, each one's relative error against the float network. The file is removed and an
    error raised when it differs more than allowed."""
    from lightning_optim.functional.quantization.backend import QuantizationError
    from lightning_optim.functional.quantization.onnx import OnnxRunner

    runner = OnnxRunner(path)
    expected, got = [], []
    with torch.no_grad():
        for x in inputs:
            x = x.detach().cpu()
            x = x.float() if x.is_floating_point() else x  # token ids stay integers
            expected.append(model(x))
            got.append(runner(x))
    e, g = torch.cat(expected), torch.cat(got)
    diff = float((g - e).norm()) / (float(e.norm()) or 1.0)
    agreement = float((g.argmax(-1) == e.argmax(-1)).float().mean()) if e.dim() > 1 else float("nan")
    faithful = False
    if by_class and float_model is not None:
        with torch.no_grad():
            f = torch.cat([float_model(x.detach().cpu()) for x in inputs])
        scale = float(f.norm()) or 1.0
        ours, theirs = float((e - f).norm()) / scale, float((g - f).norm()) / scale
        faithful = theirs <= ONNX_FAITHFULNESS * max(ours, 1e-3)
    # NaN fails too; ONNX Runtime's own calibration may move the logits more, as long as the classes agree or
    # the file is about as close to the float network as the PyTorch int8 model
    ok = diff <= ONNX_TOLERANCE or (by_class and (agreement >= ONNX_MIN_AGREEMENT or faithful))
    if not ok:
        path.unlink(missing_ok=True)
        limit = (
            f"agreement {agreement:.3f}, needed {ONNX_MIN_AGREEMENT}"
            if by_class
            else f"allowed {ONNX_TOLERANCE}"
        )
        raise QuantizationError(
            f"the ONNX file run in ONNX Runtime differs from the PyTorch int8 model by {diff:.2e} (relative; "
            f"{limit}); not kept."
        )
    return {"relative_difference": diff, "agreement": agreement}


def export_quantized(
    model: nn.Module,
    path: str | Path,
    export_format: str,
    example_input: Tensor | None = None,
    backend: QuantizationBackend | None = None,
    metadata: dict[str, Any] | None = None,
    float_model: nn.Module | None = None,
    calibration: list[Tensor] | None = None,
) -> Path:
    """Write a converted model to ``path`` in ``export_format``; returns the path written.

    Args:
        model: the int8 model (from :meth:`QuantizationBackend.convert`).
        path: the file to write (its folder is created).
        export_format: one of :data:`EXPORT_FORMATS` that ``backend`` writes (:data:`BACKEND_FORMATS`).
        example_input: an input batch: traces the model if it cannot be scripted, and the artifact checks that
            the reloaded model gives the same outputs on it; the ``.pt2`` and ONNX files are captured and
            checked on it.
        backend: the backend that converted ``model`` (default: the eager one).
        metadata: the input preprocessing stored in the ``.pt2`` and ONNX files (``mean``, ``std``,
            ``pixel_scale``, ``input_shape``, ``class_names``; see ``Pt2eBackend.export``).
        float_model: ONNX: the trained float network ``model`` was converted from; with ``calibration``, ONNX
            Runtime's own static quantizer writes the file (see the module docstring).
        calibration: ONNX: input batches for ONNX Runtime's calibration (and the check); without
            ``float_model`` (QAT, or when ONNX Runtime's file is not kept), for the ranges of the residual
            additions the PT2E graph leaves in float (:func:`~lightning_optim.functional.quantization.onnx.
            complete_qdq`), so that ONNX Runtime runs them with int8 kernels.

    Raises:
        ValueError: an unknown ``export_format`` or one the backend does not write.
        QuantizationError: a model that can be neither scripted nor traced; a file that disagrees with the
            model.
    """
    backend = backend if backend is not None else create_backend()
    check_export_format(export_format, backend.name)
    path = Path(path)
    if export_format == "pt2":
        return backend.export(model, path, example_input, metadata=metadata)  # type: ignore[call-arg]
    if export_format == "onnx":
        from lightning_optim.functional.quantization.onnx import export_onnx

        if example_input is None:
            raise ValueError("export_format='onnx' needs an example input batch.")
        if float_model is not None and calibration:
            from lightning_optim.functional.quantization.backend import QuantizationError
            from lightning_optim.functional.quantization.onnx import quantize_onnx_static

            try:
                quantize_onnx_static(float_model, path, example_input, calibration, metadata=metadata)
                _check_onnx_file(path, model, calibration, by_class=True, float_model=float_model)
                return path
            except (
                QuantizationError
            ) as err:  # the int8 graph itself, with its own (calibrated/learned) ranges
                warnings.warn(
                    f"ONNX export: ONNX Runtime's own quantization of the float network is not kept ({err}); "
                    "the PT2E int8 graph is exported instead (the PyTorch int8 model's ranges).",
                    UserWarning,
                    stacklevel=2,
                )
        export_onnx(model, path, example_input, metadata=metadata)
        if calibration and getattr(backend, "name", "") == "pt2e":
            from lightning_optim.functional.quantization.backend import QuantizationError
            from lightning_optim.functional.quantization.onnx import complete_qdq

            # the residual adds the x86 quantizer leaves in float get calibrated ranges: int8 kernels in ONNX
            # Runtime; the ranges the graph has (PTQ calibration or QAT) are kept
            try:
                if complete_qdq(path, calibration):
                    _check_onnx_file(path, model, calibration, by_class=True)
                    return path
            except (
                QuantizationError
            ) as err:  # the graph as it is: slower in ONNX Runtime, the same arithmetic
                warnings.warn(
                    f"ONNX export: the residual additions calibrated for ONNX Runtime's int8 kernels are not kept "
                    f"({err}); the PT2E int8 graph is exported as it is (the PyTorch int8 model's arithmetic, "
                    "slower in ONNX Runtime).",
                    UserWarning,
                    stacklevel=2,
                )
                export_onnx(model, path, example_input, metadata=metadata)
        _check_onnx_file(path, model, [example_input], by_class=False)
        return path
    if export_format == "torchscript":
        return backend.export(model, path, example_input)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the compact artifact: TorchScript inside, LZMA streams; its round-trip check runs the int8 kernels
    with quiet_quantization_warnings(), backend.int8_context():
        save_artifact(model, path, torchscript=True, example_input=example_input)
    return path


__all__ = [
    "BACKEND_FORMATS",
    "EXPORT_FORMATS",
    "check_export_format",
    "check_export_formats",
    "unused_path",
    "export_format_of",
    "export_file_path",
    "export_quantized",
]
