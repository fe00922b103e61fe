"""The extreme-compression artifact: a model's state dict with shared weights as codebooks and entropy-coded
indices, sparse positions as coded gaps, in a compact binary file (``.lws``) that torch alone reads back.

What is stored
--------------
Every entry of the state dict (parameters and buffers, by name) is stored exactly, in the cheapest of:

- **shared**: a floating-point tensor with at most 256 distinct non-zero values (a weight shared by
  :mod:`~lightning_optim.functional.weight_sharing.codebooks`, after pruning or not): its distinct non-zero
  values (the codebook, float32 or, on request, float16/bfloat16), the codebook index of each non-zero entry
  (Huffman coded, :func:`~lightning_optim.functional.weight_sharing.entropy.encode_symbols`) and the positions
  of the non-zero entries (coded gaps, :func:`~lightning_optim.functional.weight_sharing.entropy.encode_positions`;
  nothing for a tensor without zeros);
- **sparse**: the positions as above and the non-zero values raw;
- **dense**: the values raw (biases, norms, running statistics, integer buffers).

The raw values of the sparse and dense entries (each entry byte-shuffled: all first bytes, then all second
bytes...) go to one block, kept as it is or compressed with LZMA (stdlib ``lzma``, raw LZMA2) where that is
smaller. ``other_dtype="float16"`` (or ``"bfloat16"``) stores
floating raw values in that type, ``codebook_dtype`` the codebooks: values the type cannot hold are rounded,
so the reloaded model then differs from the saved one (the
:class:`~lightning_optim.callbacks.WeightSharing` callback loads its own artifact back into the network, so
that what it evaluates is what the file holds).

How the loader knows the architecture
-------------------------------------
The file holds a *skeleton* of the state dict (each entry's name, shape and dtype) and the values, not the
model's code. :func:`load_shared` takes the model (or a function that builds it: the user's class, e.g.
``lambda: LeNet300100()``), checks that its state dict has exactly the skeleton's names and shapes (a clear
error otherwise, before any decoding), loads the values and returns it in eval mode;
:func:`load_shared_state_dict` returns the state dict alone. The model's class is the user's: store what builds
it (its name and arguments) in ``metadata`` if the file travels alone.

File layout
-----------
::

    MAGIC (8 bytes) | header length (varint) | header | payload | CRC-32 of all before (4 bytes, LE)

    header:  format version (varint), metadata (varint length + JSON), entry count (varint), per entry:
             name (varint length + UTF-8), dtype code (1 byte), kind (1 byte: 0 dense, 1 sparse, 2 shared),
             ndim and dims (varints), and for sparse/shared entries the non-zero count and the positions
             stream length (varints), for shared ones the codebook size k, the codebook dtype code
             and the index stream length; then the raw block: stored dtype of floats (1 byte), compression
             (1 byte: 0 none, 1 LZMA), raw and stored length (varints)
    payload: per sparse/shared entry in order: codebook bytes, index stream, positions stream; then the
             raw block (per dense/sparse entry in order, its values byte-shuffled)

Loading is bounded: the CRC-32 is checked first (a truncated or altered file is refused), then every
declared size against the data and the model's skeleton, and the total of elements against ``max_elements``;
any inconsistency raises :class:`SharedArtifactError` (a ``ValueError``) naming the file, never a wrong model.

This module imports only torch, the standard library and :mod:`.entropy` (copy ``artifact.py`` and
``entropy.py`` beside a deployment: ``import artifact; model = artifact.load_shared("m.lws", build_model)``).
"""

from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

try:
    from .entropy import (
        EntropyError,
        decode_positions,
        decode_symbols,
        encode_positions,
        encode_symbols,
        read_varint,
        write_varint,
    )
except ImportError:  # copied beside a deployment as top-level modules
    from entropy import (  # type: ignore[no-redef]
        EntropyError,
        decode_positions,
        decode_symbols,
        encode_positions,
        encode_symbols,
        read_varint,
        write_varint,
    )

MAGIC = b"LOPTWS01"
FORMAT_VERSION = 1
#: the file suffix the callback writes
SUFFIX = ".lws"
#: the most distinct non-zero values a tensor may have to be stored as shared (8-bit indices)
MAX_CODEBOOK = 256
#: the default bound on the total number of elements a file may declare (2^31)
MAX_ELEMENTS = 1 << 31
#: the codebook / raw float storage types by name
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_CODE = {d: i for i, d in enumerate(_DTYPES)}
KINDS: tuple[str, ...] = ("dense", "sparse", "shared")
_DENSE, _SPARSE, _SHARED = 0, 1, 2
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


