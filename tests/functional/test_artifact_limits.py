"""The artifact loader is bounded: decompression stops at the declared sizes, declared sizes are checked against
the file and the limits before anything is allocated, damaged or foreign files get one clear error naming the
file, and only regular files are read (a FIFO never blocks)."""

from __future__ import annotations

import json
import os
import struct
import threading
import tracemalloc

import pytest
import torch
from torch import nn

from lightning_optim.functional import artifact as A
from lightning_optim.functional.artifact import (
    ArtifactFormatError,
    describe_artifact,
    load_artifact,
    main,
    pack_artifact,
    read_header,
    read_regular_file,
    unpack_archive,
)
from lightning_optim.paths import user_file
from tests.catalogue.loaders import (
    craft_artifact,
    good_artifact,
    huge_tensor_artifact,
    lzma_bomb_artifact,
)


@pytest.fixture(scope="module")
def good() -> bytes:
    return good_artifact()


def _header(blob: bytes) -> tuple[dict, int]:
    length = struct.unpack("<I", blob[8:12])[0]
    return json.loads(A._decompress(blob[12 : 12 + length])), 12 + length


def _with_header(blob: bytes, header: dict) -> bytes:
    _, end = _header(blob)
    data = A._compress(json.dumps(header, separators=(",", ":")).encode())
    return blob[:8] + struct.pack("<I", len(data)) + data + blob[end:]


# ------------------------------------------------------------------------------------- bounded decompression
def test_an_lzma_bomb_is_stopped_at_its_declared_size():
    bomb = lzma_bomb_artifact(megabytes=256, declared=16)
    assert len(bomb) < 60_000
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactFormatError, match="decompresses to more than the declared 16 bytes"):
            load_artifact(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the header's decoder may take its 64 MiB dictionary (reserved, barely touched); never the 256 MiB
    assert peak < 80 * 2**20, f"{peak:,} bytes allocated for a bomb declaring 16"


def test_a_tiny_file_declaring_a_12_gb_tensor_is_refused_before_anything_is_allocated():
    blob = huge_tensor_artifact(12_000_000_000)
    assert len(blob) < 200
    for reader in (read_header, describe_artifact, unpack_archive, load_artifact):
        with pytest.raises(ArtifactFormatError, match=r"12,000,000,000 bytes.*nothing was allocated"):
            reader(blob)


def test_the_limit_is_overridable_for_a_genuine_artifact():
    state = {"w": torch.zeros(17 * 2**20 // 4 * 4 + 4), "b": torch.ones(3)}  # 68 MB of zeros: a few bytes
    blob = pack_artifact(state)
    assert len(blob) < 2_000
    with pytest.raises(ArtifactFormatError, match="`max_unpacked_bytes`"):
        load_artifact(blob)  # the default: at least 64 MiB, 10,000 times the file's size
    loaded = load_artifact(blob, max_unpacked_bytes=200 * 2**20)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    with pytest.raises(ArtifactFormatError, match="more than 1,000"):
        read_header(pack_artifact(nn.Linear(64, 64).state_dict()), max_unpacked_bytes=1000)
    for bad in (0, -5, 1.5, "1e9"):
        with pytest.raises(ValueError, match="`max_unpacked_bytes` must be a positive number"):
            read_header(blob, max_unpacked_bytes=bad)


# ------------------------------------------------------------------------------------- damaged files
def test_every_truncation_is_refused(good):
    for length in range(len(good)):
        with pytest.raises(ArtifactFormatError, match="(?i)truncated|empty|corrupt"):
            load_artifact(good[:length])


def test_every_byte_with_a_bit_flipped_is_refused_never_loaded(good):
    """One bit flipped in each byte in turn (the magic, the length, the header, every stream): each is refused;
    none loads as another model."""
    for position in range(len(good)):
        altered = bytearray(good)
        altered[position] ^= 1 << (position % 8)
        with pytest.raises(ArtifactFormatError):
            load_artifact(bytes(altered))


def test_an_edited_header_fails_its_crc_and_an_old_header_without_one_still_loads(good):
    header, _ = _header(good)
    assert "header_crc32" in header
    edited = dict(header, metadata={"note": "edited"})
    with pytest.raises(ArtifactFormatError, match="header fails its CRC-32"):
        load_artifact(_with_header(good, edited))
    old = {k: v for k, v in header.items() if k != "header_crc32"}  # as written before headers had a CRC
    state = load_artifact(_with_header(good, old))
    assert all(torch.equal(state[k], v) for k, v in load_artifact(good).items())


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"LOPT", "truncated to 4 bytes"),
        (b"PK\x03\x04" + bytes(40), "bad magic bytes"),
        ("\ufeff{}".encode() * 9, "bad magic bytes"),
        (A.MAGIC + b"\x05\x00", "truncated before the header"),
        (A.MAGIC + b"\xff\xff\xff\xff" + bytes(20), "run past the end"),
        (A.MAGIC + b"\x04\x00\x00\x00" + b"\x00\x00\x00\x00", "3 bytes follow the end of the header"),
        (A.MAGIC + b"\x01\x00\x00\x00" + b"\x00", "header is not readable JSON"),
        (A.MAGIC + b"\x04\x00\x00\x00" + b"\x03\x02\x01\x00", "header cannot be decompressed"),
    ],
)
def test_foreign_or_tiny_files_get_one_clear_error(data, message):
    with pytest.raises(ArtifactFormatError, match=message):
        load_artifact(data)


