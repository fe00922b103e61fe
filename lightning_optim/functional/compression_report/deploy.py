"""The deployable compact artifact (``.lopt``) of a report row: a self-contained exported program by default.

:func:`pack_model_artifact` writes what :class:`~lightning_optim.callbacks.CompressionReport` saves and
measures (``artifact_format``):

- ``"exported_program"`` (default): the model captured by ``torch.export``
  (:func:`~lightning_optim.functional.artifact.export_program`: non-strict, dynamic batch where export
  allows it) and stored by :mod:`lightning_optim.functional.artifact`; loading it needs torch alone, no model
  code. A converted PT2E int8 model is exported as :meth:`Pt2eBackend.export
  <lightning_optim.functional.quantization.pt2e.Pt2eBackend.export>` does it: the float weights
  ``convert_pt2e`` leaves beside the int8 ones are dropped and the quantize/dequantize nodes are written as
  core aten arithmetic, so the file loads without torchao. When ``torch.export`` cannot capture the model
  (or the captured program computes something else), the artifact holds the **state dict** instead, with a
  :class:`UserWarning` that gives the reason and says that rebuilding it needs the model's code: never a
  silent fallback;
- ``"state_dict"``: the state dict (smallest; needs the model's code to rebuild);
- ``"torchscript"``: the scripted module (TorchScript is deprecated by torch 2.14).

This module may use the rest of lightning-optim; :mod:`lightning_optim.functional.artifact` itself stays
torch + standard library only (it is the loader copied beside a deployment).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim._deprecation import REMOVED_IN
from lightning_optim.checks import check_choice
from lightning_optim.functional.artifact import (
    ArtifactExportError,
    export_program,
    pack_artifact,
    save_artifact,
    verify_artifact,
)

#: what the compact artifact of the report holds (the first is the default)
ARTIFACT_FORMATS: tuple[str, ...] = ("exported_program", "state_dict", "torchscript")
#: the relative tolerance between a PT2E int8 model and its portable program (as ``Pt2eBackend.export``)
PT2E_PROGRAM_RTOL = 1e-4


def resolve_artifact_format(artifact_format: str, artifact_torchscript: bool | None = None) -> str:
    """Check ``artifact_format`` and apply the deprecated ``artifact_torchscript`` alias.

    ``artifact_torchscript`` (deprecated, a :class:`FutureWarning` naming ``artifact_format``) keeps its old
    meaning: ``True`` is ``"torchscript"``, ``False`` the state dict (the old default).

    Raises:
        ValueError: an unknown ``artifact_format`` (naming the allowed ones), or ``artifact_torchscript``
            contradicting an ``artifact_format`` other than the default.
    """
    check_choice("artifact_format", artifact_format, ARTIFACT_FORMATS)
    if artifact_torchscript is None:
        return artifact_format
    old = "torchscript" if artifact_torchscript else "state_dict"
    warnings.warn(
        f"`artifact_torchscript` is deprecated (removed in lightning-optim {REMOVED_IN}): use "
        f"`artifact_format={old!r}`; the default `artifact_format='exported_program'` is self-contained "
        "(torch alone loads it) without TorchScript.",
        FutureWarning,
        stacklevel=3,
    )
    if artifact_format not in (ARTIFACT_FORMATS[0], old):
        raise ValueError(
            f"`artifact_torchscript={artifact_torchscript}` (deprecated, meaning {old!r}) contradicts "
            f"`artifact_format={artifact_format!r}`; give `artifact_format` only."
        )
    return old


def _batch_of(x: Tensor, batch_size: int) -> Tensor:
    reps = -(-batch_size // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size].contiguous()


def _pt2e_int8_parts(model: nn.Module) -> list[nn.Module]:
    from lightning_optim.functional.compression_report.measure import _pt2e_int8_modules

    return [m for _, m in _pt2e_int8_modules(model)]


def deployable_program(model: nn.Module, example_input: Tensor) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of ``model`` (on the CPU, in eval mode) that the artifact stores.

    A model holding converted PT2E int8 graphs (``Pt2eModule`` of kind ``"int8"``) is captured on a copy
    whose graphs keep only the state they read, and its quantize/dequantize nodes are decomposed into core
    aten ops (torch alone loads the file, without torchao); its batch is dynamic only if every PT2E graph was
    captured with a dynamic batch (else the example is repeated to the captured batch size). The program
    must reproduce ``model`` on ``example_input``: exactly up to float rounding for a float model (relative
    1e-5), within :data:`PT2E_PROGRAM_RTOL` for a PT2E int8 model (the decomposed arithmetic rounds
    differently).

    Raises:
        ArtifactExportError: ``torch.export`` cannot capture the model, or the program computes other outputs.
    """
    x = example_input.detach().cpu()
    parts = _pt2e_int8_parts(model)
    if not parts:
        program = export_program(model, x)
        rtol = 1e-5
    else:
        from lightning_optim.functional.quantization.pt2e import (
            _quiet_torchao,
            _retarget_portable,
            _strip_unused_state,
        )

        stripped = copy.deepcopy(model).cpu().eval()
        stripped_parts = _pt2e_int8_parts(stripped)
        with _quiet_torchao():
            for part in stripped_parts:
                _strip_unused_state(part.graph_module)
                _retarget_portable(part.graph_module)  # the program gets the q/dq arithmetic in core aten ops
        dynamic = all(part.capture.dynamic_batch for part in stripped_parts)
        static = {part.capture.batch_size for part in stripped_parts if not part.capture.dynamic_batch}
        if not dynamic and len(static) == 1 and None not in static:
            x = _batch_of(x, int(next(iter(static))))
        with _quiet_torchao():
            program = export_program(stripped, x, dynamic_batch=dynamic)
        left = sorted({str(n.target) for n in program.graph.nodes if "quantized_decomposed" in str(n.target)})
        if left:
            raise ArtifactExportError(f"quantize/dequantize ops left in the program (torchao needed): {left}")
        rtol = PT2E_PROGRAM_RTOL
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x)
            got = program.module()(x)
    finally:
        model.train(was_training)
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    if not torch.allclose(got, expected, rtol=rtol, atol=rtol * 0.1 * (scale or 1.0)):
        raise ArtifactExportError(
            f"the program torch.export captured computes other outputs (max difference "
            f"{float((got - expected).abs().max()):.3e})"
        )
    return program


