"""A bounded reader of IDX files, the format of MNIST and FashionMNIST (``train-images-idx3-ubyte``, ...).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the values, big-endian, in C order. :func:`read_idx` checks everything the
header says before anything is allocated, and raises only :class:`ValueError` (or
:class:`FileNotFoundError`) naming the file and the option it came from:

- the magic: two zero bytes, a known type code (:data:`IDX_DTYPES`), 1 to :data:`MAX_IDX_NDIM` dimensions;
- the header is complete, and the dimensions are the expected ones (``expect_shape``: MNIST images are
  ``(N, 28, 28)``, so a header of 14x56 is refused rather than read as scrambled 28x28 images) and the type
  the expected one (``expect_dtype``);
- the declared data size (the product of the dimensions times the item size) is at most ``max_bytes``, then
  equal to what the file holds after the header: a truncated, empty or too long file is refused with the
  declared and the actual size;
- a gzip file (``.gz``, or bytes starting with the gzip magic) is decompressed to at most the same bound,
  and a truncated or corrupt one is refused.

Paths must be regular files (a FIFO or a folder is refused before it is opened). Nothing is read beyond the
declared size plus one byte, and any byte string gives a result or one of those errors, in time linear in
its length.
"""

from __future__ import annotations

import os
import zlib
from math import prod

import numpy as np
import torch
from torch import Tensor

from lightning_optim.data.files import read_file_bytes

#: IDX type code -> (name, numpy dtype of the big-endian values, torch dtype)
IDX_DTYPES: dict[int, tuple[str, str, torch.dtype]] = {
    0x08: ("uint8", "u1", torch.uint8),
    0x09: ("int8", "i1", torch.int8),
    0x0B: ("int16", ">i2", torch.int16),
    0x0C: ("int32", ">i4", torch.int32),
    0x0D: ("float32", ">f4", torch.float32),
    0x0E: ("float64", ">f8", torch.float64),
}
#: the most dimensions an IDX header may declare here
MAX_IDX_NDIM: int = 8
#: default bound on the data one file may hold (after decompression): 1 GiB
DEFAULT_MAX_BYTES: int = 1 << 30
_GZIP_MAGIC = b"\x1f\x8b"
#: the most gzip members one file may hold (block-compressed files, bgzip, hold one per 64 kB)
MAX_GZIP_MEMBERS: int = 1 << 16
_HEADER_MAX = 4 + 4 * MAX_IDX_NDIM


def _fail(name: str, option: str, problem: str) -> ValueError:
    return ValueError(f"`{option}`: IDX file {name!r} {problem}")


def _dims_text(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims)