def _entry(**spec):
    return ["archive/data/0", {"itemsize": 4, "n": 4, "nnz": 2, **spec}]


@pytest.mark.parametrize(
    "entries, streams, fields, message",
    [
        ([_entry(enc="dense", values=0, nnz=4)], {"v4": bytes(8)}, {}, "reads bytes 0..16 of stream 'v4'"),
        ([_entry(enc="zeros", nnz=1)], {}, {}, "all zeros but declares 1 non-zero"),
        ([_entry(enc="gaps", index=0, index_len=1, values=0)], {"gaps": b"\x00", "v4": bytes(8)}, {}, "gap"),
        (
            [_entry(enc="gaps", index=0, index_len=2, values=0)],
            {"gaps": b"\x00\x09", "v4": b"\x01" * 8},
            {},
            "element 10 of 4",
        ),
        (
            [_entry(enc="bitmask", index=0, index_len=1, values=0)],
            {"bitmask": b"\xf0", "v4": b"\x01" * 8},
            {},
            "does not mark 2 of 4",
        ),
        (
            [_entry(enc="bitmask", index=0, index_len=3, values=0)],
            {"bitmask": bytes(3), "v4": bytes(8)},
            {},
            "bitmask of 3 bytes",
        ),
        ([_entry(enc="pattern_of", ref="nowhere")], {}, {}, "refers to 'nowhere'"),
        ([_entry(enc="zeros", nnz=0), _entry(enc="zeros", nnz=0)], {}, {}, "listed twice"),
        ([_entry(enc="base64")], {}, {}, "unknown encoding 'base64'"),
        ([_entry(enc="zeros", nnz=0, itemsize=3)], {}, {}, "itemsize 3"),
        ([_entry(enc="zeros", nnz=0, n=-1)], {}, {}, "no valid itemsize/n/nnz"),
        ([_entry(enc="zeros", nnz=0, n=True)], {}, {}, "no valid itemsize/n/nnz"),
        ([], {"v3": bytes(6)}, {}, "'v3' is unknown"),
        ([], {}, {"streams": [["v4", 5, 6]], "crc32": {"v4": 0}}, "not whole 4-byte elements"),
        ([], {"misc": b"x"}, {"crc32": {}}, "stream 'misc' has no CRC-32"),
        ([], {}, {"format": 99}, "Unsupported artifact format 99"),
        ([], {}, {"kind": "pickle"}, "Unknown artifact kind 'pickle'"),
        ({"a": 1}, {}, {}, "no entry list"),
        ([], {}, {"metadata": [1]}, "metadata is not a JSON object"),
        ([], {}, {"program": {"inputs": [{"shape": [2], "dtype": "load"}]}}, "malformed program input"),
        ([], {}, {"program": {"inputs": [{"shape": [10**6, 10**6], "dtype": "float32"}]}}, "a program input"),
    ],
)
def test_every_field_is_checked_before_use(entries, streams, fields, message):
    blob = craft_artifact(entries, streams, **fields)
    with pytest.raises(ArtifactFormatError, match=message):
        load_artifact(blob)


