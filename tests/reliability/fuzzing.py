"""Property-based fuzzing of the readers of user files: the ``.lopt`` artifact loader, the IDX reader and the
text (CSV/TSV/JSONL) reader, with ``hypothesis``.

Each target draws cases from a strategy (random bytes, and structured inputs: real artifacts truncated, with bits
flipped, bytes overwritten, inserted or deleted, or header fields edited; IDX headers with any type, rank and
dimensions, gzip bombs; CSV/TSV/JSONL text in several encodings, with quotes, stray delimiters and garbage) and
runs the reader on each. A case passes when:

- the reader returns, or raises one of our error types (``ValueError`` and its subclasses, ``FileNotFoundError``);
  any other exception is a failure, named by its type;
- a case that damaged a real file without re-signing it (no CRC-32 recomputed) never loads as something else: a
  load must give exactly the original model (``WrongModel`` otherwise); a well-formed IDX or text file gives back
  exactly what was written (``WrongResult``);
- it ends within the per-case time limit (``Timeout``; the limit is enforced with ``SIGALRM``);
- the resident set rises at most the memory limit above where it was when the case began (``Memory``: the
  peak RSS is reset before each case through ``/proc/self/clear_refs`` and read from ``VmHWM`` after it; the
  input is built before the case starts); every reader is given the same explicit limit on what it may read
  or unpack (:data:`READ_LIMIT`).

:func:`fuzz` runs one target for a number of cases and returns a :class:`Report`; ``benchmarks/fuzz.py`` is the
command that runs 10,000 cases per target and records the table, ``tests/reliability/test_fuzz.py`` a short,
derandomized run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import lzma
import os
import resource
import signal
import struct
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

#: the most bytes every reader is allowed to read or unpack in a case (passed to each explicitly)
READ_LIMIT = 16 * 2**20
#: the default rise of the resident set allowed in one case
MEMORY_LIMIT = 256 * 2**20
#: the default time limit of one case (seconds)
TIME_LIMIT = 10.0
#: the exceptions a reader may raise
ALLOWED: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
TARGETS: tuple[str, ...] = ("artifact", "idx", "text")


class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past the time limit (a BaseException: no reader catches it)."""


class WrongResult(AssertionError):
    """A reader returned something other than what the case wrote (or, for an artifact, the original model)."""


@dataclass
class Outcome:
    """One case: ``returned``, ``refused`` (an allowed error) or ``failed``; the error's type or failure kind."""

    status: str
    name: str
    seconds: float
    rss_growth: int
    case: str
    message: str = ""
    peak_rss: int = 0


@dataclass
class Report:
    """The outcomes of one target's run, summarized."""

    target: str
    outcomes: list[Outcome] = field(default_factory=list)
    peak_rss: int = 0
    start_rss: int = 0

    @property
    def cases(self) -> int:
        return len(self.outcomes)

    def counts(self, status: str) -> Counter:
        return Counter(o.name for o in self.outcomes if o.status == status)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def slowest(self) -> Outcome | None:
        return max(self.outcomes, key=lambda o: o.seconds, default=None)

    @property
    def largest(self) -> Outcome | None:
        return max(self.outcomes, key=lambda o: o.rss_growth, default=None)