def _read_path(path: str, option: str, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; a larger file is refused with what its header says."""
    try:
        return read_file_bytes(path, option, limit, kind="an IDX file")
    except FileNotFoundError:
        raise FileNotFoundError(f"`{option}`: IDX file {path!r} does not exist.") from None
    except ValueError as err:
        if "more than" not in str(err):
            raise
    head = read_file_bytes(path, option, _HEADER_MAX, kind="an IDX file", prefix=True)
    raise _too_large(head, os.stat(path).st_size, path, option, limit)


def _too_large(head: bytes, size: int, name: str, option: str, limit: int) -> ValueError:
    try:
        dtype_name, _, dims = parse_idx_header(head, name, option)
        says = f"its header declares {_dims_text(dims)} {dtype_name} values"
    except ValueError:
        says = f"it begins {head[:8].hex(' ') or 'with nothing'}"
    return _fail(
        name,
        option,
        f"is {size:,} bytes, more than the {limit:,} bytes read at most (`max_bytes`; {says}). Raise `max_bytes` "
        "for a larger data set.",
    )


def _gunzip(data: bytes, name: str, option: str, limit: int) -> bytearray:
    """Decompress every gzip member of ``data`` into at most ``limit`` bytes, in time linear in ``len(data)``.

    The input is fed in chunks that start small and double while a member goes on, so that what zlib copies
    aside at the end of each member (its unused input) stays proportional to the member; at most
    :data:`MAX_GZIP_MEMBERS` members are read.
    """
    out = bytearray()
    view = memoryview(data)
    pos, members = 0, 0
    while pos < len(data):
        if bytes(view[pos : pos + 2]) != _GZIP_MAGIC:
            raise _fail(
                name, option, f"holds {len(data) - pos:,} bytes after its gzip stream that are not gzip."
            )
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise _fail(name, option, f"holds more than {MAX_GZIP_MEMBERS:,} gzip members; refused.")
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = 256
        while not decompressor.eof:
            if pos >= len(data):
                raise _fail(name, option, "is a truncated gzip file (its compressed stream ends early).")
            piece = view[pos : pos + chunk]
            pos += len(piece)
            chunk = min(chunk * 2, 1 << 20)
            try:
                out += decompressor.decompress(piece, limit + 1 - len(out))
            except zlib.error as err:
                raise _fail(name, option, f"is not a valid gzip file: {err}.") from None
            if len(out) > limit:  # also whenever output stopped at the bound with input left
                raise _fail(
                    name,
                    option,
                    f"decompresses to more than {limit:,} bytes (`max_bytes`); refused before going on. Raise "
                    "`max_bytes` for a larger data set.",
                )
        pos -= len(decompressor.unused_data)  # the next member begins in this chunk
    return out


def parse_idx_header(
    head: bytes, name: str = "<bytes>", option: str = "data_dir"
) -> tuple[str, int, tuple[int, ...]]:
    """``(dtype name, header length, dimensions)`` of the IDX header at the start of ``head``.

    Raises:
        ValueError: empty, too short, a wrong magic, an unknown type code, 0 or more than
            :data:`MAX_IDX_NDIM` dimensions, or a header cut short.
    """
    if not head:
        raise _fail(name, option, "is empty (0 bytes); download it again or replace it.")
    if len(head) < 4:
        raise _fail(name, option, f"is {len(head)} byte(s) long, shorter than the 4-byte IDX magic number.")
    if head[0] != 0 or head[1] != 0:
        raise _fail(
            name,
            option,
            f"is not an IDX file: it begins {head[:4].hex(' ')}, and an IDX file begins 00 00, a type code and "
            "the number of dimensions.",
        )
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({IDX_DTYPES[c][0]})" for c in IDX_DTYPES)
        raise _fail(name, option, f"has the unknown type code 0x{code:02X}; IDX type codes are {known}.")
    if not 1 <= ndim <= MAX_IDX_NDIM:
        raise _fail(name, option, f"declares {ndim} dimensions; 1 to {MAX_IDX_NDIM} are read.")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise _fail(
            name,
            option,
            f"is truncated in its header: {ndim} dimensions need a {header}-byte header, the file holds "
            f"{len(head)} byte(s).",
        )
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return IDX_DTYPES[code][0], header, dims


def read_idx(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    *,
    option: str = "data_dir",
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_shape: tuple[int | None, ...] | None = None,
    expect_dtype: str | None = None,
    what: str = "",
) -> Tensor:
    """Read an IDX file (a path, or its bytes) into a tensor, checking it first (see the module docstring).

    Args:
        source: the file's path (``.gz`` files are decompressed), or its bytes (gzip bytes too).
        option: the option the file comes from, named in every message (``"data_dir"``).
        max_bytes: the most data bytes (after decompression) read; a file declaring more is refused before
            anything is allocated.
        expect_shape: the dimensions expected, ``None`` for any size along that axis (``(None, 28, 28)``).
        expect_dtype: the IDX type expected (``"uint8"``).
        what: what the file should hold, for the messages (``"MNIST images"``).

    Returns:
        A tensor of the declared shape and type (native byte order).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: anything else (the module docstring lists the checks); the message names the file.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"`max_bytes` must be an int >= 0, got {max_bytes!r}.")
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(source)
        if len(data) > max_bytes + _HEADER_MAX and not data.startswith(_GZIP_MAGIC):
            raise _too_large(data[:_HEADER_MAX], len(data), name, option, max_bytes + _HEADER_MAX)
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        data = _read_path(name, option, max_bytes + _HEADER_MAX)
    else:
        raise ValueError(f"`{option}`: read_idx takes a path or bytes, got {type(source).__name__}.")
    if data.startswith(_GZIP_MAGIC):  # an IDX file begins 00 00: never ambiguous
        data = _gunzip(data, name, option, max_bytes + _HEADER_MAX)
    dtype_name, header, dims = parse_idx_header(data[:_HEADER_MAX], name, option)
    label = f" ({what})" if what else ""
    if expect_dtype is not None and dtype_name != expect_dtype:
        raise _fail(name, option, f"holds {dtype_name} values; {what or 'this data set'} are {expect_dtype}.")
    if expect_shape is not None:
        expected = "x".join("N" if e is None else str(e) for e in expect_shape)
        wrong = len(dims) != len(expect_shape) or any(
            e is not None and d != e for d, e in zip(dims, expect_shape)
        )
        if wrong:
            raise _fail(
                name,
                option,
                f"declares {len(dims)}-D data of shape {_dims_text(dims)}; {what or 'the data set'} are {expected}. "
                "The file is not the one expected here (or its header is damaged): download it again or replace it.",
            )
    _, numpy_dtype, torch_dtype = next(v for v in IDX_DTYPES.values() if v[0] == dtype_name)
    itemsize = np.dtype(numpy_dtype).itemsize
    declared = prod(dims) * itemsize
    if prod(d for d in dims if d) * itemsize > max_bytes:  # a zero dimension cannot hide a huge one
        raise _fail(
            name,
            option,
            f"declares {_dims_text(dims)} {dtype_name} values = {declared:,} bytes{label}, more than the "
            f"{max_bytes:,} bytes read at most (`max_bytes`); a damaged header, or raise `max_bytes`.",
        )
    actual = len(data) - header
    if actual != declared:
        if actual < declared:
            problem = (
                f"is truncated: its header declares {_dims_text(dims)} {dtype_name} values = {declared:,} bytes of "
                f"data, the file holds {actual:,}"
            )
        else:
            problem = (
                f"is too long: its header declares {_dims_text(dims)} {dtype_name} values = {declared:,} bytes of "
                f"data, the file holds {actual:,} ({actual - declared:,} extra)"
            )
        raise _fail(name, option, f"{problem}{label}. Download it again or replace it.")
    array = np.frombuffer(data, dtype=numpy_dtype, count=prod(dims), offset=header)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True).reshape(dims))