def test_an_archive_torch_cannot_load_is_the_files_fault():
    """A header and streams that pass every check, around bytes torch cannot read (only a hand-made file can
    be so): reported as the file's error, with torch's first line."""
    blob = craft_artifact([["archive/data.pkl", {"enc": "raw", "values": 0, "len": 5}]], {"misc": b"hello"})
    with pytest.raises(ArtifactFormatError, match="torch cannot load the state_dict archive"):
        load_artifact(blob)


# ------------------------------------------------------------------------------------- paths
def _fifo(tmp_path):
    path = tmp_path / "model.lopt"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = _fifo(tmp_path)
    outcome: list = []

    def read() -> None:
        try:
            load_artifact(fifo)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # release it: a writer opened and closed
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the loader blocked on a FIFO")
    assert isinstance(outcome[0], ArtifactFormatError), outcome
    assert "is not a regular file" in str(outcome[0]) and str(fifo) in str(outcome[0])


def test_paths_are_refused_as_paths_user_file_refuses_them(tmp_path, good):
    """The loader keeps its own copy of ``paths.user_file``'s rules (it imports only torch and the stdlib):
    the same refusals, the same words."""
    fifo, missing = _fifo(tmp_path), tmp_path / "missing.lopt"
    for path, error, words in [
        (fifo, ValueError, "is not a regular file"),
        (tmp_path, ValueError, "is a folder"),
        (missing, FileNotFoundError, "does not exist"),
    ]:
        with pytest.raises(error, match=words):
            user_file(path, "artifact")
        with pytest.raises(error, match=words):
            read_regular_file(path, "artifact", "a .lopt file", 10**6)
        with pytest.raises(error, match=f"`artifact` '{path}'"):
            load_artifact(path)
    (tmp_path / "big.lopt").write_bytes(good)
    with pytest.raises(ArtifactFormatError, match="more than the 100 this loader reads"):
        read_regular_file(tmp_path / "big.lopt", "artifact", "a .lopt file", 100)
    with pytest.raises(TypeError, match="path or bytes, not int"):
        load_artifact(3)  # never read as file descriptor 3


def test_the_message_names_the_file(tmp_path, good):
    path = tmp_path / "cut.lopt"
    path.write_bytes(good[:100])
    with pytest.raises(ArtifactFormatError, match=f"Corrupt artifact '{path}': truncated"):
        load_artifact(path)
    with pytest.raises(ArtifactFormatError, match="Corrupt artifact <in-memory bytes>: truncated"):
        load_artifact(good[:100])


def test_command_line_reports_a_bad_file_in_one_line(tmp_path, capsys, good):
    path = tmp_path / "cut.lopt"
    path.write_bytes(good[:-7])
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("artifact.py: error: Corrupt artifact") and err.count("\n") == 1, err
    assert main([str(_fifo(tmp_path))]) == 2
    assert "is not a regular file" in capsys.readouterr().err
    good_path = tmp_path / "good.lopt"
    good_path.write_bytes(good)
    assert main([str(good_path), "--max-unpacked-bytes", "10"]) == 2
    assert "`max_unpacked_bytes`" in capsys.readouterr().err
