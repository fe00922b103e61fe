"""Paths named in configs: opened as given, never followed outside what the user gave.

A recipe (YAML) names files: checkpoints to warm-start from or distill from, folders of images. These
helpers keep such paths to what they say:

- :func:`user_file` accepts a path only if it names a regular file (a checkpoint that is a folder, a FIFO or a
  device is refused before anything reads it), and expands nothing (no ``~``, no environment variables, no
  search in other folders or a download fallback): the file is the one named, relative to the working folder.
- :func:`is_within` tells whether a path, once symbolic links are resolved, stays inside a root folder; the
  image-folder scan uses it to skip links that lead out of the dataset folder (a dataset copied from elsewhere
  cannot make training read ``/etc`` or a home folder through a link).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["is_within", "user_file"]


def user_file(path: str | os.PathLike, option: str) -> Path:
    """The file named by ``option``, checked to be an existing regular file.

    Args:
        path: the path as the user gave it (absolute, or relative to the working folder).
        option: the option's name, used in the error messages (for example ``"teacher_checkpoint"``).

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: ``path`` exists but is not a regular file (a folder, a FIFO, a socket or a device).

    Example::

        >>> user_file("no/such.ckpt", "teacher_checkpoint")
        Traceback (most recent call last):
        ...
        FileNotFoundError: `teacher_checkpoint` 'no/such.ckpt' does not exist.
    """
    text = os.fspath(path)
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"`{option}` {text!r} does not exist.") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"`{option}` {text!r} is {kind}; give the path of a checkpoint file.")
    return Path(text)


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside the folder ``root`` (resolved too)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root