# ------------------------------------------------------------------------------------------------ MNIST layout
#: dataset key -> the folder under ``data_dir`` (as torchvision lays them out: ``<data_dir>/MNIST/raw/``)
IDX_DATASETS: dict[str, str] = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}
#: image size and number of classes of the IDX data sets
IDX_IMAGE_SIZE, IDX_NUM_CLASSES = 28, 10


def idx_files(key: str, root: str | os.PathLike, train: bool) -> tuple[str, str] | None:
    """``(images, labels)`` paths of a split of an IDX data set (plain or ``.gz``), or ``None`` if one is missing."""
    folder = os.path.join(os.fspath(root), IDX_DATASETS[key], "raw")
    prefix = "train" if train else "t10k"
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        base = os.path.join(folder, f"{prefix}-{kind}-ubyte")
        path = next((p for p in (base, base + ".gz") if os.path.lexists(p)), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_idx_split(
    images_path: str, labels_path: str, *, option: str = "data_dir", name: str = "MNIST"
) -> tuple[Tensor, Tensor]:
    """``(images (N, 1, 28, 28) uint8, labels (N,) uint8)`` of one split, both files checked to agree.

    Raises:
        ValueError: either file fails :func:`read_idx`'s checks (28x28 uint8 images, 1-D uint8 labels), or
            the two hold different numbers of samples.
    """
    size = IDX_IMAGE_SIZE
    images = read_idx(
        images_path,
        option=option,
        expect_shape=(None, size, size),
        expect_dtype="uint8",
        what=f"{name} images",
    )
    labels = read_idx(
        labels_path, option=option, expect_shape=(None,), expect_dtype="uint8", what=f"{name} labels"
    )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`{option}`: {name} files disagree: {images_path!r} holds {images.shape[0]:,} images but "
            f"{labels_path!r} {labels.shape[0]:,} labels; download them again or replace them."
        )
    return images.unsqueeze(1), labels


__all__ = [
    "DEFAULT_MAX_BYTES",
    "IDX_DATASETS",
    "IDX_DTYPES",
    "MAX_IDX_NDIM",
    "idx_files",
    "parse_idx_header",
    "read_idx",
    "read_idx_split",
]
