"""A compact, lossless saved format for pruned (and int8) models, loadable with torch and the stdlib alone.

What is stored
--------------
The model is first serialized the ordinary way, as one of three archive kinds (``archive_format``):

- ``"exported_program"``: ``torch.export.save`` of the model captured by ``torch.export`` (non-strict, the
  batch dimension dynamic where export allows it, else static): **self-contained**, the loader needs no model
  code and no TorchScript; give ``example_input`` to capture a module, or pass an already exported
  ``torch.export.ExportedProgram`` (e.g. a PT2E int8 model decomposed to core aten ops);
- ``"state_dict"``: ``torch.save(model.state_dict())`` (smallest; rebuilding it needs the model's code);
- ``"torchscript"``: ``torch.jit.save`` of the scripted (or traced) module. TorchScript is deprecated by
  torch 2.14 (its ``FutureWarning`` is passed on, not silenced): prefer ``"exported_program"``.

All three are zip archives whose tensor storages are raw bytes. The artifact keeps every small entry (the
pickled structure, the program's JSON, TorchScript code) as it is and re-encodes each tensor storage:

- each element (``itemsize`` bytes: 1 for int8/quantized weights, 4 for float32, 8 for float64 scales) is
  either all-zero bytes or not; the positions of the non-zero elements are stored as **gaps** (the distance
  to the previous non-zero element minus one, one byte each, 255 meaning "add 255 and continue", as in
  Han et al.'s relative indexing), as a **bitmask**, or not at all (**dense**) - whichever is smallest;
- the non-zero elements go to one value stream per ``itemsize``, byte-shuffled (all first bytes, then all
  second bytes...) so that exponents and signs sit together;
- a bool storage whose pattern equals the non-zero pattern of an earlier storage (a pruning mask next to
  its weight) is stored as a reference to it (no bytes at all);
- every stream is then compressed with LZMA (stdlib ``lzma``, raw LZMA2, preset 9 extreme), and its CRC-32
  is kept in the header (a truncated or altered file is refused).

Loading rebuilds the archive and hands it to ``torch.export.load``, ``torch.load(..., weights_only=True)`` or
``torch.jit.load``, so the reloaded model's outputs equal the saved model's exactly (checked at save time
when an ``example_input`` is given). Int8 models from eager ``torch.ao.quantization`` keep their quantized
weights (int8 values + per-channel scales and zero points) as such: the int8 values become the 1-byte
stream, the float64 per-channel scales the 8-byte stream.

Rebuilding a runnable model:

- ``"exported_program"``: ``load_artifact(path)`` returns the program's module (``torch.export.load(...)
  .module()``), an ``nn.Module`` called like the model; torch alone.
- ``"torchscript"``: ``load_artifact(path)`` returns the TorchScript module; torch alone.
- ``"state_dict"``: ``load_artifact(path, model=skeleton)`` loads the state dict into a model of the same
  structure: the float architecture for a pruned float model, or an int8 skeleton for a converted model
  (the float architecture prepared and converted the same way; its weights do not matter); without
  ``model`` the state dict itself is returned.

This module imports nothing from lightning-optim (only torch and the standard library), so it can be
copied next to a deployment as the loader::

    import torch, artifact                       # this file, copied beside the deployment
    model = artifact.load_artifact("model.lopt")  # an exported-program (or TorchScript) artifact
    y = model(torch.randn(1, 3, 32, 32))

or from a shell: ``python artifact.py model.lopt`` (describe it, load it and run it once on zeros of the
recorded input shape), ``--input x.pt --output y.pt`` (run it on a saved tensor), ``--extract model.pt2``
(write the plain torch archive, here what ``torch.export.load`` reads).

File layout: ``MAGIC`` (8 bytes), header length (4 bytes, little endian), LZMA-compressed JSON header
(format version, archive kind, entries with their encodings, stream lengths and CRC-32s, the captured
inputs of a program, user metadata, and the CRC-32 of the header itself), then the compressed streams.

Reading a file from elsewhere is bounded: the path must name a regular file (a folder, FIFO or device is
refused before anything reads it, a FIFO never blocks); the header is decompressed to at most
:data:`MAX_HEADER_BYTES` and checked whole before anything is allocated (every stream's length against the
file's, every entry's span inside its stream, and the sizes it declares against ``max_unpacked_bytes``: by
default :data:`MAX_UNPACK_RATIO` times the file's size, at least :data:`MIN_UNPACK_LIMIT`, at most
:data:`MAX_UNPACKED_BYTES`); each stream is decompressed incrementally to at most its declared length (an LZMA
bomb stops there) after its CRC-32 matched. An empty, truncated, altered or foreign file raises
:class:`ArtifactFormatError` (a ``ValueError``) naming the file and what is wrong; it never loads as another
model. Headers written before the header CRC-32 existed still load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import lzma
import os
import stat
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

MAGIC = b"LOPTCA01"
#: the header's format version of the state-dict and TorchScript kinds (readable by every loader)
FORMAT_VERSION = 1
#: the format version of each archive kind (an exported program needs a loader that knows the kind)
KIND_VERSIONS: dict[str, int] = {"state_dict": 1, "torchscript": 1, "exported_program": 2}
#: the archive kinds (``archive_format`` of :func:`pack_artifact`)
ARCHIVE_KINDS: tuple[str, ...] = ("state_dict", "torchscript", "exported_program")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_ESCAPE = 255
_LZMA_DICT_BYTES = 64 * 2**20  # preset 9's dictionary: no stream the packer writes needs more to decode
#: the most bytes a load unpacks (the streams, and again the rebuilt archive) when no ``max_unpacked_bytes`` is
#: given; the default limit is also at most :data:`MAX_UNPACK_RATIO` times the file's size (but never below
#: :data:`MIN_UNPACK_LIMIT`): a 145-byte file cannot declare a 12 GB tensor
MAX_UNPACKED_BYTES = 4 * 2**30
#: the default limit's ratio to the file's size (LZMA itself never exceeds about 7,000:1; a model pruned to
#: 99.99% stays under it)
MAX_UNPACK_RATIO = 10_000
#: the default limit of a small file
MIN_UNPACK_LIMIT = 64 * 2**20
#: the most bytes the header (JSON) decompresses to
MAX_HEADER_BYTES = 64 * 2**20
#: the element sizes a stream of values may have (bool/int8 ... complex128)
_ITEMSIZES = (1, 2, 4, 8, 16)
_STREAM_NAMES = ("misc", "gaps", "bitmask", *(f"v{k}" for k in _ITEMSIZES))
_ENCODINGS = ("raw", "dense", "zeros", "gaps", "bitmask", "pattern_of")


class ArtifactExportError(RuntimeError):
    """``torch.export`` could not capture the model (the message says why); save the state dict instead."""


class ArtifactFormatError(ValueError):
    """The file (or bytes) is not a readable artifact: empty, truncated, altered, not an artifact at all, a
    format this loader does not read, not a regular file, or declaring more than the limits allow. The message
    names the file and what is wrong."""


# ----------------------------------------------------------------------------------------------- codec
def _compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS) if data else b""


def _decompress(data: bytes) -> bytes:
    return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS) if data else b""


def _shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte-shuffle: ``(n, itemsize)`` -> ``(itemsize, n)``."""
    if itemsize == 1 or not data:
        return data
    arr = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, itemsize)
    return arr.t().contiguous().numpy().tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not data:
        return data
    arr = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(itemsize, -1)
    return arr.t().contiguous().numpy().tobytes()


