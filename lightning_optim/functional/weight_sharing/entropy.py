"""Entropy coding of symbol streams: canonical Huffman codes, encoded and decoded vectorized in torch.

Two kinds of stream are coded:

- **symbols** (:func:`encode_symbols` / :func:`decode_symbols`): a sequence of small non-negative integers
  (the codebook indices of a shared weight, at most 2^15 distinct values) with a canonical Huffman code of
  code lengths at most :data:`MAX_CODE_LENGTH` (15) bits, as Deep Compression (Han et al. 2016) codes its
  indices;
- **positions** (:func:`encode_positions` / :func:`decode_positions`): which entries of a flattened tensor are
  non-zero, as the gaps between them (the run of zeros before each non-zero entry, Han et al.'s relative
  indexing) in a Deflate-like code (Deutsch 1996, RFC 1951): a gap below 16 is its own symbol, a larger one a
  symbol for its octave half (its bit length and second-highest bit) followed by its remaining bits raw; the
  symbols are Huffman coded as above. When most entries are non-zero the gaps between the *zeros* are coded
  instead (whichever is smaller).

Stream layout of :func:`encode_symbols` (varints are LEB128: 7 bits a byte, low first)::

    mode (1 byte): 0 empty | 1 one symbol repeated | 2 Huffman
    count (varint)
    mode 1: the symbol (varint)
    mode 2: alphabet size A (varint), A code lengths as 4-bit nibbles (high nibble first, 0 = unused),
            chunk size C (varint), the bit length of each of the ceil(count / C) chunks (varints),
            the code bits, most significant first, chunk after chunk, padded with zero bits to a byte

The chunks let the decoder of a long stream run all of them at once as a vector (one step per symbol of a chunk,
every chunk in parallel; a short stream is decoded symbol by symbol): a 4-bit, 10-million-weight layer decodes
in about a second with torch alone.

Decoding is bounded: the declared count is checked against a caller's ``max_count`` before anything is
allocated, the code lengths must form a complete prefix code, each chunk must end exactly where it says and the
padding must be zero bits, and the data must end where the stream does. A malformed stream raises
:class:`EntropyError` (a ``ValueError``); it never decodes to more symbols than declared. (A flipped bit that
still decodes consistently is caught by the artifact's CRC-32, not here.)

This module imports only torch and the standard library (it is part of the loader users copy).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: the longest Huffman code (bits); longer codes are avoided by flattening the counts (see
#: :func:`huffman_code_lengths`)
MAX_CODE_LENGTH = 15
#: the largest symbol alphabet :func:`encode_symbols` codes
MAX_ALPHABET = 1 << 15
#: the fewest symbols per chunk (fewer, longer chunks cost fewer bytes of chunk lengths)
MIN_CHUNK = 4096
#: the most chunks a stream is cut into by default (more chunks: faster decoding, a few bytes more)
MAX_CHUNKS = 4096
#: gaps below this are their own symbol; larger ones are coded by octave half plus raw bits
DIRECT_GAPS = 16
#: the largest gap symbol (a gap of 2^63 - 1)
MAX_GAP_SYMBOL = DIRECT_GAPS + 2 * (63 - 5) + 1

_MODE_EMPTY, _MODE_ONE, _MODE_HUFFMAN = 0, 1, 2
_POS_GAPS, _POS_ZERO_GAPS = 1, 2
_PIECE = 24  # the longest code written or read in one piece (longer ones are cut)


class EntropyError(ValueError):
    """A malformed, truncated or oversized entropy-coded stream."""


# ----------------------------------------------------------------------------------------------- varints
def write_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (an int >= 0) to ``out`` as an LEB128 varint."""
    if value < 0:
        raise ValueError(f"varint of a negative value {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def read_varint(data: bytes | memoryview, offset: int, limit: int = 1 << 62) -> tuple[int, int]:
    """The varint at ``offset`` of ``data`` and the offset after it.

    Raises:
        EntropyError: the data ends inside the varint, it is longer than 9 bytes, or its value exceeds ``limit``.
    """
    value = shift = 0
    for i in range(10):
        if offset + i >= len(data):
            raise EntropyError("truncated stream (the data ends inside a number)")
        byte = data[offset + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > limit:
                raise EntropyError(f"a declared number {value} exceeds its bound {limit}")
            return value, offset + i + 1
        shift += 7
    raise EntropyError("malformed stream (a number longer than 10 bytes)")


# ----------------------------------------------------------------------------------------------- codes
def huffman_code_lengths(counts: Sequence[int] | Tensor, max_length: int = MAX_CODE_LENGTH) -> list[int]:
    """Code length of each symbol of a Huffman code for ``counts`` (0 for a symbol that does not occur).

    Ties are broken by symbol order, so the lengths are a function of the counts. A single used symbol gets
    length 1. Where the optimal code has a code longer than ``max_length``, the counts are halved (rounding up,
    so that no used symbol disappears) until it fits: a standard, slightly suboptimal limit, reached only by
    very skewed counts.
    """
    counts = [int(c) for c in (counts.tolist() if isinstance(counts, Tensor) else counts)]
    if any(c < 0 for c in counts):
        raise ValueError("counts must be >= 0")
    used = [s for s, c in enumerate(counts) if c > 0]
    if len(used) > (1 << max_length):
        raise ValueError(f"{len(used)} symbols do not fit codes of at most {max_length} bits")
    lengths = [0] * len(counts)
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    work = list(counts)
    while True:
        heap: list[tuple[int, int, list[int]]] = [(work[s], s, [s]) for s in used]
        heapq.heapify(heap)
        depth = dict.fromkeys(used, 0)
        order = len(counts)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            for s in s1:
                depth[s] += 1
            for s in s2:
                depth[s] += 1
            heapq.heappush(heap, (c1 + c2, order, s1 + s2))
            order += 1
        if max(depth.values(), default=0) <= max_length:
            for s, d in depth.items():
                lengths[s] = d
            return lengths
        work = [(c + 1) // 2 if c else 0 for c in work]


def canonical_codes(lengths: Sequence[int]) -> list[int]:
    """The canonical Huffman code of each symbol for code ``lengths`` (0 where the length is 0): codes are
    assigned in order of (length, symbol), each the previous plus one, shifted left to its length."""
    codes = [0] * len(lengths)
    code = previous = 0
    for length, symbol in sorted((n, s) for s, n in enumerate(lengths) if n > 0):
        code <<= length - previous
        codes[symbol] = code
        code += 1
        previous = length
    return codes


def _check_lengths(lengths: list[int]) -> None:
    used = [n for n in lengths if n > 0]
    if len(used) < 2:
        raise EntropyError("malformed stream (a Huffman code with fewer than two symbols)")
    kraft = sum(1 << (MAX_CODE_LENGTH - n) for n in used)
    if kraft != 1 << MAX_CODE_LENGTH:
        raise EntropyError("malformed stream (the code lengths do not form a complete prefix code)")


# ----------------------------------------------------------------------------------------------- bits
def _split_long(values: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Codes longer than :data:`_PIECE` bits cut into pieces of at most that many bits (the first one
    shorter), most significant first; also the owner of each piece (``None`` when nothing was cut)."""
    if not lengths.numel() or int(lengths.max()) <= _PIECE:
        return values, lengths, None
    pieces = (lengths + _PIECE - 1) // _PIECE
    pieces = pieces.clamp(min=1)
    owner = torch.repeat_interleave(torch.arange(lengths.numel()), pieces)
    first = torch.cumsum(pieces, 0) - pieces
    after = pieces[owner] - 1 - (torch.arange(owner.numel()) - first[owner])  # pieces after this one
    n = lengths[owner]
    piece_len = torch.where(
        after == pieces[owner] - 1, n - _PIECE * (pieces[owner] - 1), torch.full_like(n, _PIECE)
    )
    piece_val = (values[owner] >> (_PIECE * after)) & ((1 << piece_len) - 1)
    return piece_val, piece_len, owner


def pack_codes(codes: Tensor, lengths: Tensor) -> tuple[bytes, int]:
    """Concatenate ``codes[i]`` written on ``lengths[i]`` bits (most significant first, ``lengths <= 62``),
    padded with zero bits to a byte; returns the bytes and the number of bits."""
    codes, lengths = codes.flatten().long().cpu(), lengths.flatten().long().cpu()
    codes, lengths, _ = _split_long(codes, lengths)
    total = int(lengths.sum()) if lengths.numel() else 0
    size = (total + 7) // 8
    out = torch.zeros(size + 4, dtype=torch.int64)
    offset = torch.cumsum(lengths, 0) - lengths
    byte, bit = offset >> 3, offset & 7
    # each code (<= 24 bits) starting at bit `bit` of byte `byte` lies within the 32 bits from that byte on;
    # codes do not overlap, so adding their bytes is OR-ing them
    word = (codes & ((1 << lengths) - 1)) << (32 - bit - lengths)
    for k in range(4):
        out.index_add_(0, byte + k, (word >> (24 - 8 * k)) & 0xFF)
    return out[:size].to(torch.uint8).numpy().tobytes(), total


def _words(data: bytes | memoryview) -> Tensor:
    """The 32-bit big-endian word that starts at each byte of ``data`` (zeros past its end), as int64; one more
    word than bytes (the one at the end)."""
    padded = torch.zeros(len(data) + 4, dtype=torch.int64)
    if len(data):
        padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]


def _check_padding(data: bytes | memoryview, total: int, what: str) -> None:
    if total % 8 and data[-1] & ((1 << (8 - total % 8)) - 1):
        raise EntropyError(f"malformed {what} (non-zero padding bits)")


def unpack_codes(data: bytes | memoryview, lengths: Tensor, what: str = "raw bits") -> Tensor:
    """Inverse of :func:`pack_codes`: the values written on ``lengths`` bits.

    Raises:
        EntropyError: ``data`` is not exactly the bytes of those bits, or its padding is not zero.
    """
    lengths = lengths.flatten().long()
    total = int(lengths.sum()) if lengths.numel() else 0
    if len(data) != (total + 7) // 8:
        raise EntropyError(f"truncated or padded {what} ({len(data)} bytes for {total} bits)")
    _check_padding(data, total, what)
    values = torch.zeros(lengths.numel(), dtype=torch.int64)
    if total == 0:
        return values
    _, piece_len, owner = _split_long(values, lengths)
    offset = torch.cumsum(piece_len, 0) - piece_len
    pieces = (_words(data)[offset >> 3] >> (32 - (offset & 7) - piece_len)) & ((1 << piece_len) - 1)
    if owner is None:
        return pieces
    # most significant piece first: shift what came before by each later piece's length
    for_owner = torch.zeros(lengths.numel(), dtype=torch.int64)
    remaining = lengths[owner] - (torch.cumsum(piece_len, 0) - (torch.cumsum(lengths, 0) - lengths)[owner])
    return for_owner.index_add_(0, owner, pieces << remaining)


# ----------------------------------------------------------------------------------------------- symbols
def _chunk_size(count: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(MIN_CHUNK, math.ceil(count / MAX_CHUNKS))


def encode_symbols(
    symbols: Tensor | Sequence[int], alphabet_size: int | None = None, chunk_size: int | None = None
) -> bytes:
    """Huffman-code a stream of symbols (integers in ``[0, alphabet_size)``); see the module docstring.

    Args:
        symbols: the stream (any shape; flattened).
        alphabet_size: the number of possible symbols (default: the largest symbol + 1); at most
            :data:`MAX_ALPHABET`.
        chunk_size: symbols per independently decodable chunk (default: at least :data:`MIN_CHUNK`, at most
            :data:`MAX_CHUNKS` chunks).

    Raises:
        ValueError: a negative symbol, or one outside the alphabet.
    """
    s = torch.as_tensor(symbols, dtype=torch.int64).flatten().cpu()
    out = bytearray()
    if s.numel() == 0:
        out.append(_MODE_EMPTY)
        write_varint(out, 0)
        return bytes(out)
    low, high = int(s.min()), int(s.max())
    alphabet = high + 1 if alphabet_size is None else int(alphabet_size)
    if low < 0 or high >= alphabet or alphabet > MAX_ALPHABET:
        raise ValueError(
            f"symbols must lie in [0, {alphabet}) with an alphabet of at most {MAX_ALPHABET}; got [{low}, {high}]"
        )
    counts = torch.bincount(s, minlength=high + 1)
    if int((counts > 0).sum()) == 1:
        out.append(_MODE_ONE)
        write_varint(out, s.numel())
        write_varint(out, low)
        return bytes(out)
    lengths = huffman_code_lengths(counts)
    codes = canonical_codes(lengths)
    size = high + 1
    out.append(_MODE_HUFFMAN)
    write_varint(out, s.numel())
    write_varint(out, size)
    nibbles = lengths + [0] * (size % 2)
    out.extend((nibbles[i] << 4) | nibbles[i + 1] for i in range(0, len(nibbles), 2))
    chunk = min(_chunk_size(s.numel(), chunk_size), s.numel())
    write_varint(out, chunk)
    length_of = torch.tensor(lengths, dtype=torch.int64)[s]
    for start in range(0, s.numel(), chunk):
        write_varint(out, int(length_of[start : start + chunk].sum()))
    payload, _ = pack_codes(torch.tensor(codes, dtype=torch.int64)[s], length_of)
    out.extend(payload)
    return bytes(out)


def decode_symbols(data: bytes | memoryview, max_count: int, max_alphabet: int = MAX_ALPHABET) -> Tensor:
    """Inverse of :func:`encode_symbols`: the symbols as an int64 tensor.

    Args:
        data: exactly one stream (nothing before or after it).
        max_count: the most symbols the caller accepts (checked before decoding).
        max_alphabet: the largest alphabet the caller accepts.

    Raises:
        EntropyError: a malformed or truncated stream, trailing bytes, or more symbols than ``max_count``.
    """
    data = memoryview(bytes(data)) if not isinstance(data, memoryview) else data
    if not len(data):
        raise EntropyError("truncated stream (no data)")
    mode = data[0]
    count, offset = read_varint(data, 1)
    if count > max_count:
        raise EntropyError(f"the stream declares {count} symbols, more than the {max_count} expected")
    if mode == _MODE_EMPTY:
        if count != 0 or offset != len(data):
            raise EntropyError("malformed stream (an empty stream with a count or trailing bytes)")
        return torch.zeros(0, dtype=torch.int64)
    if mode == _MODE_ONE:
        symbol, offset = read_varint(data, offset, max_alphabet - 1)
        if offset != len(data) or count == 0:
            raise EntropyError("malformed stream (a one-symbol stream with trailing bytes or no count)")
        return torch.full((count,), symbol, dtype=torch.int64)
    if mode != _MODE_HUFFMAN or count == 0:
        raise EntropyError(f"malformed stream (mode {mode} with {count} symbols)")
    size, offset = read_varint(data, offset, max_alphabet)
    nibble_bytes = (size + 1) // 2
    if offset + nibble_bytes > len(data):
        raise EntropyError("truncated stream (inside the code lengths)")
    table = bytes(data[offset : offset + nibble_bytes])
    offset += nibble_bytes
    lengths = [n for b in table for n in (b >> 4, b & 15)][:size]
    if size % 2 and table[-1] & 15:
        raise EntropyError("malformed stream (non-zero padding nibble)")
    _check_lengths(lengths)
    chunk, offset = read_varint(data, offset, max(count, 1))
    if chunk < 1:
        raise EntropyError("malformed stream (a chunk size of 0)")
    n_chunks = math.ceil(count / chunk)
    chunk_bits = []
    for _ in range(n_chunks):
        bits, offset = read_varint(data, offset, chunk * MAX_CODE_LENGTH)
        chunk_bits.append(bits)
    total = sum(chunk_bits)
    payload = data[offset:]
    if len(payload) != (total + 7) // 8:
        raise EntropyError(
            f"truncated stream or trailing bytes ({len(payload)} bytes of code bits, {(total + 7) // 8} declared)"
        )
    return _decode_chunks(payload, lengths, count, chunk, chunk_bits)


#: streams of fewer chunks are decoded symbol by symbol in plain Python (about half a microsecond a symbol),
#: longer ones with every chunk in parallel, one vector step per symbol of a chunk (a fixed ~0.1 ms a step)
SCALAR_CHUNKS = 256


def _decode_tables(lengths: list[int]) -> tuple[int, list[int], list[int]]:
    """The decoding table of a complete code: for every ``width``-bit window, the symbol its first bits code and
    that code's length."""
    width = max(lengths)
    sym_of = [0] * (1 << width)
    len_of = [0] * (1 << width)
    for symbol, (n, code) in enumerate(zip(lengths, canonical_codes(lengths), strict=True)):
        if n:
            lo, hi = code << (width - n), (code + 1) << (width - n)
            sym_of[lo:hi] = [symbol] * (hi - lo)
            len_of[lo:hi] = [n] * (hi - lo)
    return width, sym_of, len_of


def _decode_chunks(
    payload: memoryview, lengths: list[int], count: int, chunk: int, chunk_bits: list[int]
) -> Tensor:
    width, sym_of, len_of = _decode_tables(lengths)
    total = sum(chunk_bits)
    _check_padding(payload, total, "stream")
    ends = torch.tensor(chunk_bits, dtype=torch.int64).cumsum(0)
    if len(chunk_bits) < SCALAR_CHUNKS:
        return _decode_scalar(bytes(payload), width, sym_of, len_of, count, chunk, ends.tolist())
    words = _words(payload)  # a code of <= 15 bits at any bit offset lies within the word of its first byte
    sym_t, len_t = torch.tensor(sym_of, dtype=torch.int64), torch.tensor(len_of, dtype=torch.int64)
    pos = ends - torch.tensor(chunk_bits, dtype=torch.int64)
    n_chunks = len(chunk_bits)
    last = count - (n_chunks - 1) * chunk  # symbols in the last chunk
    out = torch.zeros(n_chunks, chunk, dtype=torch.int64)
    mask = (1 << width) - 1
    last_end = None
    for t in range(chunk):
        at = pos.clamp(max=total)
        window = (words.index_select(0, at >> 3) >> (32 - width - (at & 7))) & mask
        out[:, t] = sym_t.index_select(0, window)
        pos = pos + len_t.index_select(0, window)
        if t == last - 1:
            last_end = int(pos[-1])
    if last_end != int(ends[-1]) or (n_chunks > 1 and not torch.equal(pos[:-1], ends[:-1])):
        raise EntropyError("malformed stream (a chunk does not end where it says)")
    return out.flatten()[:count]


def _decode_scalar(
    data: bytes, width: int, sym_of: list[int], len_of: list[int], count: int, chunk: int, ends: list[int]
) -> Tensor:
    """The same decoding, one symbol at a time (chunk after chunk, each checked to end where it says)."""
    padded = data + bytes(3)
    shift_base, mask = 24 - width, (1 << width) - 1
    out = [0] * count
    pos = 0
    i = 0
    for end in ends:
        stop = min(i + chunk, count)
        while i < stop:
            q = pos >> 3
            window = (
                ((padded[q] << 16) | (padded[q + 1] << 8) | padded[q + 2]) >> (shift_base - (pos & 7))
            ) & mask
            out[i] = sym_of[window]
            pos += len_of[window]
            i += 1
            if pos > end:
                break
        if pos != end or i != stop:
            raise EntropyError("malformed stream (a chunk does not end where it says)")
    return torch.tensor(out, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------- positions
def _bit_length(values: Tensor) -> Tensor:
    """Bit length of each value (>= 1; exact below 2^53)."""
    _, exponent = torch.frexp(values.double())
    return exponent.long()


def gap_symbols(gaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The Deflate-like code of gaps >= 0: ``(symbols, extra values, extra bit lengths)``.

    A gap below :data:`DIRECT_GAPS` is its own symbol (no extra bits); a gap ``g >= 16`` of bit length ``b``
    is the symbol ``16 + 2 (b - 5) + h`` (``h`` its second-highest bit) followed by its ``b - 2`` low bits.
    """
    gaps = gaps.long()
    big = gaps >= DIRECT_GAPS
    b = torch.where(big, _bit_length(gaps), torch.zeros_like(gaps))
    extra_len = torch.where(big, b - 2, torch.zeros_like(gaps))
    high = torch.where(big, (gaps >> (b - 2).clamp(min=0)) & 1, torch.zeros_like(gaps))
    symbols = torch.where(big, DIRECT_GAPS + 2 * (b - 5) + high, gaps)
    extra = torch.where(big, gaps & ((1 << extra_len) - 1), torch.zeros_like(gaps))
    return symbols, extra, extra_len


def gaps_from_symbols(symbols: Tensor, data: bytes | memoryview) -> Tensor:
    """Inverse of :func:`gap_symbols`: the gaps, reading the extra bits from ``data`` (exactly their bytes)."""
    big = symbols >= DIRECT_GAPS
    rel = (symbols - DIRECT_GAPS).clamp(min=0)
    b = torch.where(big, rel // 2 + 5, torch.zeros_like(symbols))
    extra_len = torch.where(big, b - 2, torch.zeros_like(symbols))
    extra = unpack_codes(data, extra_len, "extra bits of the positions")
    base = torch.where(big, (1 << (b - 1).clamp(min=0)) | ((rel % 2) << extra_len), torch.zeros_like(symbols))
    return torch.where(big, base | extra, symbols)


def _encode_gaps(positions: Tensor) -> bytes:
    previous = torch.cat([torch.tensor([-1], dtype=torch.int64), positions[:-1]])
    symbols, extra, extra_len = gap_symbols(positions - previous - 1)
    stream = encode_symbols(symbols)
    out = bytearray()
    write_varint(out, len(stream))
    out.extend(stream)
    out.extend(pack_codes(extra, extra_len)[0])
    return bytes(out)


def encode_positions(mask: Tensor) -> bytes:
    """Which entries of ``mask`` (flattened, row-major) are ``True``, coded as gaps (module docstring).

    All-``True`` and all-``False`` masks take no bytes at all (the reader knows the count). Otherwise the first
    byte says whether the gaps between the ``True`` entries or between the ``False`` ones follow (the smaller).
    """
    flat = mask.flatten().bool().cpu()
    count = int(flat.sum())
    if count in (0, flat.numel()):
        return b""
    ones = _encode_gaps(torch.nonzero(flat).flatten())
    zeros = _encode_gaps(torch.nonzero(~flat).flatten()) if 2 * count > flat.numel() else None
    if zeros is not None and len(zeros) < len(ones):
        return bytes([_POS_ZERO_GAPS]) + zeros
    return bytes([_POS_GAPS]) + ones


def decode_positions(data: bytes | memoryview, numel: int, count: int) -> Tensor:
    """Inverse of :func:`encode_positions`: the bool mask of ``numel`` entries with ``count`` set.

    Raises:
        EntropyError: a malformed stream, or one that does not give exactly ``count`` positions below ``numel``.
    """
    data = memoryview(bytes(data)) if not isinstance(data, memoryview) else data
    if not 0 <= count <= numel:
        raise EntropyError(f"malformed positions ({count} non-zero entries of {numel})")
    if count in (0, numel):
        if len(data):
            raise EntropyError("malformed positions (bytes where none are expected)")
        return torch.full((numel,), count == numel, dtype=torch.bool)
    if not len(data) or data[0] not in (_POS_GAPS, _POS_ZERO_GAPS):
        raise EntropyError("malformed positions (unknown kind)")
    inverted = data[0] == _POS_ZERO_GAPS
    expected = numel - count if inverted else count
    size, offset = read_varint(data, 1, len(data))
    if offset + size > len(data):
        raise EntropyError("truncated positions")
    symbols = decode_symbols(data[offset : offset + size], expected, MAX_GAP_SYMBOL + 1)
    if symbols.numel() != expected:
        raise EntropyError(f"malformed positions ({symbols.numel()} gaps, {expected} expected)")
    if symbols.numel() and int(symbols.max()) > MAX_GAP_SYMBOL:
        raise EntropyError("malformed positions (a gap symbol out of range)")
    gaps = gaps_from_symbols(symbols, data[offset + size :])
    if int(gaps.max()) >= numel:
        raise EntropyError("malformed positions (a gap beyond the tensor)")
    positions = torch.cumsum(gaps + 1, 0) - 1
    if int(positions[-1]) >= numel:
        raise EntropyError("malformed positions (a position beyond the tensor)")
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[positions] = True
    return ~mask if inverted else mask


__all__ = [
    "DIRECT_GAPS",
    "EntropyError",
    "MAX_ALPHABET",
    "MAX_CODE_LENGTH",
    "canonical_codes",
    "decode_positions",
    "decode_symbols",
    "encode_positions",
    "encode_symbols",
    "gap_symbols",
    "gaps_from_symbols",
    "huffman_code_lengths",
    "pack_codes",
    "read_varint",
    "unpack_codes",
    "write_varint",
]
