"""Checkpoints written atomically and read safely: :class:`AtomicCheckpointIO`.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lies in the
system's temporary folder; moving it into a checkpoint folder on another file system is a copy, and a full disk
during that copy leaves a truncated ``last.ckpt`` where the last good one was. Here the temporary file lies in
the checkpoint's own folder, is flushed to the disk (``fsync``) and then renamed over the old file
(``os.replace``, atomic on POSIX and Windows), and the folder is synced so that the rename survives a power
cut. Any error on the way (``ENOSPC``, a quota, a kill signal turned into an exception) removes the temporary
file and leaves the previous checkpoint as it was. Reads take only a regular file
(:func:`lightning_optim.paths.opened_user_file`: a FIFO or a folder given as ``ckpt_path`` is refused, never
blocks) and always with ``weights_only=True``.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_optim.paths import opened_user_file

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "TEMP_SUFFIX"]

log = logging.getLogger(__name__)

#: the errors of a full disk or quota (for the hint in the message)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

#: the suffix of the temporary file a checkpoint is written to (``.<name>.<random>.tmp`` beside it)
TEMP_SUFFIX = ".tmp"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota, a folder that is not writable); the previous
    checkpoint at that path, if any, is unchanged. ``errno`` is the underlying error's, ``filename`` the
    checkpoint's path."""

    def __str__(self) -> str:
        return str(self.strerror)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable; a file system or OS that cannot sync folders is skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL on some file systems, folders cannot be opened on Windows
        pass
    finally:
        os.close(fd)


def _give_mode(fd: int, target: str) -> None:
    """The temporary file (created 0600) gets the mode of the checkpoint it replaces, else ``rw-r--r--``."""
    if not hasattr(os, "fchmod"):
        return
    try:
        mode = os.stat(target).st_mode & 0o777
    except OSError:
        mode = 0o644
    os.fchmod(fd, mode)


def _temp_pattern(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(glob.escape(folder), f".{glob.escape(name)}.*{TEMP_SUFFIX}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that never leaves a half-written checkpoint in place of a good one.

    **Saving** (local paths): the checkpoint is written to ``.<name>.<random>.tmp`` in the target's folder,
    flushed and ``fsync``-ed, renamed over the target with ``os.replace`` and the folder is ``fsync``-ed. On any
    error the temporary file is removed and the error is raised as :class:`CheckpointWriteError` (an
    ``OSError`` with the same ``errno``) saying that the previous checkpoint is unchanged; a run killed while
    writing (``SIGKILL``, a power cut) leaves at most the hidden temporary file, which the next save of the same
    checkpoint removes. Remote paths (``s3://``, ...) go to Lightning's own writer.

    **Loading**: the path must be an existing regular file (:func:`lightning_optim.paths.opened_user_file`; a
    folder or a FIFO given as ``ckpt_path`` is refused before anything is read), read with ``weights_only=True``
    always (``weights_only=False`` is refused); a truncated or corrupt file is reported as such, naming it.

    The ``lightning-optim`` command uses it by default. With a plain Trainer::

        from lightning_optim.plugins import AtomicCheckpointIO

        trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see the class docstring).

        Raises:
            TypeError: ``storage_options`` given (as Lightning's own writer).
            CheckpointWriteError: the checkpoint could not be written; the previous one is unchanged.
        """
        text = os.fspath(path)
        if not _is_local(text):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` are not supported by {type(self).__name__} (a local file); got {storage_options!r}."
            )
        target = os.path.abspath(_local_path(text))
        folder = os.path.dirname(target)
        try:
            os.makedirs(folder, exist_ok=True)
            self._remove_stale_temps(target)
            fd, temp = tempfile.mkstemp(
                prefix=f".{os.path.basename(target)}.", suffix=TEMP_SUFFIX, dir=folder
            )
        except OSError as err:
            raise self._error(err, target, "could not create its folder or its temporary file") from err
        try:
            _give_mode(fd, target)
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, target)
        except BaseException as err:
            try:
                os.remove(temp)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise self._error(err, target, "writing it failed") from err
            raise
        _fsync_folder(folder)

    @staticmethod
    def _remove_stale_temps(target: str) -> None:
        """Temporary files of ``target`` left by a run killed while writing it (only one process writes it)."""
        for stale in glob.glob(_temp_pattern(target)):
            try:
                os.remove(stale)
            except OSError:
                pass

    @staticmethod
    def _error(err: OSError, target: str, what: str) -> CheckpointWriteError:
        reason = os.strerror(err.errno) if err.errno else str(err)
        kept = (
            "the previous checkpoint there is unchanged" if os.path.exists(target) else "nothing was written"
        )
        hint = " Free some space and resume with `ckpt_path='last'`." if err.errno in _DISK_FULL else ""
        return CheckpointWriteError(
            err.errno or errno.EIO,
            f"Saving the checkpoint {target!r}: {what} ({reason}); {kept}.{hint}",
            target,
        )

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path``: a regular file, with ``weights_only=True``.

        Raises:
            FileNotFoundError: nothing at ``path``.
            ValueError: ``path`` is a folder, a FIFO or a device; ``weights_only=False`` was asked for; the file
                is truncated or not a checkpoint.
        """
        if weights_only is False:
            raise ValueError(
                f"{type(self).__name__} loads checkpoints with `weights_only=True` only (a checkpoint can carry "
                "code that unpickling would run); save what the checkpoint needs as tensors and plain types."
            )
        text = os.fspath(path)
        if not _is_local(text):
            if not get_filesystem(text).exists(text):
                raise FileNotFoundError(f"`ckpt_path` {text!r} does not exist.")
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        text = _local_path(text)
        with opened_user_file(text, "ckpt_path") as fh:
            try:
                return torch.load(fh, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError:
                raise  # refused by weights_only: the message names the global it would have run
            except (RuntimeError, EOFError, ValueError, OSError) as err:
                raise ValueError(
                    f"`ckpt_path` {text!r} is not a readable checkpoint (truncated, corrupt or another format: "
                    f"{err}). Resume from an earlier checkpoint."
                ) from err