def _encode_gaps(positions: Tensor) -> bytes:
    """Positions of the non-zero elements (sorted) -> escape-coded one-byte gaps."""
    if positions.numel() == 0:
        return b""
    previous = torch.cat([torch.tensor([-1], dtype=torch.int64), positions[:-1]])
    g = positions - previous - 1  # >= 0
    escapes = torch.div(g, _ESCAPE, rounding_mode="floor")
    lengths = escapes + 1
    out = torch.full((int(lengths.sum()),), _ESCAPE, dtype=torch.uint8)
    ends = torch.cumsum(lengths, 0) - 1
    out[ends] = (g - escapes * _ESCAPE).to(torch.uint8)
    return out.numpy().tobytes()


def _decode_gaps(data: bytes, count: int, n: int | None = None) -> Tensor:
    """Inverse of :func:`_encode_gaps`: the ``count`` positions (each below ``n`` when given).

    Raises:
        ValueError: not ``count`` gap codes, bytes after the last one, or a position at ``n`` or beyond.
    """
    if count == 0:
        if data:
            raise ValueError(f"expected no gap codes, found {len(data)} bytes")
        return torch.zeros(0, dtype=torch.int64)
    s = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64) if data else torch.zeros(0)
    ends = torch.nonzero(s != _ESCAPE).flatten()
    if ends.numel() != count or int(ends[-1]) != len(data) - 1:
        raise ValueError(f"expected {count} gap codes, found {ends.numel()} in {len(data)} bytes")
    totals = torch.cumsum(s, 0)[ends]
    g = totals - torch.cat([torch.zeros(1, dtype=torch.int64), totals[:-1]])
    positions = torch.cumsum(g + 1, 0) - 1
    if n is not None and int(positions[-1]) >= n:
        raise ValueError(f"a gap code points at element {int(positions[-1])} of {n}")
    return positions


def _pack_bits(mask: Tensor) -> bytes:
    n = mask.numel()
    padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8)
    padded[:n] = mask.to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.view(-1, 8) * weights).sum(1, dtype=torch.uint8).numpy().tobytes()


def _unpack_bits(data: bytes, n: int) -> Tensor:
    packed = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    shifts = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)
    bits = (packed.view(-1, 1) >> shifts) & 1
    return bits.flatten()[:n].bool()


class _Streams:
    """Append-only byte streams, addressed by name."""

    def __init__(self) -> None:
        self.parts: dict[str, list[bytes]] = {}
        self.lengths: dict[str, int] = {}

    def add(self, name: str, data: bytes) -> int:
        offset = self.lengths.get(name, 0)
        self.parts.setdefault(name, []).append(data)
        self.lengths[name] = offset + len(data)
        return offset

    def joined(self, name: str) -> bytes:
        return b"".join(self.parts.get(name, []))


# ----------------------------------------------------------------------------------------------- itemsizes
def _tensor_leaves(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensor_leaves(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensor_leaves(v)]
    return []


def _storage_views(t: Tensor) -> list[tuple[bytes, int, str]]:
    """``(raw bytes, itemsize, kind)`` of what ``t`` puts into an archive (a quantized tensor: its int values
    and its per-channel scales and zero points); ``kind`` is ``"bool"``, ``"float"`` or ``"int"``."""
    t = t.detach().cpu()
    if t.is_quantized:
        out = [(_raw(t.int_repr()), t.element_size(), "int")]
        if t.qscheme() in (
            torch.per_channel_affine,
            torch.per_channel_symmetric,
            torch.per_channel_affine_float_qparams,
        ):
            for extra in (t.q_per_channel_scales(), t.q_per_channel_zero_points()):
                out.append(
                    (_raw(extra), extra.element_size(), "float" if extra.is_floating_point() else "int")
                )
        return out
    kind = "bool" if t.dtype == torch.bool else "float" if t.is_floating_point() else "int"
    return [(_raw(t), t.element_size(), kind)]


def _raw(t: Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _known_storages(obj: Any) -> dict[str, tuple[int, str]]:
    """sha1 of storage bytes -> (itemsize, kind), for every tensor ``obj`` holds."""
    known: dict[str, tuple[int, str]] = {}
    for t in _tensor_leaves(obj):
        for raw, itemsize, kind in _storage_views(t):
            if raw:
                known.setdefault(hashlib.sha1(raw).hexdigest(), (itemsize, kind))
    return known


# ----------------------------------------------------------------------------------------------- pack
def _encode_storage(
    raw: bytes, itemsize: int, kind: str, streams: _Streams, patterns: dict[int, list[tuple[str, Tensor]]]
) -> tuple[dict[str, Any], Tensor]:
    n = len(raw) // itemsize
    elems = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(n, itemsize)
    if kind == "float":  # -0.0 (sign bit only, little endian) is stored as +0.0
        negative_zero = (elems[:, :-1] == 0).all(dim=1) & (elems[:, -1] == 0x80)
        if bool(negative_zero.any()):
            elems[negative_zero, -1] = 0
            raw = elems.numpy().tobytes()
    nz = (elems != 0).any(dim=1)
    nnz = int(nz.sum())
    spec: dict[str, Any] = {"itemsize": itemsize, "n": n, "nnz": nnz}
    if kind == "bool":
        for ref_name, pattern in patterns.get(n, []):
            if torch.equal(pattern, nz) and bool((elems[nz] == 1).all()):
                spec.update(enc="pattern_of", ref=ref_name)
                return spec, nz
    positions = torch.nonzero(nz).flatten()
    gaps = _encode_gaps(positions) if nnz and nnz < n else b""
    cost = {
        "dense": n * itemsize,
        "gaps": len(gaps) + nnz * itemsize,
        "bitmask": (n + 7) // 8 + nnz * itemsize,
    }
    if not gaps:
        cost.pop("gaps")
    if nnz == 0:
        cost = {"zeros": 0}
    enc = min(cost, key=cost.get)
    spec["enc"] = enc
    if enc == "dense":
        spec["values"] = streams.add(f"v{itemsize}", raw)
    elif enc == "gaps":
        spec["index"] = streams.add("gaps", gaps)
        spec["index_len"] = len(gaps)
        spec["values"] = streams.add(f"v{itemsize}", elems[nz].numpy().tobytes())
    elif enc == "bitmask":
        bits = _pack_bits(nz)
        spec["index"] = streams.add("bitmask", bits)
        spec["index_len"] = len(bits)
        spec["values"] = streams.add(f"v{itemsize}", elems[nz].numpy().tobytes())
    return spec, nz


# ----------------------------------------------------------------------------------------------- capture
def _as_args(example_input: Any) -> tuple[Any, ...]:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]


def export_program(
    model: nn.Module, example_input: Any, dynamic_batch: bool = True, strict: bool = False
) -> torch.export.ExportedProgram:
    """Capture ``model`` (in eval mode; its mode is restored) with ``torch.export.export``.

    The batch dimension (dimension 0 of every tensor input) is captured as dynamic where export allows it;
    where it does not (a model that reshapes with a fixed batch size, say), the capture is static, at the
    example's batch size (the program then refuses other batch sizes). An example of batch size 1 is repeated
    to 2 for the dynamic capture (export specializes size-1 dimensions).

    Args:
        model: the module to capture.
        example_input: an input batch, or a tuple of positional inputs.
        dynamic_batch: try a dynamic batch dimension first (``False``: static at the example's size).
        strict: ``torch.export`` strict mode (TorchDynamo); non-strict traces the Python code as it runs.

    Returns:
        The program; ``program.example_inputs`` is cleared (``torch.export.save`` would store the batch).

    Raises:
        ArtifactExportError: ``torch.export`` cannot capture the model (the cause in the message).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_program() needs an nn.Module, got {type(model).__name__}.")
    if example_input is None:
        raise ValueError(
            "`archive_format='exported_program'` needs `example_input` (an input batch) to capture the model."
        )
    args = _as_args(example_input)
    was_training = model.training
    model.eval()
    program = None
    dynamic_error: BaseException | None = None
    try:
        tensors = [a for a in args if isinstance(a, Tensor) and a.dim() > 0]
        if dynamic_batch and tensors and len({a.shape[0] for a in tensors}) == 1:
            capture = tuple(
                torch.cat([a, a]) if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == 1 else a
                for a in args
            )
            batch = torch.export.Dim("batch", min=1)
            specs = tuple({0: batch} if isinstance(a, Tensor) and a.dim() > 0 else None for a in args)
            shapes = _shapes_for_signature(model, specs)
            try:
                program = torch.export.export(model, capture, dynamic_shapes=shapes, strict=strict)
            except Exception as err:  # noqa: BLE001 - static capture below
                dynamic_error = err
        if program is None:
            try:
                program = torch.export.export(model, args, strict=strict)
            except Exception as err:  # noqa: BLE001 - reported with the cause
                raise ArtifactExportError(
                    f"torch.export could not capture {type(model).__name__}: {_first_line(err)}"
                ) from err
    finally:
        model.train(was_training)
    program.example_inputs = None
    if dynamic_error is not None:
        program._lopt_note = f"static batch (dynamic batch refused: {_first_line(dynamic_error, 200)})"  # type: ignore[attr-defined]
    return program


def _shapes_for_signature(model: nn.Module, specs: tuple[Any, ...]) -> tuple[Any, ...]:
    """``dynamic_shapes`` for ``model.forward``: one spec per positional parameter, the specs of the inputs
    that go to ``*args`` grouped in one tuple (``torch.export`` matches them to the signature)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return specs
    positional = 0
    for param in params:
        if param.kind == inspect.Parameter.VAR_POSITIONAL:
            return (*specs[:positional], tuple(specs[positional:]))
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return specs


def _program_inputs(program: torch.export.ExportedProgram) -> list[dict[str, Any]]:
    """Shape (``"batch"`` for a dynamic dimension) and dtype of each tensor input of ``program``."""
    inputs = []
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        if isinstance(val, Tensor):
            shape = [int(s) if isinstance(s, int) else "batch" for s in val.shape]
            inputs.append({"shape": shape, "dtype": str(val.dtype).removeprefix("torch.")})
    return inputs


def _serialize(
    obj: nn.Module | Mapping[str, Any] | torch.export.ExportedProgram, archive_format: str, example_input: Any
) -> tuple[bytes, Any, dict[str, Any], torch.export.ExportedProgram | None]:
    """The plain torch archive of ``obj``, the object whose tensors it holds, extra header fields, the program."""
    buffer = io.BytesIO()
    if archive_format == "exported_program":
        if isinstance(obj, torch.export.ExportedProgram):
            program = obj
        elif isinstance(obj, nn.Module):
            program = export_program(obj, example_input)
        else:
            raise TypeError(
                "`archive_format='exported_program'` needs an nn.Module (with `example_input`) or a "
                f"torch.export.ExportedProgram, not {type(obj).__name__}."
            )
        stored = program.example_inputs
        program.example_inputs = None  # torch.export.save would store the example batch
        try:
            torch.export.save(program, buffer)
        finally:
            program.example_inputs = stored
        holder = {**program.state_dict, **program.constants}
        extra = {"program": {"inputs": _program_inputs(program)}}
        note = getattr(program, "_lopt_note", None)
        if note:
            extra["program"]["note"] = note
        return buffer.getvalue(), holder, extra, program
    if archive_format == "torchscript":
        if not isinstance(obj, nn.Module):
            raise TypeError("`archive_format='torchscript'` needs an nn.Module, not a state dict.")
        # torch 2.14 deprecates TorchScript (a FutureWarning per call): the format this kind ships, never silenced
        was_training = obj.training
        obj.eval()
        try:
            try:
                scripted = obj if isinstance(obj, torch.jit.ScriptModule) else torch.jit.script(obj)
            except Exception as err:  # noqa: BLE001 - fall back to tracing
                if example_input is None:
                    raise ValueError(
                        f"Could not script {type(obj).__name__} ({err}); pass `example_input` to trace it instead."
                    ) from err
                scripted = torch.jit.trace(obj, example_input)
        finally:
            obj.train(was_training)
        torch.jit.save(scripted, buffer)
        return buffer.getvalue(), obj.state_dict(), {}, None
    if isinstance(obj, torch.export.ExportedProgram):
        raise TypeError(
            f"A torch.export.ExportedProgram is stored as archive_format='exported_program', not {archive_format!r}."
        )
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    torch.save(state, buffer)
    return buffer.getvalue(), state, {}, None


def resolve_archive_format(obj: Any, torchscript: bool = False, archive_format: str | None = None) -> str:
    """The archive kind to write: ``archive_format`` when given (checked against :data:`ARCHIVE_KINDS`), else
    ``"exported_program"`` for an ``ExportedProgram``, ``"torchscript"`` with ``torchscript=True``, else
    ``"state_dict"``.

    Raises:
        ValueError: an unknown ``archive_format``, or ``torchscript=True`` with another format.
    """
    if archive_format is None:
        if isinstance(obj, torch.export.ExportedProgram):
            return "exported_program"
        return "torchscript" if torchscript else "state_dict"
    if archive_format not in ARCHIVE_KINDS:
        raise ValueError(f"Unknown `archive_format` {archive_format!r}; allowed: {list(ARCHIVE_KINDS)}.")
    if torchscript and archive_format != "torchscript":
        raise ValueError(
            f"`torchscript=True` contradicts `archive_format={archive_format!r}`; give `archive_format` only."
        )
    return archive_format


# ----------------------------------------------------------------------------------------------- pack
def _header_json(header: Mapping[str, Any]) -> bytes:
    """The header's JSON without its ``header_crc32`` (what that CRC-32 covers)."""
    return json.dumps(
        {k: v for k, v in header.items() if k != "header_crc32"}, separators=(",", ":")
    ).encode()


def _pack(
    obj: Any, archive_format: str, example_input: Any, metadata: Mapping[str, Any] | None
) -> tuple[bytes, torch.export.ExportedProgram | None]:
    archive, holder, extra, program = _serialize(obj, archive_format, example_input)
    known = _known_storages(holder)
    streams = _Streams()
    patterns: dict[int, list[tuple[str, Tensor]]] = {}
    entries: list[list[Any]] = []
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.endswith(".debug_pkl"):  # TorchScript debug info: not needed to run
                continue
            raw = zf.read(name)
            # tensor records: "<archive>/data/<n>" (torch.save, torch.jit.save) or
            # "<archive>/data/weights/weight_<n>", ".../data/constants/..." (torch.export.save)
            match = known.get(hashlib.sha1(raw).hexdigest()) if raw and "/data/" in name else None
            if match is None or len(raw) % match[0]:
                entries.append([name, {"enc": "raw", "values": streams.add("misc", raw), "len": len(raw)}])
                continue
            spec, nz = _encode_storage(raw, match[0], match[1], streams, patterns)
            if spec["enc"] in ("gaps", "bitmask") and match[1] != "bool":
                patterns.setdefault(spec["n"], []).append((name, nz))
            entries.append([name, spec])
    names = sorted(streams.parts)
    compressed = {
        name: _compress(_shuffle(streams.joined(name), int(name[1:]) if name.startswith("v") else 1))
        for name in names
    }
    header = {
        "format": KIND_VERSIONS[archive_format],
        "kind": archive_format,
        "entries": entries,
        "streams": [[name, len(compressed[name]), streams.lengths[name]] for name in names],
        "crc32": {name: zlib.crc32(compressed[name]) for name in names},
        **extra,
        "metadata": dict(metadata or {}),
    }
    # the header's own CRC-32 (of its JSON without this key): an altered header is refused, never read as
    # another model; loaders that predate it ignore the key
    header["header_crc32"] = zlib.crc32(_header_json(header))
    header_bytes = _compress(json.dumps(header, separators=(",", ":")).encode())
    blob = (
        MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + b"".join(compressed[n] for n in names)
    )
    return blob, program


def pack_artifact(
    obj: nn.Module | Mapping[str, Any] | torch.export.ExportedProgram,
    torchscript: bool = False,
    example_input: Any = None,
    metadata: Mapping[str, Any] | None = None,
    archive_format: str | None = None,
) -> bytes:
    """Encode a model (or a state dict, or an exported program) into the compact artifact format; see the
    module docstring.

    Args:
        obj: the model, a state dict, or a ``torch.export.ExportedProgram``.
        torchscript: store the scripted module (the same as ``archive_format="torchscript"``).
        example_input: the input batch that captures the model (``"exported_program"``), or traces it when
            scripting fails (``"torchscript"``).
        metadata: JSON-serializable values stored in the header (read back with :func:`read_header`).
        archive_format: ``"exported_program"`` (self-contained, needs ``example_input`` for a module),
            ``"state_dict"`` or ``"torchscript"``; ``None``: ``"exported_program"`` for a program, else as
            ``torchscript`` says.

    Returns:
        The artifact bytes.

    Raises:
        ValueError: an unknown ``archive_format``.
        ArtifactExportError: ``torch.export`` cannot capture the model.
    """
    kind = resolve_archive_format(obj, torchscript, archive_format)
    return _pack(obj, kind, example_input, metadata)[0]


def save_artifact(
    model: nn.Module | Mapping[str, Any] | torch.export.ExportedProgram,
    path: str | os.PathLike | None = None,
    torchscript: bool = False,
    example_input: Any = None,
    verify: bool = True,
    metadata: Mapping[str, Any] | None = None,
    archive_format: str | None = None,
) -> bytes:
    """Pack ``model`` (see :func:`pack_artifact`), check the round trip, and write it to ``path``.

    Args:
        model: the model (pruned, and/or converted to int8), a state dict, or an exported program.
        path: where to write; ``None`` only returns the bytes.
        torchscript: store a TorchScript module (the same as ``archive_format="torchscript"``).
        example_input: an input batch; with ``verify``, the reloaded model must give outputs equal to
            ``model(example_input)``; it also captures the model for ``"exported_program"``.
        verify: unpack right away and compare (the archive always; the outputs where ``example_input`` is
            given and ``model`` is a module or a program). An exported program must reproduce the program
            it was saved from exactly, and the module it was captured from within float rounding
            (``torch.export`` records the same aten ops; a different decomposition may round differently).
        metadata: JSON-serializable values stored in the header.
        archive_format: ``"exported_program"``, ``"state_dict"`` or ``"torchscript"`` (see
            :func:`pack_artifact`).

    Returns:
        The artifact bytes.

    Raises:
        RuntimeError: if the round trip does not reproduce the model.
        ArtifactExportError: ``torch.export`` cannot capture the model.
    """
    kind = resolve_archive_format(model, torchscript, archive_format)
    blob, program = _pack(model, kind, example_input, metadata)
    if verify:
        verify_artifact(blob, model, example_input, program)
    if path is not None:
        with open(path, "wb") as f:
            f.write(blob)
    return blob


def _max_diff(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@contextlib.contextmanager
def _determinism_check_off() -> Iterator[None]:
    """torch's deterministic-algorithms check off for the block, restored after (with its ``warn_only``).

    ``Trainer(deterministic=True)`` turns the check on for the whole process, and eager int8 CPU kernels
    (``quantized::linear`` resizes its output with ``quantized_resize_cpu_``) have no deterministic
    implementation, so running an int8 model to verify its artifact raised at fit end. Verification is inference
    outside training: the outputs are compared, nothing trains on them."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)


def _outputs(fn: Any, args: tuple[Any, ...]) -> Any:
    with torch.no_grad(), _determinism_check_off():
        return fn(*args)


def verify_artifact(
    blob: bytes,
    model: nn.Module | Mapping[str, Any] | torch.export.ExportedProgram,
    example_input: Any = None,
    program: torch.export.ExportedProgram | None = None,
) -> None:
    """Unpack ``blob`` and check that it reproduces ``model``.

    The archive is always rebuilt and loaded. With ``example_input`` (and a module or program as ``model``)
    the outputs are compared: a state-dict or TorchScript artifact must give exactly ``model``'s outputs; an
    exported program exactly those of the program it was saved from (``model`` itself, or ``program``), and
    those of the module it was captured from up to float rounding (relative 1e-5: ``torch.export`` records the
    same aten ops, but a decomposition may round differently).

    Raises:
        RuntimeError: the outputs differ (the largest difference in the message).
        ValueError: a corrupt artifact.
    """
    kind = read_header(blob, max_unpacked_bytes=sys.maxsize)["kind"]  # our own bytes: no size limit
    loaded = load_artifact(blob, max_unpacked_bytes=sys.maxsize)
    if example_input is None or not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        return
    args = _as_args(example_input)
    if kind == "exported_program":
        got = _outputs(loaded, args)
        source = model if isinstance(model, torch.export.ExportedProgram) else program
        if source is not None:
            before = _outputs(source.module(), args)
            if not torch.equal(before, got):
                raise RuntimeError(
                    "Artifact round trip changed the exported program's outputs (max abs diff "
                    f"{_max_diff(before, got):.3g})."
                )
        if isinstance(model, nn.Module):
            was_training = model.training
            model.eval()
            try:
                expected = _outputs(model, args)
            finally:
                model.train(was_training)
            scale = float(expected.abs().max()) if expected.numel() else 1.0
            if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * (scale or 1.0)):
                raise RuntimeError(
                    f"The program torch.export captured computes other outputs than {type(model).__name__} "
                    f"(max abs diff {_max_diff(expected, got):.3g}); save the state dict instead."
                )
        return
    if isinstance(model, torch.export.ExportedProgram):
        return
    if kind == "state_dict":
        skeleton = copy.deepcopy(model)
        skeleton.load_state_dict(loaded)
        loaded = skeleton
    was_training = model.training
    model.eval()
    loaded.eval()
    try:
        expected, got = _outputs(model, args), _outputs(loaded, args)
    finally:
        model.train(was_training)
    if not torch.equal(expected, got):
        raise RuntimeError(
            f"Artifact round trip changed the model's outputs (max abs diff {_max_diff(expected, got):.3g})."
        )


# ----------------------------------------------------------------------------------------------- load
def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (``true``/``false`` are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_regular_file(path: str | os.PathLike, option: str, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, read whole.

    The file is opened non-blocking and checked on the open descriptor, so a folder, a FIFO, a socket or a
    device is refused before anything reads it (a FIFO never blocks the caller), as is a file longer than
    ``max_bytes``. The same rules as ``lightning_optim.paths.user_file``, kept here so that this module needs
    only torch and the standard library.

    Args:
        path: the path as given (nothing is expanded).
        option: the option's name in the messages (``"artifact"``, ``"--input"``).
        what: what the file should be, in the messages (``"a .lopt file"``).
        max_bytes: the longest file accepted.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ArtifactFormatError: ``path`` is not a regular file, or is longer than ``max_bytes``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{option}` must be a path (str or os.PathLike), not {type(path).__name__}.")
    text = os.fsdecode(os.fspath(path))
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(text, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"`{option}` {text!r} does not exist.") from None
    except IsADirectoryError:
        raise ArtifactFormatError(f"`{option}` {text!r} is a folder; give the path of {what}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
            )
            raise ArtifactFormatError(f"`{option}` {text!r} is {kind}; give the path of {what}.")
        if info.st_size > max_bytes:
            raise ArtifactFormatError(
                f"`{option}` {text!r} has {info.st_size:,} bytes, more than the {max_bytes:,} this loader reads."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # the file object closes it
            data = handle.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise ArtifactFormatError(
            f"`{option}` {text!r} has more than the {max_bytes:,} bytes this loader reads."
        )
    return data


class _Limit:
    """How many bytes a load may unpack, and how a message says where that number comes from."""

    def __init__(self, max_unpacked_bytes: int | None, file_bytes: int) -> None:
        if max_unpacked_bytes is not None:
            if not _is_count(max_unpacked_bytes) or max_unpacked_bytes == 0:
                raise ValueError(
                    f"`max_unpacked_bytes` must be a positive number of bytes, got {max_unpacked_bytes!r}."
                )
            self.bytes = int(max_unpacked_bytes)
            self.why = "`max_unpacked_bytes`"
        else:
            self.bytes = min(MAX_UNPACKED_BYTES, max(MIN_UNPACK_LIMIT, MAX_UNPACK_RATIO * file_bytes))
            self.why = (
                f"the default limit: {MAX_UNPACK_RATIO:,} times the file's {file_bytes:,} bytes, at least "
                f"{MIN_UNPACK_LIMIT:,} and at most {MAX_UNPACKED_BYTES:,}"
            )

    def check(self, label: str, declared: int, what: str) -> None:
        if declared > self.bytes:
            raise ArtifactFormatError(
                f"Artifact {label} declares {what} of {declared:,} bytes, more than {self.bytes:,} ({self.why}); "
                "nothing was allocated. If the file is genuine, pass a larger `max_unpacked_bytes`."
            )


def _source(source: Any, max_unpacked_bytes: int | None) -> tuple[bytes, str]:
    """The artifact's bytes and how messages name it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<in-memory bytes>"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"An artifact is read from a path or bytes, not {type(source).__name__}.")
    cap = (
        MAX_UNPACKED_BYTES if max_unpacked_bytes is None else max(max_unpacked_bytes, 0)
    ) + MAX_HEADER_BYTES
    blob = read_regular_file(source, "artifact", "a .lopt file", cap + 12)
    return blob, repr(os.fsdecode(os.fspath(source)))


def _inflate(chunk: bytes, limit: int, label: str, what: str, exact: bool = True) -> bytes:
    """Decompress one raw LZMA2 stream to at most ``limit`` bytes (exactly ``limit`` with ``exact``): the
    output is bounded as it is produced, so a stream that would decompress to more is refused after
    ``limit + 1`` bytes, never decompressed whole."""
    if not chunk:
        if exact and limit:
            raise ArtifactFormatError(f"Corrupt artifact {label}: {what} is empty, expected {limit:,} bytes.")
        return b""
    # the dictionary needs no more than the output's length (no match reaches further back): a stream declaring
    # a few bytes gets a few kB of decoder, not preset 9's 64 MiB
    dict_size = min(_LZMA_DICT_BYTES, max(4096, limit))
    decoder = lzma.LZMADecompressor(
        format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
    )
    try:
        out = decoder.decompress(chunk, max_length=limit)
        if not decoder.eof and len(out) >= limit and decoder.decompress(b"", max_length=1):
            raise ArtifactFormatError(
                f"Corrupt artifact {label}: {what} decompresses to more than "
                f"{'the declared' if exact else 'the limit of'} {limit:,} bytes (an altered file or an LZMA "
                "bomb); stopped there."
            )
    except lzma.LZMAError as err:
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: {what} cannot be decompressed (altered file): {err}"
        ) from None
    if not decoder.eof:
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: {what} ends before its LZMA end marker (truncated or altered file)."
        )
    if decoder.unused_data:
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: {len(decoder.unused_data):,} bytes follow the end of {what}."
        )
    if exact and len(out) != limit:
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: {what} has {len(out):,} bytes, expected {limit:,}."
        )
    return out


def _parse_header(blob: bytes, label: str, limit: _Limit) -> dict[str, Any]:
    """The header, read and checked against the file and the limits (nothing larger is allocated)."""
    if not blob:
        raise ArtifactFormatError(
            f"Artifact {label} is empty (0 bytes): not a lightning-optim compact artifact."
        )
    if blob[:8] != MAGIC:
        if MAGIC.startswith(blob):
            raise ArtifactFormatError(
                f"Corrupt artifact {label}: truncated to {len(blob)} bytes, inside the magic bytes."
            )
        raise ArtifactFormatError(
            f"Artifact {label} is not a lightning-optim compact artifact (bad magic bytes: it starts with "
            f"{blob[:8]!r}, not {MAGIC!r})."
        )
    if len(blob) < 12:
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: truncated before the header ({len(blob)} bytes)."
        )
    (length,) = struct.unpack("<I", blob[8:12])
    if 12 + length > len(blob):
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: truncated or altered: the header's declared {length:,} bytes run past "
            f"the end of the file ({len(blob) - 12:,} bytes after the length field)."
        )
    raw = _inflate(blob[12 : 12 + length], MAX_HEADER_BYTES, label, "the header", exact=False)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ArtifactFormatError(
            f"Corrupt artifact {label}: the header is not readable JSON (truncated or altered file; "
            f"{type(err).__name__} at {getattr(err, 'pos', getattr(err, 'start', '?'))})."
        ) from None
    _check_header(header, label, len(blob) - 12 - length, limit)
    header["_payload_offset"] = 12 + length
    return header