def _status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` size (``VmHWM``: peak resident set; ``VmRSS``: current), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux: ``5`` to ``/proc/self/clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """The process's peak resident set size since the last reset (else since it started), in bytes."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    current = _status_bytes("VmRSS")
    return current if current is not None else _peak_rss()


def _alarm(_signum: int, _frame: Any) -> None:
    raise CaseTimeout()


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


# ------------------------------------------------------------------------------------- targets
class Target:
    """A reader and the strategy of its cases; :meth:`run` raises :class:`WrongResult` for a wrong result."""

    name = ""

    def strategy(self) -> st.SearchStrategy:
        raise NotImplementedError

    def prepare(self, case: Any) -> Any:
        """The reader's input for ``case`` (files written, bytes built): not part of the case's measure."""
        return case

    def run(self, prepared: Any) -> None:
        """Call the reader on what :meth:`prepare` built; raise :class:`WrongResult` for a wrong result."""
        raise NotImplementedError

    def describe(self, case: Any) -> str:
        """A reproducer: how to rebuild the input (short inputs in full)."""
        return _short(case)

    def warm_up(self) -> None:
        """Run the reader once on a good input (its first call imports and caches: not the cases' growth)."""

    def close(self) -> None:
        """Remove what the target wrote."""


def _json_values() -> st.SearchStrategy:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, 10**12, 3_000_000_000]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )


def _leaf_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) to a node of a JSON value, the root excluded."""
    paths: list[tuple] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(_leaf_paths(child, (*prefix, key)))
    return paths


def _set_path(value: Any, path: tuple, new: Any, delete: bool) -> None:
    for key in path[:-1]:
        value = value[key]
    if delete:
        del value[path[-1]]
    else:
        value[path[-1]] = new


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype:
            return False
        if a.shape != b.shape or a.is_quantized != b.is_quantized:
            return False
        if a.is_quantized:
            return torch.equal(a.int_repr(), b.int_repr()) and torch.equal(a.dequantize(), b.dequantize())
        return torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class ArtifactTarget(Target):
    """``load_artifact(bytes or path, max_unpacked_bytes=READ_LIMIT)`` on random bytes and damaged real artifacts."""

    name = "artifact"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.corpus = self._corpus()

    @staticmethod
    def _corpus() -> list[tuple[str, bytes, Callable[[Any], bool]]]:
        """``(name, bytes, check)``: real artifacts of every kind, and each as written before headers had a
        CRC-32; ``check(loaded)`` tells whether a load gave the original."""
        import torch
        from torch import nn

        from lightning_optim.functional import artifact as A

        torch.manual_seed(0)
        linear = nn.Linear(24, 12)
        with torch.no_grad():
            linear.weight.mul_(linear.weight.abs() > 0.15)  # pruned: the gaps encoding
        state = {**linear.state_dict(), "mask": linear.weight != 0, "steps": torch.tensor(7)}
        dense = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
        x = torch.randn(2, 6)
        with torch.no_grad():
            expected = dense(x)

        def same_state(loaded: Any) -> bool:
            return _same(loaded, state)

        def same_outputs(loaded: Any) -> bool:
            with torch.no_grad():
                return torch.equal(loaded(x), expected)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            corpus = [
                ("state_dict", A.pack_artifact(state), same_state),
                ("torchscript", A.pack_artifact(dense, archive_format="torchscript"), same_outputs),
                (
                    "exported_program",
                    A.pack_artifact(dense, archive_format="exported_program", example_input=x),
                    same_outputs,
                ),
            ]
        for name, blob, check in list(corpus):
            length = struct.unpack("<I", blob[8:12])[0]
            header = json.loads(A._decompress(blob[12 : 12 + length]))
            header.pop("header_crc32")
            corpus.append((f"{name} (no header CRC)", _with_header(blob, header), check))
        return corpus

    def strategy(self) -> st.SearchStrategy:
        n = len(self.corpus)
        which = st.integers(0, n - 1)
        position = st.integers(0, 2**20)
        return st.one_of(
            st.tuples(st.just("random"), st.binary(max_size=2048)),
            st.tuples(st.just("magic+random"), st.binary(max_size=2048)),
            st.tuples(st.just("truncate"), which, position),
            st.tuples(
                st.just("flip"),
                which,
                st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=6),
            ),
            st.tuples(st.just("overwrite"), which, position, st.binary(min_size=1, max_size=16)),
            st.tuples(st.just("insert"), which, position, st.binary(min_size=1, max_size=16)),
            st.tuples(st.just("delete"), which, position, st.integers(1, 64)),
            st.tuples(
                st.just("header"),
                which,
                position,
                st.booleans(),  # delete the node instead of replacing it
                _json_values(),
                st.booleans(),  # re-sign: recompute the header's CRC-32
            ),
            st.tuples(st.just("stream+crc"), which, position, st.integers(1, 255)),
            st.tuples(st.just("file"), which, st.integers(0, 3)),
        )

    def prepare(self, case: tuple) -> tuple[bytes | str, bool, int | None, str]:
        """``(source, authentic, corpus index, kind)``: authentic when the damage was not re-signed (a load must
        then give the original)."""
        source, authentic, index = self._materialize(case)
        return source, authentic, index, case[0]

    def _materialize(self, case: tuple) -> tuple[bytes | str, bool, int | None]:
        from lightning_optim.functional import artifact as A

        kind = case[0]
        if kind == "random":
            return case[1], False, None
        if kind == "magic+random":
            return A.MAGIC + case[1], False, None
        index = case[1]
        blob = self.corpus[index][1]
        if kind == "truncate":
            return blob[: case[2] % len(blob)], True, index
        if kind == "flip":
            altered = bytearray(blob)
            for pos, bit in case[2]:
                altered[pos % len(altered)] ^= 1 << bit
            return bytes(altered), True, index
        if kind == "overwrite":
            pos = case[2] % len(blob)
            return blob[:pos] + case[3] + blob[pos + len(case[3]) :], True, index
        if kind == "insert":
            pos = case[2] % (len(blob) + 1)
            return blob[:pos] + case[3] + blob[pos:], True, index
        if kind == "delete":
            pos = case[2] % len(blob)
            return blob[:pos] + blob[pos + case[3] :], True, index
        length = struct.unpack("<I", blob[8:12])[0]
        header = json.loads(A._decompress(blob[12 : 12 + length]))
        if kind == "header":
            _, _, pos, delete, value, resign = case
            signed = (
                "header_crc32" in header
            )  # an unsigned (older) header cannot tell an edit from the original
            paths = _leaf_paths(header)
            _set_path(header, paths[pos % len(paths)], value, delete)
            if resign and "header_crc32" in header:
                header.pop("header_crc32")
                header["header_crc32"] = zlib.crc32(A._header_json(header))
            return _with_header(blob, header), signed and not resign, index
        if kind == "stream+crc":  # a byte of a stream changed and every CRC-32 recomputed: a hand-made file
            _, _, pos, delta = case
            start = 12 + length
            if start >= len(blob):
                return blob, True, index
            payload = bytearray(blob[start:])
            at = pos % len(payload)
            payload[at] = (payload[at] + delta) % 256
            offset = 0
            for name, clen, _ in header["streams"]:
                header["crc32"][name] = zlib.crc32(bytes(payload[offset : offset + clen]))
                offset += clen
            if "header_crc32" in header:
                header.pop("header_crc32")
                header["header_crc32"] = zlib.crc32(A._header_json(header))
            return _with_header(blob, header, bytes(payload)), False, index
        if kind == "file":  # through a path: the file as written, or a folder, FIFO, missing path
            variant = case[2]
            path = self.folder / f"case{variant}.lopt"
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            if variant == 0:
                path.write_bytes(blob)
            elif variant == 1:
                path.mkdir()
            elif variant == 2:
                os.mkfifo(path)
            return str(path), variant == 0, index
        raise ValueError(kind)

    def warm_up(self) -> None:
        from lightning_optim.functional.artifact import load_artifact

        for name, blob, check in self.corpus:
            if not check(load_artifact(blob)):
                raise AssertionError(f"the corpus artifact {name!r} does not load as itself")

    def run(self, prepared: tuple) -> None:
        from lightning_optim.functional.artifact import load_artifact

        source, authentic, index, kind = prepared
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_artifact(source, max_unpacked_bytes=READ_LIMIT)
        if index is not None and authentic and not self.corpus[index][2](loaded):
            raise WrongResult(f"{kind} of {self.corpus[index][0]} loaded as another model")

    def describe(self, case: tuple) -> str:
        if case[0] in ("random", "magic+random"):
            return f"{case[0]}: {_short(case[1])}"
        return f"{case[0]} of corpus {self.corpus[case[1]][0]!r}: {_short(case[2:])}"


def _with_header(blob: bytes, header: dict, payload: bytes | None = None) -> bytes:

    length = struct.unpack("<I", blob[8:12])[0]
    # a fast preset (1 MiB dictionary): any raw LZMA2 stream decodes with the loader's filters
    data = lzma.compress(
        json.dumps(header, separators=(",", ":")).encode(),
        format=lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}],
    )
    rest = blob[12 + length :] if payload is None else payload
    return blob[:8] + struct.pack("<I", len(data)) + data + rest


_IDX_CODES = {
    0x08: ("u1", 1),
    0x09: ("i1", 1),
    0x0B: (">i2", 2),
    0x0C: (">i4", 4),
    0x0D: (">f4", 4),
    0x0E: (">f8", 8),
}


class IdxTarget(Target):
    """``read_idx(bytes or path, max_bytes=READ_LIMIT)`` on random bytes, headers of any type and shape, bodies of
    any length, gzip (truncated, multi-member, bombs), and well-formed files whose values must come back."""

    name = "idx"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        bomb = gzip.compress(
            b"\x00\x00\x08\x01" + (READ_LIMIT + 1024).to_bytes(4, "big") + bytes(READ_LIMIT + 1024)
        )
        self.bombs = [bomb, gzip.compress(bytes(64 * 2**20), compresslevel=1)]

    def strategy(self) -> st.SearchStrategy:
        dims = st.lists(
            st.one_of(st.integers(0, 40), st.sampled_from([2**16, 2**24, 2**31, 2**32 - 1])),
            min_size=0,
            max_size=10,
        )
        header = st.tuples(
            st.one_of(st.sampled_from(sorted(_IDX_CODES)), st.integers(0, 255)),
            st.one_of(st.none(), st.integers(0, 255)),  # the declared rank, None: len(dims)
            dims,
        )
        return st.one_of(
            st.tuples(st.just("random"), st.binary(max_size=2048), st.booleans()),
            st.tuples(st.just("header"), header, st.integers(-64, 64), st.booleans(), st.binary(max_size=64)),
            st.tuples(st.just("gzip"), header, st.integers(-64, 64), st.integers(0, 4096), st.booleans()),
            st.tuples(st.just("bomb"), st.integers(0, len(self.bombs) - 1), st.booleans()),
            st.tuples(
                st.just("valid"),
                st.sampled_from(sorted(_IDX_CODES)),
                st.lists(st.integers(1, 6), min_size=1, max_size=4),
                st.integers(0, 2**32 - 1),
                st.booleans(),  # gzip
                st.booleans(),  # through a file
            ),
        )

    def _body(self, code: int, dims: list[int], delta: int) -> bytes:
        size = 1
        for d in dims:
            size *= d
        itemsize = _IDX_CODES.get(code, ("u1", 1))[1]
        n = size * itemsize
        if n > READ_LIMIT * 2:  # declared beyond the limit: a few bytes are enough to be refused
            return bytes(max(0, 16 + delta))
        length = max(0, n + delta)
        return (bytes(range(3, 256)) * (length // 253 + 1))[:length]

    def _source(self, data: bytes, via_file: bool, suffix: str = "") -> bytes | str:
        if not via_file:
            return data
        path = self.folder / f"case{suffix}"
        path.write_bytes(data)
        return str(path)

    def warm_up(self) -> None:
        self.run(self.prepare(("valid", 0x08, [2, 3], 0, True, True)))

    def prepare(self, case: tuple) -> tuple[bytes | str, Any]:
        """``(bytes or path, the values a well-formed file holds or None)``."""
        import numpy as np

        kind = case[0]
        if kind == "random":
            return self._source(case[1], case[2]), None
        if kind in ("header", "gzip"):
            (code, rank, dims), delta = case[1], case[2]
            head = bytes([0, 0, code, len(dims) if rank is None else rank]) + b"".join(
                d.to_bytes(4, "big") for d in dims
            )
            data = head + self._body(code, dims, delta)
            if kind == "header":
                return self._source(data + case[4], case[3]), None
            packed = gzip.compress(data, compresslevel=1)
            cut = case[3]
            packed = packed[: len(packed) - cut] if cut < len(packed) else packed
            return self._source(packed, case[4], ".gz"), None
        if kind == "bomb":
            return self._source(self.bombs[case[1]], case[2], ".gz"), None
        _, code, dims, seed, packed, via_file = case
        numpy_dtype = _IDX_CODES[code][0]
        rng = np.random.default_rng(seed)
        if numpy_dtype in (">f4", ">f8"):
            values = rng.standard_normal(dims).astype(numpy_dtype)
        else:
            info = np.iinfo(np.dtype(numpy_dtype))
            values = rng.integers(info.min, info.max, size=dims, endpoint=True).astype(numpy_dtype)
        data = (
            bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + values.tobytes()
        )
        if packed:
            data = gzip.compress(data, compresslevel=1)
        return self._source(data, via_file, ".gz" if packed else ""), values.astype(
            values.dtype.newbyteorder("=")
        )

    def run(self, prepared: tuple) -> None:
        import numpy as np

        from lightning_optim.data.idx import read_idx

        source, expected = prepared
        got = read_idx(source, max_bytes=READ_LIMIT)
        if expected is not None and (
            tuple(got.shape) != expected.shape or not np.array_equal(got.numpy(), expected, equal_nan=True)
        ):
            raise WrongResult(
                f"read_idx returned other values than the well-formed file holds {expected.shape}"
            )

    def describe(self, case: tuple) -> str:
        if case[0] == "bomb":
            return f"bomb {case[1]} ({'a file' if case[2] else 'bytes'})"
        return _short(case)


_ENCODINGS = ("utf-8", "latin-1", "utf-16", "cp1252")
_FIELD_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",))


class TextTarget(Target):
    """``read_text_file(path, "text", "label", ..., max_bytes=READ_LIMIT)`` on random bytes and CSV/TSV/JSONL text
    with quotes, stray delimiters, odd encodings and garbage, and well-formed files whose rows must come back."""

    name = "text"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def strategy(self) -> st.SearchStrategy:
        fmt = st.sampled_from(["csv", "tsv", "jsonl"])
        suffix = st.sampled_from(
            ["match", ".txt", ".CSV", ".jsonl", ".tsv"]
        )  # "match": the format's own ending
        field_text = st.text(_FIELD_CHARS, max_size=12) | st.sampled_from(
            [
                '"',
                '""',
                ",",
                "\t",
                "\n",
                "\r\n",
                "a,b",
                'x"y',
                "\u2028",
                "\x00",
                "NaN",
                "1.0",
                " 1",
                "inf",
                "\ufeff",
            ]
        )
        header = st.lists(
            st.sampled_from(["text", "label", "extra", "", "Text", "label "]) | field_text, max_size=5
        )
        rows = st.lists(st.lists(field_text, max_size=6), max_size=8)
        records = st.lists(
            st.dictionaries(
                st.sampled_from(["text", "label", "x"]) | st.text(max_size=5), _json_values(), max_size=4
            )
            | _json_values(),
            max_size=6,
        )
        return st.one_of(
            st.tuples(st.just("random"), fmt, suffix, st.sampled_from(_ENCODINGS), st.binary(max_size=2048)),
            st.tuples(
                st.just("table"),
                fmt,
                suffix,
                st.sampled_from(_ENCODINGS),
                header,
                rows,
                st.binary(max_size=8),
            ),
            st.tuples(st.just("jsonl"), suffix, st.sampled_from(_ENCODINGS), records, st.binary(max_size=8)),
            st.tuples(
                st.just("valid"),
                st.sampled_from(["csv", "tsv", "jsonl"]),
                st.lists(
                    st.tuples(
                        st.text("abcdefghij xyz", min_size=1, max_size=10).filter(str.strip),
                        st.integers(0, 9),
                    ),
                    min_size=1,
                    max_size=8,
                ),
            ),
        )

    def _path(self, fmt: str, suffix: str) -> Path:
        ending = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl"}[fmt] if suffix == "match" else suffix
        return self.folder / f"case{ending}"

    @staticmethod
    def _encode(text: str, encoding: str) -> bytes:
        return text.encode(encoding, errors="replace")

    def warm_up(self) -> None:
        self.run(self.prepare(("valid", "csv", [("hello", 1), ("bye", 0)])))

    def prepare(self, case: tuple) -> tuple[Path, str | None, str, list | None]:
        """``(path, explicit format or None, encoding, the (text, label) pairs of a well-formed file or None)``."""
        kind = case[0]
        if kind == "valid":
            _, fmt, pairs = case
            if fmt == "jsonl":
                text = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs)
            else:
                sep = "," if fmt == "csv" else "\t"
                text = f"text{sep}label\n" + "".join(f"{t}{sep}{y}\n" for t, y in pairs)
            path = self._path(fmt, "match")
            path.write_bytes(text.encode("utf-8"))
            return path, None, "utf-8", pairs
        if kind == "random":
            _, fmt, suffix, encoding, data = case
        elif kind == "table":
            _, fmt, suffix, encoding, header, rows, garbage = case
            sep = "," if fmt == "csv" else "\t"
            text = "\n".join(sep.join(r) for r in [header, *rows])
            data = self._encode(text, encoding) + garbage
        else:
            _, suffix, encoding, records, garbage = case
            fmt = "jsonl"
            lines = []
            for r in records:
                try:
                    lines.append(json.dumps(r, allow_nan=True))
                except (TypeError, ValueError):
                    lines.append(str(r))
            data = self._encode("\n".join(lines), encoding) + garbage
        path = self._path(fmt, suffix)
        path.write_bytes(data)
        return path, None if suffix == "match" else fmt, encoding, None

    def run(self, prepared: tuple) -> None:
        from lightning_optim.data.text_datamodule import read_text_file

        path, explicit, encoding, pairs = prepared
        texts, labels = read_text_file(
            path, "text", "label", explicit, encoding=encoding, max_bytes=READ_LIMIT
        )
        if pairs is not None and (
            [t.strip() for t in texts] != [t.strip() for t, _ in pairs]
            or labels != [str(y) for _, y in pairs]
        ):
            raise WrongResult(f"read_text_file returned {texts!r}, {labels!r} for {pairs!r}")

    def describe(self, case: tuple) -> str:
        return _short(case, 600)


def make_target(name: str, folder: Path) -> Target:
    """The target named ``name`` (one of :data:`TARGETS`), writing its files under ``folder``."""
    return {"artifact": ArtifactTarget, "idx": IdxTarget, "text": TextTarget}[name](folder)


# ------------------------------------------------------------------------------------- the run
def run_case(target: Target, case: Any, time_limit: float = TIME_LIMIT) -> Outcome:
    """Run one case under the time limit and measure it: seconds, and how far the resident set rose above where
    it was (the peak is reset before the case where Linux allows it, else the process's peak is compared)."""
    try:
        prepared = target.prepare(case)
    except Exception as err:  # noqa: BLE001 - the harness's own fault, reported as such
        return Outcome(
            "failed", f"Harness{type(err).__name__}", 0.0, 0, target.describe(case), str(err)[:500]
        )
    before = _current_rss() if _reset_peak() else _peak_rss()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    start = time.perf_counter()
    status, name, message = "returned", "-", ""
    try:
        target.run(prepared)
    except CaseTimeout:
        status, name = "failed", "Timeout"
    except WrongResult as err:
        status, name, message = "failed", "WrongResult", str(err)
    except ALLOWED as err:
        status, name, message = "refused", type(err).__name__, str(err)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - any other error is what the fuzzing looks for
        status, name, message = "failed", type(err).__name__, str(err)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - start
    if status != "failed" and seconds > time_limit:  # a C call the alarm could not interrupt
        status, name = "failed", "Timeout"
    peak = _peak_rss()
    return Outcome(status, name, seconds, max(0, peak - before), target.describe(case), message[:500], peak)


def fuzz(
    name: str,
    cases: int,
    seed: int | None = None,
    derandomize: bool = False,
    time_limit: float = TIME_LIMIT,
    memory_limit: int = MEMORY_LIMIT,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Run ``cases`` generated cases against the target ``name``; every outcome is recorded, none stops the run.

    Args:
        name: ``"artifact"``, ``"idx"`` or ``"text"``.
        cases: how many cases hypothesis generates (its generation phase only: no shrinking, no database).
        seed: hypothesis's seed (``None``: random, unless ``derandomize``).
        derandomize: a fixed sequence of cases (the test suite's runs).
        time_limit: seconds per case.
        memory_limit: growth of the peak RSS allowed in one case (bytes).
        progress: called with the number of cases done, every 500 cases.
    """
    # torch logs the traceback of an archive it cannot read before raising (the loader's error says it), and its
    # tracing at DEBUG where a test runner captures everything: quiet for the run, as it was afterwards
    quiet = {name: logging.getLogger(name) for name in ("torch", "torch.export")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.ERROR)
    try:
        return _fuzz(name, cases, seed, derandomize, time_limit, memory_limit, progress)
    finally:
        for key, logger in quiet.items():
            logger.setLevel(levels[key])


def _fuzz(
    name: str,
    cases: int,
    seed: int | None,
    derandomize: bool,
    time_limit: float,
    memory_limit: int,
    progress: Callable[[int], None] | None,
) -> Report:
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        target = make_target(name, Path(tmp))
        report = Report(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target.warm_up()
        report.start_rss = _current_rss()

        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            derandomize=derandomize,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(target.strategy())
        def one(case: Any) -> None:
            outcome = run_case(target, case, time_limit)
            if outcome.status != "failed" and outcome.rss_growth > memory_limit:
                outcome.status, outcome.name = "failed", "Memory"
            report.outcomes.append(outcome)
            if progress is not None and len(report.outcomes) % 500 == 0:
                progress(len(report.outcomes))

        if seed is not None and not derandomize:
            one = hypothesis_seed(seed)(one)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one()
        report.peak_rss = max([report.start_rss, *(o.peak_rss for o in report.outcomes)])
        target.close()
    return report


def table(reports: list[Report]) -> str:
    """The Markdown table of the reports: cases, outcomes, failures by type, peak RSS, slowest case."""
    lines = [
        "| target | cases | returned | refused (our errors) | failures by type | peak RSS | largest rise in one case | slowest case |",
        "|---|---:|---:|---|---|---:|---:|---|",
    ]
    for r in reports:
        refused = ", ".join(f"{k} {v:,}" for k, v in sorted(r.counts("refused").items())) or "-"
        failed = ", ".join(f"{k} {v:,}" for k, v in sorted(r.counts("failed").items())) or "none"
        slow, largest = r.slowest, r.largest
        slowest = f"{slow.seconds:.2f} s ({slow.status}: {slow.name})" if slow else "-"
        growth = f"{largest.rss_growth / 2**20:,.1f} MiB" if largest else "-"
        lines.append(
            f"| {r.target} | {r.cases:,} | {sum(r.counts('returned').values()):,} | {refused} | {failed} | "
            f"{r.peak_rss / 2**20:,.0f} MiB | {growth} | {slowest} |"
        )
    return "\n".join(lines)


def reproducers(reports: list[Report], limit: int = 5) -> str:
    """The first failing cases of each report, with their error."""
    out = []
    for r in reports:
        for o in r.failures[:limit]:
            out.append(f"- `{r.target}` {o.name}: {o.message[:300]!r}\n  case: `{o.case}`")
    return "\n".join(out)


__all__ = ["ALLOWED", "READ_LIMIT", "TARGETS", "Report", "fuzz", "reproducers", "table"]
