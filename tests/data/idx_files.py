"""Writers of small IDX files and MNIST-layout folders for the tests (and the bad-input catalogue)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

#: IDX type code of each numpy dtype written here
CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, dims: tuple[int, ...] | None = None) -> bytes:
    """The IDX encoding of ``array`` (big-endian); ``dims`` overrides the dimensions written in the header."""
    kind = (
        {"u": "u1", "i": "i1"}.get(array.dtype.kind)
        if array.dtype.itemsize == 1
        else f">{array.dtype.str[1:]}"
    )
    code = CODES[kind]
    dims = tuple(array.shape) if dims is None else dims
    header = bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return header + array.astype(kind).tobytes()


def write_mnist(
    root: Path,
    n_train: int = 40,
    n_test: int = 20,
    folder: str = "MNIST",
    gz: bool = False,
    seed: int = 0,
) -> Path:
    """A small data set in torchvision's MNIST layout: ``root/<folder>/raw/{train,t10k}-{images,labels}...``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw
