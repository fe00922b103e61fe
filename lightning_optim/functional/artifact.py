"""A compact, lossless saved format for pruned (and int8) models, loadable with torch and the stdlib alone.

What is stored
--------------
The model is first serialized the ordinary way: ``torch.save(model.state_dict())`` (the default) or, with
``torchscript=True``, ``torch.jit.save`` of the scripted module (self-contained: no model code needed to
load it). Both are zip archives whose tensor storages are raw bytes. The artifact keeps every small entry
(the pickled structure, TorchScript code) as it is and re-encodes each tensor storage:

- each element (``itemsize`` bytes: 1 for int8/quantized weights, 4 for float32, 8 for float64 scales) is
  either all-zero bytes or not; the positions of the non-zero elements are stored as **gaps** (the distance
  to the previous non-zero element minus one, one byte each, 255 meaning "add 255 and continue", as in
  Han et al.'s relative indexing), as a **bitmask**, or not at all (**dense**) - whichever is smallest;
- the non-zero elements go to one value stream per ``itemsize``, byte-shuffled (all first bytes, then all
  second bytes...) so that exponents and signs sit together;
- a bool storage whose pattern equals the non-zero pattern of an earlier storage (a pruning mask next to
  its weight) is stored as a reference to it (no bytes at all);
- every stream is then compressed with LZMA (stdlib ``lzma``, raw LZMA2, preset 9 extreme).

Loading rebuilds the byte-identical archive and hands it to ``torch.load(..., weights_only=True)`` or
``torch.jit.load``, so the reloaded model's outputs equal the saved model's exactly (checked at save time
when an ``example_input`` is given). Int8 models from eager ``torch.ao.quantization`` keep their quantized
weights (int8 values + per-channel scales and zero points) as such: the int8 values become the 1-byte
stream, the float64 per-channel scales the 8-byte stream.

Rebuilding a runnable model:

- ``torchscript=True``: ``load_artifact(path)`` returns the TorchScript module; torch alone.
- state dict (default, smallest): ``load_artifact(path, model=skeleton)`` loads the state dict into a model
  of the same structure: the float architecture for a pruned float model, or an int8 skeleton for a
  converted model (the float architecture prepared and converted the same way; its weights do not
  matter); without ``model`` the state dict itself is returned.

This module imports nothing from lightning-optim (only torch and the standard library), so it can be
copied next to a deployment as the loader.

File layout: ``MAGIC`` (8 bytes), header length (4 bytes, little endian), LZMA-compressed JSON header
(archive kind, entries with their encodings, stream lengths, user metadata), then the compressed streams.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import struct
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

MAGIC = b"LOPTCA01"
FORMAT_VERSION = 1
ARCHIVE_KINDS = ("state_dict", "torchscript")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_ESCAPE = 255


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


def _decode_gaps(data: bytes, count: int) -> Tensor:
    """Inverse of :func:`_encode_gaps`: the ``count`` positions."""
    if count == 0:
        return torch.zeros(0, dtype=torch.int64)
    s = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    ends = torch.nonzero(s != _ESCAPE).flatten()
    if ends.numel() != count:
        raise ValueError(f"Corrupt artifact: expected {count} gap codes, found {ends.numel()}.")
    totals = torch.cumsum(s, 0)[ends]
    g = totals - torch.cat([torch.zeros(1, dtype=torch.int64), totals[:-1]])
    return torch.cumsum(g + 1, 0) - 1


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


def _serialize(
    obj: nn.Module | Mapping[str, Any], torchscript: bool, example_input: Any
) -> tuple[bytes, str, Any]:
    """The plain torch archive of ``obj`` and the object whose tensors it holds."""
    buffer = io.BytesIO()
    if torchscript:
        if not isinstance(obj, nn.Module):
            raise TypeError("`torchscript=True` needs an nn.Module, not a state dict.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
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
        return buffer.getvalue(), "torchscript", obj.state_dict()
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    torch.save(state, buffer)
    return buffer.getvalue(), "state_dict", state


def pack_artifact(
    obj: nn.Module | Mapping[str, Any],
    torchscript: bool = False,
    example_input: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode a model (or a state dict) into the compact artifact format; see the module docstring.

    Args:
        obj: the model (its ``state_dict`` is stored) or a state dict.
        torchscript: store the scripted module instead (self-contained; the loader needs no model code).
        example_input: used to trace the model when scripting fails.
        metadata: JSON-serializable values stored in the header (read back with :func:`read_header`).

    Returns:
        The artifact bytes.
    """
    archive, kind, holder = _serialize(obj, torchscript, example_input)
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
        "format": FORMAT_VERSION,
        "kind": kind,
        "entries": entries,
        "streams": [[name, len(compressed[name]), streams.lengths[name]] for name in names],
        "metadata": dict(metadata or {}),
    }
    header_bytes = _compress(json.dumps(header, separators=(",", ":")).encode())
    return (
        MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + b"".join(compressed[n] for n in names)
    )


