"""Paths named in configs: opened as given, never followed outside what the user gave.

A recipe (YAML) names files: checkpoints to warm-start from or distill from, folders of images, data files.
These helpers keep such paths to what they say:

- :func:`user_file` accepts a path only if it names a regular file (a checkpoint that is a folder, a FIFO or a
  device is refused before anything reads it), and expands nothing (no ``~``, no environment variables, no
  search in other folders or a download fallback): the file is the one named, relative to the working folder.
- :func:`opened_user_file` opens such a file for reading: checked with :func:`user_file` first, then opened
  non-blocking and checked again on the open descriptor (a path swapped for a FIFO between the check and the
  open is still refused, and never blocks), optionally refusing a file longer than a limit. Every reader of a
  user path uses it (or :func:`read_user_file`, which reads the whole file).
- :func:`is_within` tells whether a path, once symbolic links are resolved, stays inside a root folder; the
  image-folder scan uses it to skip links that lead out of the dataset folder (a dataset copied from elsewhere
  cannot make training read ``/etc`` or a home folder through a link).

(``lightning_optim/functional/artifact.py`` keeps its own copy of these rules, ``read_regular_file``: that
file imports only torch and the standard library, so that it can be copied beside a deployment.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["is_within", "opened_user_file", "read_user_file", "user_file"]

#: the flags every user file is opened with: read only, never blocking on a FIFO, never becoming the
#: controlling terminal, not inherited by child processes
_OPEN_FLAGS = os.O_RDONLY
for _name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"):
    _OPEN_FLAGS |= getattr(os, _name, 0)


def _not_regular(text: str, option: str, mode: int, what: str) -> ValueError:
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
    return ValueError(f"`{option}` {text!r} is {kind}; give the path of {what}.")


def user_file(path: str | os.PathLike, option: str, what: str = "a checkpoint file") -> Path:
    """The file named by ``option``, checked to be an existing regular file.

    Args:
        path: the path as the user gave it (absolute, or relative to the working folder).
        option: the option's name, used in the error messages (for example ``"teacher_checkpoint"``).
        what: what the file should be, in the messages (``"a checkpoint file"``, ``"a CSV file"``).

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: ``path`` exists but is not a regular file (a folder, a FIFO, a socket or a device).

    Example::

        >>> user_file("no/such.ckpt", "teacher_checkpoint")
        Traceback (most recent call last):
        ...
        FileNotFoundError: `teacher_checkpoint` 'no/such.ckpt' does not exist.
    """
    text = os.fsdecode(os.fspath(path))
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"`{option}` {text!r} does not exist.") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(text, option, mode, what)
    return Path(text)


@contextmanager
def opened_user_file(
    path: str | os.PathLike,
    option: str,
    mode: str = "rb",
    *,
    what: str = "a checkpoint file",
    max_bytes: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> Iterator[IO]:
    """Open the file named by ``option`` for reading, refusing anything but a regular file before it is read.

    The path is checked with :func:`user_file` (nothing is opened if it names a folder, a FIFO or a device),
    then opened non-blocking and checked again on the open descriptor: a path replaced by a FIFO in between is
    refused too, and the call never blocks. The descriptor is made blocking again before it is handed out.

    Args:
        path: the path as the user gave it.
        option: the option's name, used in the error messages.
        mode: ``"rb"`` (bytes) or ``"r"`` (text, with ``encoding``, ``errors`` and ``newline`` as in ``open``).
        what: what the file should be, in the messages.
        max_bytes: refuse a file longer than this many bytes (``None``: any length).
        encoding: text mode's encoding.
        errors: text mode's decoding error handler.
        newline: text mode's newline handling.

    Yields:
        The open file object (closed on exit).

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: not a regular file, a file longer than ``max_bytes``, or a mode other than ``"r"``/``"rb"``.

    Example::

        with opened_user_file(path, "train_file", "r", what="a CSV file", encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    """
    if mode not in ("r", "rb"):
        raise ValueError(f"Unknown `mode` {mode!r}; allowed: ['r', 'rb'].")
    text = os.fspath(user_file(path, option, what))
    try:
        fd = os.open(text, _OPEN_FLAGS)
    except FileNotFoundError:  # removed since the check
        raise FileNotFoundError(f"`{option}` {text!r} does not exist.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(text, option, info.st_mode, what)
        if max_bytes is not None and info.st_size > max_bytes:
            raise ValueError(
                f"`{option}` {text!r} has {info.st_size:,} bytes, more than the {max_bytes:,} this reader accepts."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        handle = (
            os.fdopen(fd, "rb")
            if mode == "rb"
            else os.fdopen(fd, "r", encoding=encoding, errors=errors, newline=newline)
        )
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_user_file(
    path: str | os.PathLike, option: str, *, what: str = "a checkpoint file", max_bytes: int | None = None
) -> bytes:
    """The whole content of the regular file named by ``option`` (see :func:`opened_user_file`); at most
    ``max_bytes`` bytes are read, even from a file that grows while it is read.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: not a regular file, or longer than ``max_bytes``.
    """
    with opened_user_file(path, option, "rb", what=what, max_bytes=max_bytes) as fh:
        data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(
            f"`{option}` {os.fspath(path)!r} has more than the {max_bytes:,} bytes this reader accepts."
        )
    return data


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside the folder ``root`` (resolved too)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root
