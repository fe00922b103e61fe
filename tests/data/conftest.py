"""Fixtures of the data tests: a tiny image folder with every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (6, 6), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    if mode == "RGBA":
        array[..., 3] = 255
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)
    return path


@pytest.fixture
def dirty_folder(tmp_path) -> Path:
    """ImageFolder layout, classes ``cat`` and ``dog``: 3 good images each (one L, one RGBA) plus a corrupt,
    a truncated, a zero-byte and a duplicate file, and a non-image file that is ignored."""
    root = tmp_path / "images"
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        write_image(root / name / "a.png", "RGB", seed=10 * c + 1)
        write_image(root / name / "b.png", "L", seed=10 * c + 2)
        write_image(root / name / "c.png", "RGBA", seed=10 * c + 3)
    (root / "cat" / "corrupt.png").write_bytes(b"this is not an image at all" * 10)
    good = write_image(root / "dog" / "big.png", "RGB", size=(40, 40), seed=99).read_bytes()
    (root / "dog" / "big.png").unlink()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "zero.png").write_bytes(b"")
    (root / "dog" / "z_duplicate.png").write_bytes((root / "cat" / "a.png").read_bytes())
    (root / "cat" / "notes.txt").write_text("not an image")
    return root
