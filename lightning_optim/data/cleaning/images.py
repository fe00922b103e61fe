"""Image cleaning: scan a folder (ImageFolder layout) or a list of files, keep what decodes, report the rest.

:func:`scan_images` skips and reports zero-byte, unreadable (not an image, corrupt) and truncated files,
drops exact duplicates by content hash (SHA-256 of the file bytes, the first one in sorted order is
kept), rejects labels outside the class set, converts every image to the requested mode (``L``, ``RGB``
or ``RGBA``) and, when asked, resizes it. The result holds a uint8 ``(N, C, H, W)`` tensor ready for the
in-memory data path and a summary (kept, dropped by reason) that is logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_optim.checks import check_choice
from lightning_optim.data.pixels import PixelRangeError, pil_to_8bit
from lightning_optim.paths import is_within, read_user_file

log = logging.getLogger(__name__)

#: image mode -> channels
IMAGE_MODES: dict[str, int] = {"L": 1, "RGB": 3, "RGBA": 4}
#: file name endings read as images (as torchvision's ImageFolder)
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
#: reasons a file is dropped
DROP_REASONS: tuple[str, ...] = (
    "zero_byte",
    "unreadable",
    "truncated",
    "duplicate",
    "unknown_label",
    "missing",
    "not_a_file",
    "too_large",
)
#: the largest image file read (bytes): a bigger one is dropped as ``too_large`` before it is read whole
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class ImageScanResult:
    """What :func:`scan_images` kept and dropped.

    Attributes:
        images: uint8 ``(N, C, H, W)`` of the kept images (empty ``(0, C, 0, 0)`` when none was kept).
        labels: int64 ``(N,)`` class indices into ``classes``.
        paths: the kept files, in the order of ``images``.
        classes: the class names; a label is its index here.
        dropped: ``(path, reason)`` for every dropped file; ``reason`` is one of :data:`DROP_REASONS`.
    """

    images: Tensor
    labels: Tensor
    paths: list[str]
    classes: list[str]
    dropped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, int]:
        """``{"kept": n, "dropped": m, <reason>: count, ...}`` (only reasons that occurred)."""
        counts = Counter(reason for _, reason in self.dropped)
        return {"kept": len(self.paths), "dropped": len(self.dropped), **dict(sorted(counts.items()))}

    def __len__(self) -> int:
        return len(self.paths)


def check_image_mode(mode: str) -> str:
    """Validate an image mode.

    Raises:
        ValueError: for a mode outside :data:`IMAGE_MODES`.
    """
    return check_choice("image_mode", mode, IMAGE_MODES)


def list_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """List ``(path, class_name)`` of an ImageFolder layout ``root/<class>/<file>`` and the class names.

    Files whose name does not end in one of :data:`IMAGE_EXTENSIONS` and hidden files are ignored. The
    classes are the sorted sub-folder names unless ``classes`` is given. Symbolic links (to files or to
    class folders) that lead outside ``root`` are not followed: they are skipped with one warning.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no class sub-folder with image files (names the folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`image_folder` {str(root)!r} is not a folder.")
    items: list[tuple[str, str]] = []
    found = []
    outside: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not is_within(class_dir, root):
            outside.append(str(class_dir))
            continue
        files = []
        for f in sorted(class_dir.rglob("*")):
            if not (f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS):
                continue
            if is_within(f, root):
                files.append(f)
            else:
                outside.append(str(f))
        if files:
            found.append(class_dir.name)
        items += [(str(f), class_dir.name) for f in files]
    if outside:
        warnings.warn(
            f"`image_folder` {str(root)!r}: skipped {len(outside)} symbolic link(s) leading outside the folder "
            f"(not followed), e.g. {outside[:3]}.",
            stacklevel=2,
        )
    if not items:
        raise ValueError(
            f"`image_folder` {str(root)!r} holds no images: expected the ImageFolder layout "
            f"<image_folder>/<class name>/<image> with endings {list(IMAGE_EXTENSIONS)}."
        )
    return items, list(classes) if classes is not None else found


#: PIL modes that carry an alpha band (transparency in a palette or a colour key is in ``img.info``)
_ALPHA_MODES: tuple[str, ...] = ("RGBA", "RGBa", "LA", "La", "PA")


def _has_transparency(img) -> bool:
    """Whether ``img`` has transparent pixels to composite: an alpha band, or a ``transparency`` entry (a
    palette's transparent indices, a grey or RGB colour key)."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _decode(data: bytes, mode: str, size: tuple[int, int] | None, path: str = "") -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()  # a truncated file raises here ("image file is truncated")
        img = pil_to_8bit(img, path)  # 16-bit grey scaled by 255/65535, not clipped at 255 (pixels.py)
        if mode in ("L", "RGB") and _has_transparency(img):
            # composite transparency onto black before dropping alpha (palette and colour-key transparency too)
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        if img.mode != mode:
            img = img.convert(mode)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _list_label(label: object, path: str) -> str | int:
    """A label of a ``(path, label)`` list: a class name (``str``) or a class index (a whole number, ``3.0`` is 3).

    Raises:
        ValueError: a bool, a fraction (``2.97``), NaN/inf, or something that is neither a name nor a number.
    """
    if isinstance(label, (bool, np.bool_)):
        raise ValueError(f"Label {label!r} of {path!r} is a bool; give a class name or a class index.")
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)):
        if not np.isfinite(label) or float(label) != int(label):
            raise ValueError(
                f"Label {float(label)!r} of {path!r} is not a class index: indices are whole numbers (3.0 is class "
                "3), never truncated; give an int or a class name."
            )
        return int(label)
    if isinstance(label, str):
        return label
    raise ValueError(f"Label {label!r} of {path!r} is a {type(label).__name__}; give a class name or index.")


def _classify_error(err: Exception) -> str:
    return "truncated" if "truncated" in str(err).lower() else "unreadable"


def scan_images(
    source: str | os.PathLike | Sequence[tuple[str | os.PathLike, str | int]],
    mode: str = "RGB",
    classes: Sequence[str] | None = None,
    size: int | tuple[int, int] | None = None,
    drop_duplicates: bool = True,
) -> ImageScanResult:
    """Scan images, keep the good ones as one uint8 tensor and report the dropped ones.

    Args:
        source: a folder in ImageFolder layout (``root/<class>/<image>``), or a list of
            ``(path, label)`` pairs where a label is a class name or an index into ``classes``.
        mode: ``"L"``, ``"RGB"`` or ``"RGBA"``: every kept image is converted to it (transparent pixels
            are composited on black when alpha is dropped).
        classes: the allowed class names; a file whose label is not among them is dropped as
            ``unknown_label``. Default: the folder's sub-folders, or the sorted labels of the list.
        size: resize every image to ``size`` (an int for square, or ``(height, width)``). Without it, all
            kept images must share one size.
        drop_duplicates: drop files whose bytes equal those of a file kept before.

    Returns:
        An :class:`ImageScanResult`; its ``summary`` is also logged at INFO level (WARNING when some
        files were dropped).

    Raises:
        ValueError: unknown ``mode``; images of different sizes without ``size``; an empty folder.
        FileNotFoundError: ``source`` is a path that is not a folder.
    """
    check_image_mode(mode)
    hw = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
    if hw is not None and (len(hw) != 2 or min(hw) < 1):
        raise ValueError(f"`image_size` must be a positive int or (height, width), got {size!r}.")
    if isinstance(source, (str, os.PathLike)):
        items, class_names = list_image_folder(source, classes)
    else:
        items = [(os.fspath(p), _list_label(label, os.fspath(p))) for p, label in source]
        if classes is not None:
            class_names = list(classes)
        else:
            class_names = sorted({str(lbl) for _, lbl in items if not isinstance(lbl, int)}) or []
        if classes is None and all(isinstance(lbl, int) for _, lbl in items):
            class_names = [str(i) for i in range(max((lbl for _, lbl in items), default=-1) + 1)]
    index = {name: i for i, name in enumerate(class_names)}
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    dropped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path, label in items:
        if isinstance(label, int) and not isinstance(label, bool):
            label_id = label if 0 <= label < len(class_names) else None
        else:
            label_id = index.get(str(label))
        if label_id is None:
            dropped.append((path, "unknown_label"))
            continue
        try:  # a regular file only (a FIFO would block), bounded; read once: hashed, then decoded from memory
            data = read_user_file(path, "images", what="an image file", max_bytes=MAX_IMAGE_FILE_BYTES)
        except (FileNotFoundError, PermissionError):
            dropped.append((path, "missing"))
            continue
        except ValueError as err:
            dropped.append((path, "too_large" if "more than" in str(err) else "not_a_file"))
            continue
        except OSError:
            dropped.append((path, "missing"))
            continue
        if not data:
            dropped.append((path, "zero_byte"))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if drop_duplicates and digest in seen:
            dropped.append((path, "duplicate"))
            continue
        try:
            array = _decode(data, mode, hw, path)
        except PixelRangeError:
            raise  # a readable image whose values the scaling rule cannot map: the user decides, not the scan
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
            dropped.append((path, _classify_error(err)))
            continue
        seen.add(digest)
        arrays.append(array)
        labels.append(label_id)
        paths.append(path)
    channels = IMAGE_MODES[mode]
    if arrays:
        shapes = sorted({a.shape[:2] for a in arrays})
        if len(shapes) > 1:
            raise ValueError(
                f"Images have different sizes {shapes[:5]}{'...' if len(shapes) > 5 else ''}; set `image_size` "
                "to resize them to one size."
            )
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        images = torch.zeros((0, channels, *(hw or (0, 0))), dtype=torch.uint8)
    result = ImageScanResult(
        images, torch.tensor(labels, dtype=torch.long), paths, list(class_names), dropped
    )
    level = logging.WARNING if dropped else logging.INFO
    log.log(level, "Image scan: %s", result.summary)
    for path, reason in dropped:
        log.debug("dropped %s: %s", path, reason)
    return result