def _check_header(header: Any, label: str, payload_bytes: int, limit: _Limit) -> None:
    """Every field the loader uses, checked: types, the streams against the file's length, every entry's span
    inside its stream, and the sizes it declares against ``limit``."""

    def corrupt(what: str) -> ArtifactFormatError:
        return ArtifactFormatError(f"Corrupt artifact {label}: {what}.")

    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    if "header_crc32" in header:  # written since the header has one; older files rely on the checks below
        crc = header.pop("header_crc32")
        if not _is_count(crc) or zlib.crc32(_header_json(header)) != crc:
            raise corrupt("the header fails its CRC-32 check (altered file)")
    readable = sorted(set(KIND_VERSIONS.values()))
    if not _is_count(header.get("format")) or header["format"] not in readable:
        raise ArtifactFormatError(
            f"Unsupported artifact format {header.get('format')!r} in {label}; this loader reads {readable}."
        )
    if not isinstance(header.get("kind"), str) or header["kind"] not in KIND_VERSIONS:
        raise ArtifactFormatError(
            f"Unknown artifact kind {header.get('kind')!r} in {label}; this loader reads {list(ARCHIVE_KINDS)}."
        )
    # ---- streams: known names, once each, a CRC-32 each, their lengths adding up to the file's
    records, crcs = header.get("streams"), header.get("crc32")
    if not isinstance(records, list) or not isinstance(crcs, dict):
        raise corrupt("the header has no stream list or no CRC-32s")
    raw_sizes: dict[str, int] = {}
    compressed = 0
    for record in records:
        if not (
            isinstance(record, list)
            and len(record) == 3
            and isinstance(record[0], str)
            and _is_count(record[1])
            and _is_count(record[2])
        ):
            raise corrupt(f"a malformed stream record {str(record)[:80]}")
        name, clen, rlen = record
        if name not in _STREAM_NAMES or name in raw_sizes:
            raise corrupt(f"stream {name[:40]!r} is unknown or listed twice")
        if (clen == 0) != (rlen == 0):
            raise corrupt(f"stream {name!r} declares {clen:,} compressed and {rlen:,} raw bytes")
        if name.startswith("v") and rlen % int(name[1:]):
            raise corrupt(f"stream {name!r} of {rlen:,} bytes is not whole {name[1:]}-byte elements")
        if not _is_count(crcs.get(name)):
            raise corrupt(f"stream {name!r} has no CRC-32")
        raw_sizes[name] = rlen
        compressed += clen
    if compressed > payload_bytes:
        raise corrupt(
            f"truncated: the streams need {compressed:,} bytes after the header, the file has {payload_bytes:,}"
        )
    if compressed < payload_bytes:
        raise corrupt(f"{payload_bytes - compressed:,} unexpected bytes after the last stream")
    limit.check(label, sum(raw_sizes.values()), "streams")

    # ---- entries: known encodings, each span inside its stream, the archive they rebuild within the limit
    def span(entry: str, stream: str, start: int, length: int) -> None:
        if length and start + length > raw_sizes.get(stream, 0):
            raise corrupt(
                f"entry {entry[:80]!r} reads bytes {start:,}..{start + length:,} of stream {stream!r}, which "
                f"has {raw_sizes.get(stream, 0):,}"
            )

    def counts(entry: str, spec: dict[str, Any], *keys: str) -> list[int]:
        values = [spec.get(key) for key in keys]
        if not all(_is_count(v) for v in values):
            raise corrupt(f"entry {entry[:80]!r} has no valid {'/'.join(keys)}")
        return values

    entries = header.get("entries")
    if not isinstance(entries, list):
        raise corrupt("the header has no entry list")
    seen: dict[str, tuple[str, int, int]] = {}
    archive = 0
    for item in entries:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
        ):
            raise corrupt(f"a malformed entry {str(item)[:80]}")
        name, spec = item
        if not name or name in seen:
            raise corrupt(f"entry {name[:80]!r} is empty or listed twice")
        enc = spec.get("enc")
        if enc not in _ENCODINGS:
            raise corrupt(f"entry {name[:80]!r} has an unknown encoding {str(enc)[:40]!r}")
        n = nnz = 0
        if enc == "raw":
            start, size = counts(name, spec, "values", "len")
            span(name, "misc", start, size)
        else:
            itemsize, n, nnz = counts(name, spec, "itemsize", "n", "nnz")
            if itemsize not in _ITEMSIZES or nnz > n:
                raise corrupt(f"entry {name[:80]!r} declares itemsize {itemsize}, {nnz:,} non-zero of {n:,}")
            size = n * itemsize
            if enc == "dense":
                span(name, f"v{itemsize}", counts(name, spec, "values")[0], size)
            elif enc == "zeros" and nnz:
                raise corrupt(f"entry {name[:80]!r} is all zeros but declares {nnz:,} non-zero elements")
            elif enc in ("gaps", "bitmask"):
                index, index_len, values = counts(name, spec, "index", "index_len", "values")
                if enc == "gaps" and not nnz <= index_len <= nnz + (n - nnz) // _ESCAPE:
                    raise corrupt(
                        f"entry {name[:80]!r}: {index_len:,} gap bytes cannot hold {nnz:,} of {n:,}"
                    )
                if enc == "bitmask" and index_len != (n + 7) // 8:
                    raise corrupt(f"entry {name[:80]!r}: a bitmask of {index_len:,} bytes for {n:,} elements")
                span(name, enc, index, index_len)
                span(name, f"v{itemsize}", values, nnz * itemsize)
            elif enc == "pattern_of":
                ref = spec.get("ref")
                found = seen.get(ref) if isinstance(ref, str) else None
                if found is None or found[0] not in ("gaps", "bitmask") or found[1:] != (n, nnz):
                    raise corrupt(
                        f"entry {name[:80]!r} refers to {str(ref)[:80]!r}, not an earlier sparse entry of {n:,} "
                        f"elements with {nnz:,} non-zero"
                    )
        seen[name] = (enc, n, nnz)
        archive += size
    limit.check(label, archive, "tensors and records")
    # ---- what the command line and describe_artifact() read
    if not isinstance(header.setdefault("metadata", {}), dict):
        raise corrupt("the metadata is not a JSON object")
    program = header.get("program")
    if program is not None:
        inputs = program.get("inputs", []) if isinstance(program, dict) else None
        if not isinstance(inputs, list):
            raise corrupt("the program's inputs are not a list")
        for spec in inputs:
            dtype = (
                getattr(torch, spec.get("dtype"), None)
                if isinstance(spec, dict) and isinstance(spec.get("dtype"), str)
                else None
            )
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if not (
                isinstance(dtype, torch.dtype)
                and isinstance(shape, list)
                and all(s == "batch" or _is_count(s) for s in shape)
            ):
                raise corrupt(f"a malformed program input {str(spec)[:80]}")
            elements = 1
            for s in shape:
                elements *= 1 if s == "batch" else s
            limit.check(label, elements * dtype.itemsize, "a program input")