def fallback_message(model: nn.Module, reason: str) -> str:
    """The warning of an artifact that holds the state dict because ``model`` could not be exported."""
    hint = ""
    if _is_eager_int8(model):
        hint = (
            " An eager torch.ao int8 model holds packed weights torch.export cannot capture: quantize with the "
            "PT2E backend (backend='pt2e'), or ask for artifact_format='torchscript'."
        )
    return (
        f"Compact artifact of {type(model).__name__}: no self-contained program ({reason}); the .lopt holds "
        "the state dict instead, and rebuilding a model from it needs the model's code: "
        f"load_artifact(path, model=<the architecture>).{hint}"
    )


def _is_eager_int8(model: nn.Module) -> bool:
    from lightning_optim.functional.compression_report.measure import is_pt2e_int8, quantized_weights

    return not is_pt2e_int8(model) and any(w.is_quantized for _, w, _ in quantized_weights(model))


def pack_model_artifact(
    model: nn.Module,
    example_input: Tensor | None,
    artifact_format: str = "exported_program",
    path: str | os.PathLike | None = None,
    verify: bool = False,
    metadata: Mapping[str, Any] | None = None,
    warn: bool = True,
) -> tuple[bytes, str, str | None]:
    """The compact artifact of ``model`` in ``artifact_format``, falling back to the state dict with a warning
    when ``torch.export`` cannot capture it (see the module docstring).

    Args:
        model: the model (float, pruned or int8; eager or PT2E).
        example_input: an input batch (needed by ``"exported_program"``; without it the state dict is
            stored, with the warning).
        artifact_format: one of :data:`ARTIFACT_FORMATS`.
        path: also write the file there.
        verify: check the round trip (:func:`~lightning_optim.functional.artifact.save_artifact`).
        metadata: JSON-serializable values for the header.
        warn: warn (:class:`UserWarning`) when the state dict replaces the exported program; ``False`` only
            where the caller reports the returned note itself.

    Returns:
        ``(bytes, format written, note)``; ``note`` is the warning's text when the state dict replaced the
        exported program, else ``None``.
    """
    check_choice("artifact_format", artifact_format, ARTIFACT_FORMATS)
    x = example_input.detach().cpu() if isinstance(example_input, Tensor) else None
    if artifact_format == "exported_program":
        program = None
        if x is None:
            reason = "no example input to capture it with"
        else:
            try:
                program = deployable_program(model, x)
                blob = pack_artifact(program, metadata=metadata, archive_format="exported_program")
            except ArtifactExportError as err:
                program, reason = None, str(err)
            except Exception as err:  # noqa: BLE001 - torch.export.save of an exotic program: reported
                program, reason = None, _first_line(err)
        if program is not None:
            if verify:
                verify_artifact(blob, program, x)  # a failure here is a bug of the format: raised
            _write(blob, path)
            return blob, "exported_program", None
        note = fallback_message(model, reason)
        if warn:
            warnings.warn(note, UserWarning, stacklevel=2)
        artifact_format = "state_dict"
    else:
        note = None
    blob = save_artifact(
        model,
        path,
        example_input=x,
        verify=verify and x is not None,
        metadata=metadata,
        archive_format=artifact_format,
    )
    return blob, artifact_format, note


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _write(blob: bytes, path: str | os.PathLike | None) -> None:
    if path is not None:
        with open(path, "wb") as f:
            f.write(blob)


__all__ = [
    "ARTIFACT_FORMATS",
    "PT2E_PROGRAM_RTOL",
    "deployable_program",
    "fallback_message",
    "pack_model_artifact",
    "resolve_artifact_format",
]