class SharedArtifactError(ValueError):
    """A file that is not a weight-sharing artifact, or a truncated, altered or inconsistent one (the message
    names the file); or a model that does not fit the artifact's skeleton."""


# ----------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class EntrySize:
    """The bytes one state-dict entry takes in the artifact (the header's own bytes are counted apart)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    nonzero: int
    #: codebook entries (shared entries; 0 otherwise)
    k: int
    codebook: int
    indices: int
    positions: int
    #: raw values (dense and sparse entries), before the raw block's compression
    other: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def total(self) -> int:
        return self.codebook + self.indices + self.positions + self.other

    @property
    def bits_per_weight(self) -> float:
        """Bytes x 8 per element of the tensor."""
        return 8 * self.total / max(1, self.numel)


@dataclass(frozen=True)
class SizeBreakdown:
    """Where the bytes of an artifact go: per entry (:class:`EntrySize`) and for the file as a whole.

    ``total`` is the file's size: the entries, plus ``header`` (magic, skeleton, metadata) and ``checksum``,
    minus ``raw_saved`` (what LZMA saved on the raw block).
    """

    entries: tuple[EntrySize, ...]
    header: int
    raw_saved: int
    checksum: int
    total: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, int]:
        """Bytes by part: ``codebook``, ``indices``, ``positions``, ``other`` (raw values after compression),
        ``header`` (with the checksum)."""
        return {
            "codebook": sum(e.codebook for e in self.entries),
            "indices": sum(e.indices for e in self.entries),
            "positions": sum(e.positions for e in self.entries),
            "other": sum(e.other for e in self.entries) - self.raw_saved,
            "header": self.header + self.checksum,
        }

    def by_layer(self) -> dict[str, dict[str, int]]:
        """``{entry name: {"codebook", "indices", "positions", "other", "total"}}``."""
        return {
            e.name: {
                "codebook": e.codebook,
                "indices": e.indices,
                "positions": e.positions,
                "other": e.other,
                "total": e.total,
            }
            for e in self.entries
        }

    def markdown(self) -> str:
        """A table: entry, kind, shape, non-zeros, codebook, indices, positions, other, bits/weight."""
        lines = [
            "| entry | kind | shape | non-zero | k | codebook B | indices B | positions B | other B | bits/weight |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in self.entries:
            shape = "x".join(str(d) for d in e.shape) or "scalar"
            lines.append(
                f"| {e.name} | {e.kind} | {shape} | {e.nonzero} | {e.k or ''} | {e.codebook} | {e.indices} | "
                f"{e.positions} | {e.other} | {e.bits_per_weight:.3f} |"
            )
        parts = self.parts()
        lines.append(
            f"| **total {self.total} B** | | | | | {parts['codebook']} | {parts['indices']} | {parts['positions']} "
            f"| {parts['other']} (after LZMA) | header {parts['header']} |"
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- encode
def _raw_bytes(t: Tensor, shuffle: bool = False) -> bytes:
    """The elements' bytes (little endian); with ``shuffle``, byte-shuffled: all first bytes, then all second
    bytes... (signs and exponents of floats side by side, which LZMA compresses better)."""
    t = t.detach().cpu().flatten().contiguous()
    if t.numel() == 0:
        return b""
    raw = (t.to(torch.uint8) if t.dtype == torch.bool else t).view(torch.uint8)
    if shuffle and t.element_size() > 1:
        raw = raw.view(-1, t.element_size()).t().contiguous()
    return raw.numpy().tobytes()


def _storage_dtype(name: str | None, option: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in STORAGE_DTYPES:
        raise ValueError(f"Unknown `{option}` {name!r}; allowed: {list(STORAGE_DTYPES)}.")
    return STORAGE_DTYPES[name]


@dataclass
class _Plan:
    name: str
    tensor: Tensor  # what the file holds (after any rounding), on the CPU
    kind: int
    nonzero: int = 0
    positions: bytes = b""
    codebook: bytes = b""
    k: int = 0
    indices: bytes = b""
    raw: bytes = b""


def _plan_entry(
    name: str, value: Tensor, codebook_dtype: torch.dtype, raw_dtype: torch.dtype | None
) -> _Plan:
    t = value.detach().cpu()
    if t.dtype not in _CODE:
        raise ValueError(f"State-dict entry {name!r} has dtype {t.dtype}, which the artifact does not store.")
    if not t.is_floating_point():
        return _Plan(name, t, _DENSE, raw=_raw_bytes(t, shuffle=True))
    store = raw_dtype if raw_dtype is not None else t.dtype
    nonzero = t != 0
    count = int(nonzero.sum())
    positions = encode_positions(nonzero)  # nothing for a tensor without zeros (or without non-zeros)
    candidates: list[_Plan] = []
    dense = t.to(store).to(t.dtype)
    candidates.append(_Plan(name, dense, _DENSE, raw=_raw_bytes(t.to(store), shuffle=True)))
    if count < t.numel():
        values = t[nonzero].to(store)
        sparse = torch.zeros_like(t)
        sparse[nonzero] = values.to(t.dtype)
        candidates.append(
            _Plan(name, sparse, _SPARSE, count, positions, raw=_raw_bytes(values, shuffle=True))
        )
    if count:
        distinct, index = torch.unique(t[nonzero], sorted=True, return_inverse=True)
        if distinct.numel() <= MAX_CODEBOOK:
            book = distinct.to(codebook_dtype)
            if codebook_dtype != t.dtype:  # rounding may merge values: the codebook of the rounded tensor
                book, merged = torch.unique(book, sorted=True, return_inverse=True)
                index = merged[index]
            if bool((book != 0).all()):  # (a value rounded to zero would be a zero with a codebook entry)
                shared = torch.zeros_like(t)
                shared[nonzero] = book.to(t.dtype)[index]
                candidates.append(
                    _Plan(
                        name,
                        shared,
                        _SHARED,
                        count,
                        positions,
                        _raw_bytes(book),
                        int(book.numel()),
                        encode_symbols(index, int(book.numel())),
                    )
                )
    return min(candidates, key=lambda p: len(p.positions) + len(p.codebook) + len(p.indices) + len(p.raw))


def _state_of(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"State-dict entry {name!r} is not a tensor ({type(value).__name__}).")
        if value.is_quantized or value.layout != torch.strided:
            raise ValueError(
                f"State-dict entry {name!r} is a quantized or sparse tensor: the weight-sharing artifact stores "
                "float models (use lightning_optim.functional.artifact for int8 models)."
            )
    return state


def _encode(
    model: nn.Module | Mapping[str, Tensor],
    codebook_dtype: str,
    other_dtype: str | None,
    metadata: Mapping[str, Any] | None,
) -> tuple[bytes, list[_Plan]]:
    book_dtype = _storage_dtype(codebook_dtype, "codebook_dtype")
    assert book_dtype is not None
    raw_dtype = _storage_dtype(other_dtype, "other_dtype")
    plans = [_plan_entry(n, v, book_dtype, raw_dtype) for n, v in _state_of(model).items()]
    header = bytearray()
    write_varint(header, FORMAT_VERSION)
    meta = (
        json.dumps(dict(metadata or {}), separators=(",", ":"), sort_keys=True).encode() if metadata else b""
    )
    write_varint(header, len(meta))
    header.extend(meta)
    write_varint(header, len(plans))
    payload = bytearray()
    raw = bytearray()
    for p in plans:
        name = p.name.encode()
        write_varint(header, len(name))
        header.extend(name)
        header.append(_CODE[p.tensor.dtype])
        header.append(p.kind)
        write_varint(header, p.tensor.dim())
        for d in p.tensor.shape:
            write_varint(header, int(d))
        if p.kind in (_SPARSE, _SHARED):
            write_varint(header, p.nonzero)
            write_varint(header, len(p.positions))
        if p.kind == _SHARED:
            write_varint(header, p.k)
            header.append(_CODE[book_dtype])
            write_varint(header, len(p.indices))
            payload.extend(p.codebook)
            payload.extend(p.indices)
        payload.extend(p.positions)
        raw.extend(p.raw)
    packed = lzma.compress(bytes(raw), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS) if raw else b""
    compressed = bool(raw) and len(packed) < len(raw)
    header.append(_CODE[raw_dtype] if raw_dtype is not None else 255)
    header.append(1 if compressed else 0)
    write_varint(header, len(raw))
    write_varint(header, len(packed) if compressed else len(raw))
    payload.extend(packed if compressed else raw)
    prefix = bytearray(MAGIC)
    write_varint(prefix, len(header))
    body = bytes(prefix) + bytes(header) + bytes(payload)
    return body + struct.pack("<I", zlib.crc32(body)), plans


def pack_shared(
    model: nn.Module | Mapping[str, Tensor],
    codebook_dtype: str = "float32",
    other_dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """The artifact bytes of ``model`` (a module or a state dict); see the module docstring and
    :func:`save_shared`."""
    return _encode(model, codebook_dtype, other_dtype, metadata)[0]


def save_shared(
    model: nn.Module | Mapping[str, Tensor],
    path: str | os.PathLike | None = None,
    codebook_dtype: str = "float32",
    other_dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    example_input: Any = None,
    verify: bool = True,
) -> bytes:
    """Write ``model``'s state dict as a weight-sharing artifact (module docstring) and return its bytes.

    Args:
        model: the network (or its state dict), weights shared or not, pruned or not: every entry is stored
            exactly, in the cheapest of the shared, sparse and dense encodings.
        path: where to write; ``None`` only returns the bytes.
        codebook_dtype: the codebooks' storage type, ``"float32"`` (exact), ``"float16"`` or ``"bfloat16"``
            (rounded where needed).
        other_dtype: the storage type of other floating values (biases, norms, unshared weights): ``None`` (their
            own, exact), ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        metadata: JSON-serializable values stored in the header (read back by :func:`read_shared_header`).
        example_input: with ``verify`` and a module, the reloaded module must give outputs equal to what the
            stored values give on this input.
        verify: decode the bytes right away and compare every entry with what was meant to be stored (exactly).

    Raises:
        ValueError: a tensor the format does not store (quantized, sparse layout, complex), an unknown dtype name.
        RuntimeError: ``verify`` found a difference (a bug: please report it).
    """
    blob, plans = _encode(model, codebook_dtype, other_dtype, metadata)
    if verify:
        decoded = load_shared_state_dict(blob)
        for p in plans:
            got = decoded[p.name]
            if got.dtype != p.tensor.dtype or not torch.equal(got, p.tensor):
                raise RuntimeError(f"Weight-sharing artifact round trip changed {p.name!r}.")
        if example_input is not None and isinstance(model, nn.Module):
            _check_outputs(model, {p.name: p.tensor for p in plans}, decoded, example_input)
    if path is not None:
        with open(path, "wb") as f:
            f.write(blob)
    return blob


def _check_outputs(model: nn.Module, stored: dict[str, Tensor], decoded: dict[str, Tensor], x: Any) -> None:
    import copy

    args = x if isinstance(x, tuple) else (x,)
    a, b = copy.deepcopy(model).cpu().eval(), copy.deepcopy(model).cpu().eval()
    a.load_state_dict(stored)
    b.load_state_dict(decoded)
    with torch.no_grad():
        ya, yb = a(*args), b(*args)
    if isinstance(ya, Tensor) and not torch.equal(ya, yb):
        raise RuntimeError("Weight-sharing artifact round trip changed the model's outputs.")


# ----------------------------------------------------------------------------------------------- decode
def _read(source: bytes | bytearray | memoryview | str | os.PathLike) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    try:
        with open(source, "rb") as f:
            return f.read(), os.fspath(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"No weight-sharing artifact at {os.fspath(source)!r}.") from None


@dataclass
class _Entry:
    name: str
    dtype: torch.dtype
    kind: int
    shape: tuple[int, ...]
    nonzero: int = 0
    positions_len: int = 0
    k: int = 0
    book_dtype: torch.dtype = torch.float32
    indices_len: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class _Parsed:
    entries: list[_Entry]
    metadata: dict[str, Any]
    payload_offset: int
    raw_dtype: torch.dtype | None
    raw_compressed: bool
    raw_len: int
    raw_stored: int
    header_bytes: int
    blob: bytes


def _parse(blob: bytes, where: str, max_elements: int) -> _Parsed:
    def fail(why: str) -> SharedArtifactError:
        return SharedArtifactError(f"{where}: not a valid weight-sharing artifact: {why}.")

    if blob[: len(MAGIC)] != MAGIC:
        raise fail("bad magic bytes (not a .lws file)" if len(blob) >= len(MAGIC) else "truncated file")
    if len(blob) < len(MAGIC) + 5:
        raise fail("truncated file")
    body, (crc,) = blob[:-4], struct.unpack("<I", blob[-4:])
    if zlib.crc32(body) != crc:
        raise fail("CRC-32 mismatch (a truncated or altered file)")
    try:
        length, offset = read_varint(body, len(MAGIC), len(body))
        end = offset + length
        if end > len(body):
            raise fail("the header runs past the end of the file")
        header = memoryview(body)[:end]
        version, offset = read_varint(header, offset)
        if version != FORMAT_VERSION:
            raise fail(f"format version {version}; this loader reads {FORMAT_VERSION}")
        meta_len, offset = read_varint(header, offset, end - offset)
        metadata = json.loads(bytes(header[offset : offset + meta_len])) if meta_len else {}
        offset += meta_len
        count, offset = read_varint(header, offset, end)
        entries: list[_Entry] = []
        elements = 0
        for _ in range(count):
            name_len, offset = read_varint(header, offset, end - offset)
            name = bytes(header[offset : offset + name_len]).decode()
            offset += name_len
            if offset + 2 > end:
                raise fail("the header ends inside an entry")
            dtype_code, kind = header[offset], header[offset + 1]
            offset += 2
            if dtype_code >= len(_DTYPES) or kind > _SHARED:
                raise fail(f"entry {name!r} has an unknown dtype or kind")
            ndim, offset = read_varint(header, offset, 32)
            shape = []
            for _ in range(ndim):
                d, offset = read_varint(header, offset, max_elements)
                shape.append(d)
            entry = _Entry(name, _DTYPES[dtype_code], kind, tuple(shape))
            elements += entry.numel
            if elements > max_elements:
                raise fail(f"it declares more than max_elements={max_elements} elements")
            if kind != _DENSE and not entry.dtype.is_floating_point:
                raise fail(f"entry {name!r} is {KINDS[kind]} with a non-floating dtype")
            if kind in (_SPARSE, _SHARED):
                entry.nonzero, offset = read_varint(header, offset, entry.numel)
                entry.positions_len, offset = read_varint(header, offset, len(body))
            if kind == _SHARED:
                entry.k, offset = read_varint(header, offset, 1 << 15)
                if offset >= end:
                    raise fail("the header ends inside an entry")
                book_code = header[offset]
                offset += 1
                if book_code >= len(_DTYPES) or not _DTYPES[book_code].is_floating_point or entry.k < 1:
                    raise fail(f"entry {name!r} has a malformed codebook")
                entry.book_dtype = _DTYPES[book_code]
                entry.indices_len, offset = read_varint(header, offset, len(body))
            entries.append(entry)
        if offset + 2 > end:
            raise fail("the header ends before the raw block")
        raw_code, compression = header[offset], header[offset + 1]
        offset += 2
        raw_len, offset = read_varint(header, offset, 8 * max_elements)
        raw_stored, offset = read_varint(header, offset, len(body))
        if offset != end or compression > 1 or (raw_code != 255 and raw_code >= len(_DTYPES)):
            raise fail("malformed header")
    except (EntropyError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise fail(f"malformed header ({err})") from err
    raw_dtype = None if raw_code == 255 else _DTYPES[raw_code]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise fail("an entry name appears twice")
    return _Parsed(entries, metadata, end, raw_dtype, bool(compression), raw_len, raw_stored, end, blob)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _from_raw(data: bytes, dtype: torch.dtype, count: int, shuffled: bool = False) -> Tensor:
    if count == 0:
        return torch.zeros(0, dtype=dtype)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if dtype == torch.bool:
        return raw.bool()
    size = _itemsize(dtype)
    if shuffled and size > 1:
        raw = raw.view(size, count).t().contiguous().flatten()
    return raw.view(dtype).clone()


def _decode(parsed: _Parsed, where: str) -> dict[str, Tensor]:
    def fail(why: str) -> SharedArtifactError:
        return SharedArtifactError(f"{where}: not a valid weight-sharing artifact: {why}.")

    body = memoryview(parsed.blob)[:-4]
    offset = parsed.payload_offset
    raw_dtype = parsed.raw_dtype
    # the raw block: its expected size is known from the entries
    expected_raw = 0
    for e in parsed.entries:
        store = raw_dtype if (raw_dtype is not None and e.dtype.is_floating_point) else e.dtype
        n = e.numel if e.kind == _DENSE else (e.nonzero if e.kind == _SPARSE else 0)
        expected_raw += n * _itemsize(store)
    streams = sum(
        e.positions_len + e.indices_len + e.k * _itemsize(e.book_dtype)
        if e.kind == _SHARED
        else e.positions_len
        for e in parsed.entries
    )
    if parsed.raw_len != expected_raw or offset + streams + parsed.raw_stored != len(body):
        raise fail("the declared sizes do not add up to the file's size (a truncated or altered file)")
    raw_at = offset + streams
    raw_block = bytes(body[raw_at:])
    if parsed.raw_compressed:
        try:
            raw_block = lzma.decompress(raw_block, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        except lzma.LZMAError as err:
            raise fail(f"the raw block cannot be decompressed ({err})") from err
    if len(raw_block) != expected_raw:
        raise fail("the raw block has the wrong size")
    raw_offset = 0
    state: dict[str, Tensor] = {}
    try:
        for e in parsed.entries:
            store = raw_dtype if (raw_dtype is not None and e.dtype.is_floating_point) else e.dtype
            if e.kind == _DENSE:
                size = e.numel * _itemsize(store)
                values = _from_raw(raw_block[raw_offset : raw_offset + size], store, e.numel, shuffled=True)
                raw_offset += size
                state[e.name] = values.to(e.dtype).view(e.shape)
                continue
            if e.kind == _SHARED:
                book_size = e.k * _itemsize(e.book_dtype)
                book = _from_raw(bytes(body[offset : offset + book_size]), e.book_dtype, e.k)
                offset += book_size
                index = decode_symbols(body[offset : offset + e.indices_len], e.nonzero, e.k)
                offset += e.indices_len
                if index.numel() != e.nonzero:
                    raise fail(
                        f"entry {e.name!r} has {index.numel()} indices for {e.nonzero} non-zero weights"
                    )
                values = book.to(e.dtype)[index]
            else:
                size = e.nonzero * _itemsize(store)
                raw = raw_block[raw_offset : raw_offset + size]
                values = _from_raw(raw, store, e.nonzero, shuffled=True).to(e.dtype)
                raw_offset += size
            mask = decode_positions(body[offset : offset + e.positions_len], e.numel, e.nonzero)
            offset += e.positions_len
            flat = torch.zeros(e.numel, dtype=e.dtype)
            flat[mask] = values
            state[e.name] = flat.view(e.shape)
    except EntropyError as err:
        raise fail(f"entry {e.name!r}: {err}") from err
    return state


def read_shared_header(source: bytes | str | os.PathLike, max_elements: int = MAX_ELEMENTS) -> dict[str, Any]:
    """What the artifact holds without decoding it: ``{"metadata", "entries": [{"name", "shape", "dtype",
    "kind", "nonzero", "k"}], "bytes"}``.

    Raises:
        SharedArtifactError: not an artifact, or a truncated, altered or malformed one.
    """
    blob, where = _read(source)
    parsed = _parse(blob, where, max_elements)
    return {
        "metadata": parsed.metadata,
        "entries": [
            {
                "name": e.name,
                "shape": list(e.shape),
                "dtype": str(e.dtype).removeprefix("torch."),
                "kind": KINDS[e.kind],
                "nonzero": e.nonzero if e.kind != _DENSE else None,
                "k": e.k or None,
            }
            for e in parsed.entries
        ],
        "bytes": len(blob),
    }


def load_shared_state_dict(
    source: bytes | str | os.PathLike,
    max_elements: int = MAX_ELEMENTS,
    map_location: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """The state dict an artifact holds (on ``map_location``).

    Args:
        source: the artifact's path or bytes.
        max_elements: refuse a file that declares more elements in all (a bound on what decoding allocates).
        map_location: the device of the tensors.

    Raises:
        FileNotFoundError: no file at ``source``.
        SharedArtifactError: not an artifact, or a truncated, altered or malformed one.
    """
    blob, where = _read(source)
    state = _decode(_parse(blob, where, max_elements), where)
    if torch.device(map_location).type != "cpu":
        state = {n: t.to(map_location) for n, t in state.items()}
    return state


def load_shared(
    source: bytes | str | os.PathLike,
    model: nn.Module | Callable[[], nn.Module],
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the float model an artifact holds: ``model`` (or what calling it returns) with the stored values
    loaded (strictly), in eval mode.

    The artifact holds the state dict's skeleton (names, shapes, dtypes), not the model's code: ``model`` is the
    architecture (the user's class, ``LeNet300100()``, or a function that builds it); its own values do not
    matter. Its state dict must have exactly the skeleton's names and shapes: checked before anything is
    decoded, so that declared sizes are bounded by the model's.

    Raises:
        FileNotFoundError: no file at ``source``.
        SharedArtifactError: not an artifact, a truncated, altered or malformed one, or a model whose state dict
            does not have the skeleton's names and shapes (the message lists the differences).
    """
    blob, where = _read(source)
    net = model if isinstance(model, nn.Module) else model()
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"`model` must be an nn.Module or a function returning one, got {type(net).__name__}."
        )
    expected = net.state_dict()
    parsed = _parse(blob, where, max_elements=max(1, sum(t.numel() for t in expected.values())))
    stored = {e.name: e.shape for e in parsed.entries}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = sorted(
        f"{n}: file {tuple(stored[n])}, model {tuple(expected[n].shape)}"
        for n in set(stored) & set(expected)
        if tuple(stored[n]) != tuple(expected[n].shape)
    )
    if missing or unexpected or shapes:
        details = "; ".join(
            part
            for part in (
                f"missing in the file: {missing[:10]}" if missing else "",
                f"not in the model: {unexpected[:10]}" if unexpected else "",
                f"shapes differ: {shapes[:10]}" if shapes else "",
            )
            if part
        )
        raise SharedArtifactError(
            f"{where}: the model ({type(net).__name__}) does not fit the artifact's skeleton ({details}); pass the "
            "architecture the artifact was saved from."
        )
    state = _decode(parsed, where)
    net.load_state_dict(state, strict=True)
    return net.to(map_location).eval()