def _rebuild(blob: bytes, header: dict[str, Any], label: str) -> bytes:
    """The plain torch archive: every stream checked (CRC-32) and decompressed to its declared length, every
    entry decoded within the spans :func:`_check_header` checked."""
    offset = header["_payload_offset"]
    streams: dict[str, bytes] = {}
    for name, clen, rlen in header["streams"]:
        chunk = blob[offset : offset + clen]
        if zlib.crc32(chunk) != header["crc32"][name]:
            raise ArtifactFormatError(
                f"Corrupt artifact {label}: stream {name!r} fails its CRC-32 check (altered file)."
            )
        itemsize = int(name[1:]) if name.startswith("v") else 1
        streams[name] = _unshuffle(_inflate(chunk, rlen, label, f"stream {name!r}"), itemsize)
        offset += clen
    out = io.BytesIO()
    patterns: dict[str, Tensor] = {}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, spec in header["entries"]:
            enc = spec["enc"]
            if enc == "raw":
                raw = streams.get("misc", b"")[spec["values"] : spec["values"] + spec["len"]]
            else:
                itemsize, n, nnz = spec["itemsize"], spec["n"], spec["nnz"]
                vname = f"v{itemsize}"
                if enc == "dense":
                    raw = streams.get(vname, b"")[spec["values"] : spec["values"] + n * itemsize]
                elif enc == "zeros":
                    raw = bytes(n * itemsize)
                else:
                    if enc == "pattern_of":
                        nz = patterns[spec["ref"]]
                        values = torch.ones(nnz, itemsize, dtype=torch.uint8)
                    else:
                        index = streams.get(enc, b"")[spec["index"] : spec["index"] + spec["index_len"]]
                        if enc == "gaps":
                            try:
                                positions = _decode_gaps(index, nnz, n)
                            except ValueError as err:
                                raise ArtifactFormatError(
                                    f"Corrupt artifact {label}: entry {name[:80]!r}: {err}."
                                ) from None
                            nz = torch.zeros(n, dtype=torch.bool)
                            nz[positions] = True
                        else:
                            bits = (
                                _unpack_bits(index, len(index) * 8)
                                if index
                                else torch.zeros(0, dtype=torch.bool)
                            )
                            if int(bits.sum()) != nnz or bool(bits[n:].any()):
                                raise ArtifactFormatError(
                                    f"Corrupt artifact {label}: entry {name[:80]!r}: its bitmask does not mark "
                                    f"{nnz:,} of {n:,} elements."
                                )
                            nz = bits[:n]
                        start = spec["values"]
                        chunk = streams.get(vname, b"")[start : start + nnz * itemsize]
                        values = (
                            torch.frombuffer(bytearray(chunk), dtype=torch.uint8).view(nnz, itemsize)
                            if chunk
                            else torch.zeros(0, itemsize, dtype=torch.uint8)
                        )
                        patterns[name] = nz
                    elems = torch.zeros(n, itemsize, dtype=torch.uint8)
                    elems[nz] = values
                    raw = elems.numpy().tobytes()
            zf.writestr(name, raw)
    return out.getvalue()


