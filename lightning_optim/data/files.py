"""Bounded reads of the data files a user names: regular files only, never more than a set number of bytes.

:func:`read_file_bytes` is the one way the data readers (IDX, CSV/TSV/JSONL) read a file. It opens it with
:func:`lightning_optim.paths.opened_user_file`, the helper every reader of a user path shares (a folder, a FIFO
or a device is refused before anything is read, and a FIFO never blocks), refuses a file larger than
``max_bytes`` before reading it, reads at most ``max_bytes`` bytes, and turns every other ``OSError`` into a
``ValueError`` naming the file.
"""

from __future__ import annotations

import os

from lightning_optim.paths import opened_user_file


def read_file_bytes(
    path: str | os.PathLike, option: str, max_bytes: int, kind: str = "a data file", prefix: bool = False
) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Args:
        path: the file.
        option: the option that names it, for the messages (``"train_file"``).
        max_bytes: the most bytes read; a larger file is refused before anything is read (unless ``prefix``).
        kind: what the file should be, for the messages (``"an IDX file"``).
        prefix: read only the first ``max_bytes`` bytes of a larger file instead of refusing it.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a folder, a FIFO, a socket or a device; a file larger than ``max_bytes``; any other error
            opening or reading it (no permission, an I/O error, a NUL character in the path).
    """
    name = os.fsdecode(os.fspath(path))
    try:
        with opened_user_file(name, option, "rb", what=kind, max_bytes=None if prefix else max_bytes) as fh:
            data = fh.read(max_bytes + (0 if prefix else 1))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"`{option}` {name!r} cannot be read: {err.strerror or err}.") from None
    except ValueError as err:
        text = str(err)
        if "more than" in text:
            raise ValueError(
                f"{text.rstrip('.')} (`max_bytes`): split the file or raise `max_bytes`."
            ) from None
        if "is a folder" in text or "not a regular file" in text:
            raise
        raise ValueError(f"`{option}` {name!r} cannot be read: {text}.") from None
    if len(data) > max_bytes:  # the file grew while it was read
        raise ValueError(f"`{option}` {name!r} holds more than {max_bytes:,} bytes (`max_bytes`).")
    return data


__all__ = ["read_file_bytes"]