def size_breakdown(
    source: nn.Module | Mapping[str, Tensor] | bytes | str | os.PathLike,
    codebook_dtype: str = "float32",
    other_dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> SizeBreakdown:
    """Where the bytes go, per state-dict entry (codebook, indices, positions, other) and for the whole file.

    Args:
        source: an artifact (path or bytes), or a model / state dict (encoded now, as :func:`save_shared` would
            with the same ``codebook_dtype``, ``other_dtype`` and ``metadata``; nothing is written).

    Raises:
        SharedArtifactError: a source artifact that is not valid.
    """
    if isinstance(source, (nn.Module, Mapping)):
        blob = pack_shared(source, codebook_dtype, other_dtype, metadata)
        where = "<model>"
    else:
        blob, where = _read(source)
    parsed = _parse(blob, where, MAX_ELEMENTS)
    raw_dtype = parsed.raw_dtype
    out = []
    for e in parsed.entries:
        store = raw_dtype if (raw_dtype is not None and e.dtype.is_floating_point) else e.dtype
        n = e.numel if e.kind == _DENSE else (e.nonzero if e.kind == _SPARSE else 0)
        out.append(
            EntrySize(
                name=e.name,
                kind=KINDS[e.kind],
                shape=e.shape,
                nonzero=e.nonzero if e.kind != _DENSE else e.numel,
                k=e.k,
                codebook=e.k * _itemsize(e.book_dtype) if e.kind == _SHARED else 0,
                indices=e.indices_len,
                positions=e.positions_len,
                other=n * _itemsize(store),
            )
        )
    return SizeBreakdown(
        entries=tuple(out),
        header=parsed.header_bytes,
        raw_saved=parsed.raw_len - parsed.raw_stored,
        checksum=4,
        total=len(blob),
        metadata=parsed.metadata,
    )


def dense_state_dict_bytes(model: nn.Module | Mapping[str, Tensor]) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (the reference the compression ratio is taken against); a
    state dict given as a ``dict`` is saved as it is (with the module versions, ``_metadata``, a state dict
    carries: a gathered copy of a sharded network's state dict counts as the network's own)."""
    state = (
        model.state_dict()
        if isinstance(model, nn.Module)
        else model
        if isinstance(model, dict)
        else dict(model)
    )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


__all__ = [
    "EntrySize",
    "MAGIC",
    "MAX_CODEBOOK",
    "STORAGE_DTYPES",
    "SUFFIX",
    "SharedArtifactError",
    "SizeBreakdown",
    "dense_state_dict_bytes",
    "load_shared",
    "load_shared_state_dict",
    "pack_shared",
    "read_shared_header",
    "save_shared",
    "size_breakdown",
]