def _open(source: Any, max_unpacked_bytes: int | None) -> tuple[bytes, dict[str, Any], str]:
    _Limit(max_unpacked_bytes, 0)  # a bad value is refused before anything is read
    blob, label = _source(source, max_unpacked_bytes)
    return blob, _parse_header(blob, label, _Limit(max_unpacked_bytes, len(blob))), label


def read_header(source: bytes | str | os.PathLike, max_unpacked_bytes: int | None = None) -> dict[str, Any]:
    """The artifact's header: ``kind``, ``entries`` (name and encoding of each archive entry), ``streams``
    (name, compressed and raw length), ``crc32`` (of each compressed stream), ``program`` (an exported
    program's inputs) and the user ``metadata``; checked against the file's length and the limits.

    Args:
        source: the artifact's path (a regular file) or bytes.
        max_unpacked_bytes: the most bytes the header may declare (its streams, and the archive they rebuild);
            ``None``: :data:`MAX_UNPACK_RATIO` times the file's size, at least :data:`MIN_UNPACK_LIMIT`, at
            most :data:`MAX_UNPACKED_BYTES`.

    Raises:
        FileNotFoundError: nothing exists at ``source``.
        ArtifactFormatError: (a ``ValueError``) not a regular file, empty, not an artifact, a truncated or altered
            header, a format/kind this loader does not read, or sizes beyond ``max_unpacked_bytes``.
    """
    return _open(source, max_unpacked_bytes)[1]


def unpack_archive(
    source: bytes | str | os.PathLike, max_unpacked_bytes: int | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Rebuild the plain torch archive (``torch.export.save``, ``torch.save`` or ``torch.jit.save`` zip) and
    return it with the header. Every stream is decompressed to at most its declared length (checked against
    ``max_unpacked_bytes`` first; see :func:`read_header`).

    Raises:
        FileNotFoundError: nothing exists at ``source``.
        ArtifactFormatError: (a ``ValueError``) a truncated or altered file (a stream's length or CRC-32 differs),
            or one declaring more than ``max_unpacked_bytes``; see :func:`read_header`.
    """
    blob, header, label = _open(source, max_unpacked_bytes)
    return _rebuild(blob, header, label), header


def _load_archive(archive: bytes, kind: str, label: str, map_location: str | torch.device) -> Any:
    """What torch rebuilds from the archive; torch's errors on it (an archive that passed every check but that
    this torch cannot read) become :class:`ArtifactFormatError`, the device's own errors are passed on."""

    def load(where: str | torch.device) -> Any:
        if kind == "exported_program":
            return torch.export.load(io.BytesIO(archive)).module()
        if kind == "torchscript":  # torch's deprecation notice of TorchScript is passed on
            return torch.jit.load(io.BytesIO(archive), map_location=where)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="TypedStorage is deprecated"
            )  # torch's own, for qtensors
            return torch.load(io.BytesIO(archive), map_location=where, weights_only=True)

    try:
        loaded = load("cpu")
    except Exception as err:  # noqa: BLE001 - reported as the file's fault, with torch's first line
        raise ArtifactFormatError(
            f"Artifact {label}: torch cannot load the {kind} archive it holds (saved by another torch version, "
            f"or altered): {_first_line(err)}"
        ) from err
    if torch.device(map_location).type == "cpu":
        return loaded
    return loaded.to(map_location) if kind == "exported_program" else load(map_location)


