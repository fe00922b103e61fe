"""The entropy coder: canonical Huffman codes by hand, round trips of symbol and position streams on many random
inputs (hypothesis: empty, one symbol, skewed, uniform, many chunks), and bounded, typed refusals of malformed,
truncated and oversized streams."""

from __future__ import annotations

import contextlib
import heapq

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_optim.functional.weight_sharing import entropy
from lightning_optim.functional.weight_sharing.entropy import (
    MAX_CODE_LENGTH,
    EntropyError,
    canonical_codes,
    decode_positions,
    decode_symbols,
    encode_positions,
    encode_symbols,
    gap_symbols,
    gaps_from_symbols,
    huffman_code_lengths,
    pack_codes,
    read_varint,
    unpack_codes,
    write_varint,
)

SETTINGS = settings(max_examples=150, deadline=None)


def _huffman_cost(counts: list[int]) -> int:
    """The optimal total code length of a Huffman code (sum of the merged weights), without a length limit."""
    heap = [c for c in counts if c > 0]
    if len(heap) < 2:
        return sum(heap)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


# ------------------------------------------------------------------------------------------ by hand
def test_canonical_codes_by_hand():
    # lengths 2, 1, 3, 3: in (length, symbol) order 1 -> 0, 0 -> 10, 2 -> 110, 3 -> 111
    assert canonical_codes([2, 1, 3, 3]) == [0b10, 0b0, 0b110, 0b111]
    assert canonical_codes([0, 2, 0, 2, 2, 2]) == [0, 0b00, 0, 0b01, 0b10, 0b11]


def test_huffman_lengths_by_hand():
    # counts 5, 2, 1, 1: merge 1+1 (symbols 2, 3), then 2+2 (symbol 1 with them), then 4+5
    assert huffman_code_lengths([5, 2, 1, 1]) == [1, 2, 3, 3]
    assert huffman_code_lengths([0, 7, 0]) == [0, 1, 0]
    assert huffman_code_lengths([3, 3, 0, 3, 3]) == [2, 2, 0, 2, 2]


def test_huffman_lengths_are_limited_and_complete():
    fibonacci = [1, 1]
    while len(fibonacci) < 40:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = huffman_code_lengths(fibonacci)  # the optimal code is 39 bits deep
    assert max(lengths) == MAX_CODE_LENGTH
    assert sum(2.0**-n for n in lengths) == 1.0


def test_gap_code_by_hand():
    gaps = torch.tensor([0, 15, 16, 23, 24, 31, 32, 1000, 2**40])
    symbols, extra, extra_len = gap_symbols(gaps)
    assert symbols.tolist() == [0, 15, 16, 16, 17, 17, 18, 27, 88]
    assert extra_len.tolist() == [0, 0, 3, 3, 3, 3, 4, 8, 39]
    assert extra.tolist()[:7] == [0, 0, 0, 7, 0, 7, 0]
    data, _ = pack_codes(extra, extra_len)
    assert gaps_from_symbols(symbols, data).tolist() == gaps.tolist()


def test_varints():
    out = bytearray()
    for v in (0, 1, 127, 128, 300, 2**40):
        write_varint(out, v)
    offset, got = 0, []
    for _ in range(6):
        v, offset = read_varint(out, offset)
        got.append(v)
    assert got == [0, 1, 127, 128, 300, 2**40] and offset == len(out)
    with pytest.raises(EntropyError, match="truncated"):
        read_varint(bytes([0x80, 0x80]), 0)
    with pytest.raises(EntropyError, match="exceeds its bound"):
        read_varint(bytes([0xAC, 0x02]), 0, limit=299)


# ------------------------------------------------------------------------------------------ properties
def _streams():
    uniform = st.integers(1, 300).flatmap(lambda a: st.lists(st.integers(0, a - 1), max_size=3000))
    skewed = st.lists(st.sampled_from([0] * 40 + [1] * 4 + [2, 3, 200]), max_size=3000)
    geometric = st.lists(st.integers(0, 2**20).map(lambda v: v.bit_length()), max_size=3000)
    one = st.tuples(st.integers(0, 255), st.integers(0, 2000)).map(lambda t: [t[0]] * t[1])
    return st.one_of(uniform, skewed, geometric, one, st.just([]))


@contextlib.contextmanager
def _vector_decoder():
    """Decode every stream with the vectorized decoder (all chunks at once), not symbol by symbol."""
    previous = entropy.SCALAR_CHUNKS
    entropy.SCALAR_CHUNKS = 0
    try:
        yield
    finally:
        entropy.SCALAR_CHUNKS = previous


@SETTINGS
@given(symbols=_streams(), chunk=st.one_of(st.none(), st.integers(1, 64)))
def test_symbols_round_trip(symbols, chunk):
    data = encode_symbols(symbols, chunk_size=chunk)
    out = decode_symbols(data, max_count=len(symbols))
    assert out.dtype == torch.int64 and out.tolist() == symbols
    with _vector_decoder():
        assert decode_symbols(data, max_count=len(symbols)).tolist() == symbols
    if len(set(symbols)) >= 2:  # Huffman: within the code-length table and chunk bytes of the optimum
        counts = torch.bincount(torch.tensor(symbols)).tolist()
        optimum_bytes = _huffman_cost(counts) / 8
        assert len(data) <= optimum_bytes + 16 + (len(counts) + 1) // 2 + 3 * (
            len(symbols) // (chunk or 4096) + 1
        )


@SETTINGS
@given(
    numel=st.integers(0, 5000),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_positions_round_trip(numel, density, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(numel, generator=g) < density
    data = encode_positions(mask)
    count = int(mask.sum())
    assert torch.equal(decode_positions(data, numel, count), mask)
    if count in (0, numel):
        assert data == b""


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 62), st.integers(0, 2**62 - 1)), max_size=200))
def test_pack_codes_round_trip(items):
    lengths = torch.tensor([n for n, _ in items], dtype=torch.int64)
    values = torch.tensor([v & ((1 << n) - 1) for n, v in items], dtype=torch.int64)
    data, total = pack_codes(values, lengths)
    assert total == int(lengths.sum()) and len(data) == (total + 7) // 8
    assert unpack_codes(data, lengths).tolist() == values.tolist()


@SETTINGS
@given(data=st.binary(max_size=200), max_count=st.integers(0, 500), vector=st.booleans())
def test_random_bytes_are_refused_or_bounded(data, max_count, vector):
    with _vector_decoder() if vector else contextlib.nullcontext():
        try:
            out = decode_symbols(data, max_count)
        except EntropyError:
            return
    assert out.numel() <= max_count


@SETTINGS
@given(data=st.binary(max_size=200), numel=st.integers(0, 300), count=st.integers(0, 300))
def test_random_position_bytes_are_refused_or_exact(data, numel, count):
    try:
        mask = decode_positions(data, numel, count)
    except EntropyError:
        return
    assert mask.numel() == numel and int(mask.sum()) == count


# ------------------------------------------------------------------------------------------ refusals
def _stream() -> tuple[list[int], bytes]:
    symbols = torch.randint(0, 16, (5000,), generator=torch.Generator().manual_seed(0)).tolist()
    return symbols, encode_symbols(symbols, chunk_size=700)


@pytest.mark.parametrize("vector", [False, True])
def test_every_truncation_is_refused(vector):
    symbols, data = _stream()
    with _vector_decoder() if vector else contextlib.nullcontext():
        for cut in [0, 1, 2, 5, 10, len(data) // 2, len(data) - 1]:
            with pytest.raises(EntropyError):
                decode_symbols(data[:cut], max_count=len(symbols))


def test_trailing_bytes_are_refused():
    symbols, data = _stream()
    with pytest.raises(EntropyError, match="trailing"):
        decode_symbols(data + b"\x00", max_count=len(symbols))


def test_more_symbols_than_expected_are_refused_before_decoding():
    symbols, data = _stream()
    with pytest.raises(EntropyError, match="declares 5000 symbols, more than the 4999 expected"):
        decode_symbols(data, max_count=len(symbols) - 1)
    huge = bytearray([1])  # "symbol 3, repeated 2^40 times": refused before anything is allocated
    write_varint(huge, 2**40)
    write_varint(huge, 3)
    with pytest.raises(EntropyError, match="more than the 1000 expected"):
        decode_symbols(bytes(huge), max_count=1000)


def test_an_incomplete_code_is_refused():
    data = bytearray(encode_symbols([0, 1, 1, 2, 2, 2, 2]))
    # the code-length nibbles follow mode, count, alphabet size: make symbol 0's length 3 instead of 2
    data[3] = (3 << 4) | (data[3] & 15)
    with pytest.raises(EntropyError, match="complete prefix code"):
        decode_symbols(bytes(data), max_count=7)


@pytest.mark.parametrize("vector", [False, True])
def test_a_chunk_that_does_not_end_where_it_says_is_refused(vector):
    symbols = [0, 1] * 50
    data = bytearray(encode_symbols(symbols, chunk_size=50))
    # the two chunk lengths (50 bits each, one-byte varints) swapped for 49 and 51
    at = data.rindex(bytes([50, 50]))  # after the chunk size (also 50)
    data[at : at + 2] = bytes([49, 51])
    with _vector_decoder() if vector else contextlib.nullcontext():
        with pytest.raises(EntropyError, match="does not end where it says"):
            decode_symbols(bytes(data), max_count=100)


def test_positions_with_the_wrong_count_are_refused():
    mask = torch.zeros(100, dtype=torch.bool)
    mask[::7] = True
    data = encode_positions(mask)
    with pytest.raises(EntropyError):
        decode_positions(data, 100, int(mask.sum()) + 1)
    with pytest.raises(EntropyError, match="beyond the tensor"):
        decode_positions(data, 90, int(mask.sum()))
    with pytest.raises(EntropyError, match="bytes where none are expected"):
        decode_positions(data, 100, 100)