def save_artifact(
    model: nn.Module | Mapping[str, Any],
    path: str | os.PathLike | None = None,
    torchscript: bool = False,
    example_input: Any = None,
    verify: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Pack ``model`` (see :func:`pack_artifact`), check the round trip, and write it to ``path``.

    Args:
        model: the model (pruned, and/or converted to int8) or a state dict.
        path: where to write; ``None`` only returns the bytes.
        torchscript: store a TorchScript module (self-contained) instead of the state dict.
        example_input: an input batch; with ``verify``, the reloaded model must give outputs equal to
            ``model(example_input)``.
        verify: unpack right away and compare (the archive always; the outputs where ``example_input`` is
            given and ``model`` is a module).
        metadata: JSON-serializable values stored in the header.

    Returns:
        The artifact bytes.

    Raises:
        RuntimeError: if the round trip does not reproduce the model.
    """
    blob = pack_artifact(model, torchscript=torchscript, example_input=example_input, metadata=metadata)
    if verify:
        _verify(model, blob, torchscript, example_input)
    if path is not None:
        with open(path, "wb") as f:
            f.write(blob)
    return blob


def _verify(model: Any, blob: bytes, torchscript: bool, example_input: Any) -> None:
    import copy

    loaded = load_artifact(blob)
    if not isinstance(model, nn.Module) or example_input is None:
        return
    if not torchscript:
        skeleton = copy.deepcopy(model)
        skeleton.load_state_dict(loaded)
        loaded = skeleton
    was_training = model.training
    model.eval()
    loaded.eval()
    try:
        with torch.no_grad():
            expected, got = model(example_input), loaded(example_input)
    finally:
        model.train(was_training)
    if not torch.equal(expected, got):
        diff = (expected.float() - got.float()).abs().max().item()
        raise RuntimeError(f"Artifact round trip changed the model's outputs (max abs diff {diff:.3g}).")


# ----------------------------------------------------------------------------------------------- load
def _read(source: bytes | str | os.PathLike) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    with open(source, "rb") as f:
        return f.read()


def read_header(source: bytes | str | os.PathLike) -> dict[str, Any]:
    """The artifact's header: ``kind``, ``entries`` (name and encoding of each archive entry), ``streams``
    (name, compressed and raw length) and the user ``metadata``."""
    blob = _read(source)
    if blob[:8] != MAGIC:
        raise ValueError("Not a lightning-optim compact artifact (bad magic bytes).")
    (length,) = struct.unpack("<I", blob[8:12])
    header = json.loads(_decompress(blob[12 : 12 + length]))
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"Unsupported artifact format {header.get('format')}; this loader reads {FORMAT_VERSION}."
        )
    header["_payload_offset"] = 12 + length
    return header


def unpack_archive(source: bytes | str | os.PathLike) -> tuple[bytes, dict[str, Any]]:
    """Rebuild the plain torch archive (``torch.save`` or ``torch.jit.save`` zip) and return it with the header."""
    blob = _read(source)
    header = read_header(blob)
    offset = header["_payload_offset"]
    streams: dict[str, bytes] = {}
    for name, clen, rlen in header["streams"]:
        itemsize = int(name[1:]) if name.startswith("v") else 1
        data = _unshuffle(_decompress(blob[offset : offset + clen]), itemsize)
        if len(data) != rlen:
            raise ValueError(f"Corrupt artifact: stream {name!r} has {len(data)} bytes, expected {rlen}.")
        streams[name] = data
        offset += clen
    out = io.BytesIO()
    patterns: dict[str, Tensor] = {}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, spec in header["entries"]:
            enc = spec["enc"]
            if enc == "raw":
                raw = streams["misc"][spec["values"] : spec["values"] + spec["len"]]
            else:
                itemsize, n, nnz = spec["itemsize"], spec["n"], spec["nnz"]
                vname = f"v{itemsize}"
                if enc == "dense":
                    raw = streams[vname][spec["values"] : spec["values"] + n * itemsize]
                elif enc == "zeros":
                    raw = bytes(n * itemsize)
                else:
                    if enc == "pattern_of":
                        nz = patterns[spec["ref"]]
                        values = torch.ones(nnz, itemsize, dtype=torch.uint8)
                    else:
                        index = streams["gaps" if enc == "gaps" else "bitmask"][
                            spec["index"] : spec["index"] + spec["index_len"]
                        ]
                        if enc == "gaps":
                            nz = torch.zeros(n, dtype=torch.bool)
                            nz[_decode_gaps(index, nnz)] = True
                        else:
                            nz = _unpack_bits(index, n)
                        start = spec["values"]
                        values = torch.frombuffer(
                            bytearray(streams[vname][start : start + nnz * itemsize]), dtype=torch.uint8
                        ).view(nnz, itemsize)
                        if spec["enc"] in ("gaps", "bitmask"):
                            patterns[name] = nz
                    elems = torch.zeros(n, itemsize, dtype=torch.uint8)
                    elems[nz] = values
                    raw = elems.numpy().tobytes()
            zf.writestr(name, raw)
    return out.getvalue(), header


def load_artifact(
    source: bytes | str | os.PathLike,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> Any:
    """Rebuild what :func:`save_artifact` stored.

    Args:
        source: the artifact's path or bytes.
        model: for a state-dict artifact, a model of the same structure to load it into (strictly).
        map_location: device for the tensors.

    Returns:
        The TorchScript module (``torchscript`` artifacts), ``model`` with the state loaded (when given),
        else the state dict (loaded with ``torch.load(..., weights_only=True)``).
    """
    archive, header = unpack_archive(source)
    if header["kind"] == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(io.BytesIO(archive), map_location=map_location)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # torch's own, for qtensors
        state = torch.load(io.BytesIO(archive), map_location=map_location, weights_only=True)
    if model is None:
        return state
    model.load_state_dict(state)
    return model


def artifact_size_bytes(model: nn.Module | Mapping[str, Any], torchscript: bool = False) -> int:
    """Size in bytes of ``model``'s compact artifact (not verified, not written)."""
    return len(pack_artifact(model, torchscript=torchscript))


def describe_artifact(source: bytes | str | os.PathLike) -> dict[str, Any]:
    """Sizes by part: total, header, each compressed stream, and the count of entries per encoding."""
    blob = _read(source)
    header = read_header(blob)
    encodings: dict[str, int] = {}
    for _, spec in header["entries"]:
        encodings[spec["enc"]] = encodings.get(spec["enc"], 0) + 1
    return {
        "kind": header["kind"],
        "total_bytes": len(blob),
        "header_bytes": header["_payload_offset"],
        "streams": {name: {"compressed": c, "raw": r} for name, c, r in header["streams"]},
        "encodings": encodings,
        "metadata": header["metadata"],
    }