def load_artifact(
    source: bytes | str | os.PathLike,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    max_unpacked_bytes: int | None = None,
) -> Any:
    """Rebuild what :func:`save_artifact` stored.

    Args:
        source: the artifact's path (a regular file) or bytes.
        model: for a state-dict artifact, a model of the same structure to load it into (strictly); not used
            by the self-contained kinds.
        map_location: device for the tensors (an exported program is moved there after loading; a program
            captured on the CPU may hold CPU-only constants in its graph).
        max_unpacked_bytes: the most bytes the artifact may unpack to (see :func:`read_header`); checked
            against the header before anything is allocated.

    Returns:
        The program's module (``exported_program`` artifacts: ``torch.export.load(...).module()``), the
        TorchScript module (``torchscript``), ``model`` with the state loaded (when given), else the state
        dict (loaded with ``torch.load(..., weights_only=True)``).

    Raises:
        FileNotFoundError: nothing exists at ``source``.
        ArtifactFormatError: (a ``ValueError``) not a regular file, not an artifact, a truncated or altered one,
            one declaring more than ``max_unpacked_bytes``, or one whose archive torch cannot load.
    """
    blob, header, label = _open(source, max_unpacked_bytes)
    loaded = _load_archive(_rebuild(blob, header, label), header["kind"], label, map_location)
    if model is None or header["kind"] != "state_dict":
        return loaded
    model.load_state_dict(loaded)
    return model


def artifact_size_bytes(
    model: nn.Module | Mapping[str, Any] | torch.export.ExportedProgram,
    torchscript: bool = False,
    archive_format: str | None = None,
    example_input: Any = None,
) -> int:
    """Size in bytes of ``model``'s compact artifact (not verified, not written); arguments as
    :func:`pack_artifact`."""
    return len(pack_artifact(model, torchscript, example_input, archive_format=archive_format))


def describe_artifact(
    source: bytes | str | os.PathLike, max_unpacked_bytes: int | None = None
) -> dict[str, Any]:
    """Sizes by part: total, header, each compressed stream, the count of entries per encoding, and the
    inputs of an exported program (``program``). The header is checked as :func:`read_header` does."""
    blob, header, _ = _open(source, max_unpacked_bytes)
    return _description(blob, header)


def _description(blob: bytes, header: Mapping[str, Any]) -> dict[str, Any]:
    encodings: dict[str, int] = {}
    for _, spec in header["entries"]:
        encodings[spec["enc"]] = encodings.get(spec["enc"], 0) + 1
    return {
        "kind": header["kind"],
        "total_bytes": len(blob),
        "header_bytes": header["_payload_offset"],
        "streams": {name: {"compressed": c, "raw": r} for name, c, r in header["streams"]},
        "encodings": encodings,
        "program": header.get("program"),
        "metadata": header["metadata"],
    }


# ----------------------------------------------------------------------------------------------- command line
def _zeros_input(program_info: Mapping[str, Any] | None) -> tuple[Tensor, ...] | None:
    """Zeros of each recorded input's shape (batch 1); the header check bounded their sizes."""
    inputs = (program_info or {}).get("inputs") or []
    if not inputs:
        return None
    return tuple(
        torch.zeros(
            [1 if s == "batch" else int(s) for s in spec["shape"]], dtype=getattr(torch, spec["dtype"])
        )
        for spec in inputs
    )


def _read_input(path: str, max_bytes: int) -> tuple[Any, ...]:
    """The ``--input`` tensor(s): a regular file, read with ``torch.load(..., weights_only=True)``."""
    data = read_regular_file(path, "--input", "a tensor saved with torch.save", max_bytes)
    try:
        return _as_args(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as err:  # noqa: BLE001 - the file's fault, said with torch's first line
        raise ValueError(f"`--input` {path!r} is not a tensor torch.load reads: {_first_line(err)}") from err


def main(argv: Sequence[str] | None = None) -> int:
    """``python artifact.py MODEL.lopt [--input X.pt --output Y.pt] [--extract FILE]``: describe an artifact,
    load it, and run it once (on ``--input``, a tensor saved with ``torch.save``, else on zeros of the
    recorded input shape); ``--extract`` writes the plain torch archive (``torch.export.load``,
    ``torch.load`` or ``torch.jit.load`` reads it). A file that is not a readable artifact gets one line on
    stderr and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="artifact.py",
        description="Load and run a lightning-optim compact artifact (.lopt) with torch alone.",
    )
    parser.add_argument("artifact", help="the .lopt file")
    parser.add_argument("--input", help="a tensor (torch.save) to run the model on")
    parser.add_argument("--output", help="where to torch.save the model's output (with --input or zeros)")
    parser.add_argument("--extract", help="write the plain torch archive (.pt2 / .pt) here and stop")
    parser.add_argument(
        "--max-unpacked-bytes",
        type=int,
        default=None,
        help=f"the most bytes the artifact may unpack to (default: {MAX_UNPACK_RATIO:,} times its size, at least "
        f"{MIN_UNPACK_LIMIT:,}, at most {MAX_UNPACKED_BYTES:,})",
    )
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as err:  # ArtifactFormatError included
        print(f"artifact.py: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    blob, header, label = _open(args.artifact, args.max_unpacked_bytes)
    info = _description(blob, header)
    print(f"{args.artifact}: {info['kind']}, {info['total_bytes']:,} bytes")
    if info["program"]:
        for spec in info["program"].get("inputs", []):
            print(f"  input: shape {spec['shape']}, {spec['dtype']}")
    if info["metadata"]:
        print(f"  metadata: {json.dumps(info['metadata'])}")
    archive = _rebuild(blob, header, label)
    if args.extract:
        with open(args.extract, "wb") as f:
            f.write(archive)
        print(f"  archive written to {args.extract}")
        return 0
    loaded = _load_archive(archive, header["kind"], label, "cpu")
    if not callable(loaded):
        print(
            f"  a state dict of {len(loaded)} entries: load it into the model's code with load_artifact(path, model=...)"
        )
        return 0
    if args.input:
        inputs = _read_input(args.input, MAX_UNPACKED_BYTES)
    else:
        inputs = _zeros_input(info["program"])
        if inputs is None:
            print("  loaded; give --input to run it (no input shape recorded)")
            return 0
    output = _outputs(loaded, inputs)
    shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
    print(f"  ran on {[list(x.shape) for x in inputs]}: output {shape}")
    if args.output:
        torch.save(output, args.output)
        print(f"  output written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
