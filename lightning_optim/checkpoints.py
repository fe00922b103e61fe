"""Sharded (distributed) checkpoints: tell one apart, and consolidate one into a single Lightning file.

Under ``ModelParallelStrategy`` (FSDP2 sharding, ``ClassificationModule(sharding="fsdp2")``) Lightning saves a
checkpoint as a **folder** by default (``save_distributed_checkpoint=True``): every rank writes its shards of the
weights and the optimizer state with ``torch.distributed.checkpoint`` (DCP: ``__<rank>_<n>.distcp`` files and
one ``.metadata`` index), and rank 0 writes everything else (loops, callbacks' states, hyperparameters, epoch and
step) to ``meta.pt``. A fit resumes from such a folder as from a file (``Trainer.fit(..., ckpt_path=folder)``
under the same strategy), exactly with ``ExactResume`` (tested with 2 processes: ``docs/scale.md``).

:func:`consolidate_checkpoint` (and ``python -m lightning_optim.checkpoints consolidate DIR OUT``) turns the
folder into **one** ``.ckpt`` file in the layout of a single-device Lightning checkpoint, with no process group:

- ``state_dict``: the full (unsharded) tensors under the module's own keys (``model.0.weight``, ...), as a
  single-device ``ClassificationModule`` saves them, so ``ClassificationModule.load_from_checkpoint``,
  :func:`lightning_optim.weights.load_weights` and ``Trainer.fit(ckpt_path=...)`` on one device read it;
- ``optimizer_states``: each optimizer's state with full tensors, its parameters renumbered ``0, 1, ...`` in
  the order of its parameter groups (DCP keys them by parameter name; a single-device optimizer's
  ``state_dict`` by that position), so a single-device fit resumes with the optimizer's moments too;
- everything of ``meta.pt`` as it is (epoch, global step, ``loops``, ``callbacks``' states, ``lr_schedulers``,
  hyperparameters), except ``ClassificationModule``'s ``sharding`` (and ``sharding_param_dtype``)
  hyperparameters, set to ``None``: the file is a single-device checkpoint (``load_from_checkpoint(...,
  sharding="fsdp2")`` shards it again).
  With ``weights_only=True`` the optimizer states, the callbacks' states and ``lr_schedulers`` are left out
  (as in Lightning's ``save_checkpoint(..., weights_only=True)``): a smaller file for deployment.

The file is written atomically (:class:`~lightning_optim.plugins.AtomicCheckpointIO`: a temporary file in the
target's folder, ``fsync``, ``os.replace``); an existing ``out`` is replaced only with ``overwrite=True``.

Security: DCP's ``.metadata`` is a pickle, and torch's own reader unpickles it (and DCP's non-tensor items,
``torch.load(..., weights_only=False)``) as they are. Resuming a fit from a sharded folder goes through torch's
reader, so it trusts the folder like code: resume only from your own checkpoints. Consolidation reads less
trustingly: ``.metadata`` with an unpickler that builds only DCP's metadata types (:data:`METADATA_GLOBALS`;
anything else is refused naming it; every shard file it names must lie in the folder), the non-tensor items and ``meta.pt`` with ``torch.load(...,
weights_only=True)``, the tensors as torch reads them (``weights_only=True``). Still, treat a checkpoint folder
you did not write as you would any file that torch loads.

Memory: the full model (and, unless ``weights_only``, the full optimizer state) is held in memory once while
the file is written, on one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import os
import pickle
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from lightning_optim.paths import opened_user_file

__all__ = [
    "DCP_METADATA_FILENAME",
    "META_FILENAME",
    "METADATA_GLOBALS",
    "consolidate_checkpoint",
    "is_sharded_checkpoint",
    "main",
]

#: the file rank 0 writes into a sharded checkpoint folder: all but the weights and the optimizer states
#: (Lightning's ``lightning.fabric.utilities.load._METADATA_FILENAME``)
META_FILENAME = "meta.pt"
#: the index of a ``torch.distributed.checkpoint`` folder (a pickle of ``Metadata``)
DCP_METADATA_FILENAME = ".metadata"
#: the modules whose dataclasses and enums a DCP ``.metadata`` may build (its whole vocabulary), besides the
#: few torch and standard-library names of :data:`_OTHER_GLOBALS`
METADATA_GLOBALS: tuple[str, ...] = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
)
#: other names a ``.metadata`` pickle uses: a tensor's shape, layout (by name), the checkpoint's path
_OTHER_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "Path"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)
#: the meta.pt keys a weights-only file leaves out (as Lightning's ``save_checkpoint(weights_only=True)``)
_TRAINING_STATE_KEYS: tuple[str, ...] = ("callbacks", "optimizer_states", "lr_schedulers")
#: what a sharded checkpoint folder holds, for the messages
_EXPECTED = (
    "a sharded checkpoint folder as Lightning's ModelParallelStrategy writes it (`meta.pt`, "
    "torch.distributed.checkpoint's `.metadata` and `__<rank>_<n>.distcp` files)"
)


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding both ``meta.pt`` and DCP's ``.metadata`` (what
    ``ModelParallelStrategy`` writes with ``save_distributed_checkpoint=True``)."""
    folder = Path(path)
    return (
        folder.is_dir() and (folder / META_FILENAME).is_file() and (folder / DCP_METADATA_FILENAME).is_file()
    )


# ----------------------------------------------------------------------------------------------- reading
class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata types only (:data:`METADATA_GLOBALS`, torch dtypes, :data:`_OTHER_GLOBALS`)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _OTHER_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in METADATA_GLOBALS:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise pickle.UnpicklingError(
            f"it names `{module}.{name}`, which is not a type of a DCP checkpoint's metadata"
        )


def _load_error(err: BaseException) -> str:
    """What ``torch.load`` said, short: why ``weights_only=True`` refused the file, or the first line."""
    text = str(err).strip()
    if text.startswith("Weights only load failed"):
        details = [p.strip() for p in text.split("\n\n")[1:] if p.strip()]
        why = details[0].splitlines()[0] if details else "it names a type torch does not load safely"
        return f"weights_only=True refused it: {why}"
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else f"{type(err).__name__} (truncated?)"


def _read_metadata(folder: Path) -> Any:
    """DCP's ``Metadata`` of ``folder``, built with :class:`_MetadataUnpickler`."""
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    path = folder / DCP_METADATA_FILENAME
    with opened_user_file(path, "path", what="DCP's `.metadata` index") as fh:
        try:
            metadata = _MetadataUnpickler(fh).load()
        except Exception as err:  # noqa: BLE001 - unpickling fails in many types
            raise ValueError(
                f"`path` {str(folder)!r}: its `{DCP_METADATA_FILENAME}` is not the index of a "
                f"torch.distributed.checkpoint folder ({err})."
            ) from None
    if not isinstance(metadata, Metadata):
        raise ValueError(
            f"`path` {str(folder)!r}: its `{DCP_METADATA_FILENAME}` holds a {type(metadata).__name__}, "
            "not torch.distributed.checkpoint's Metadata."
        )
    for info in (metadata.storage_data or {}).values():  # every shard a file of this folder, no other path
        name = getattr(info, "relative_path", None)
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or os.path.basename(name) != name
            or "\\" in name
        ):
            raise ValueError(
                f"`path` {str(folder)!r}: its `{DCP_METADATA_FILENAME}` names the shard file {name!r}, which is "
                "not a file of the folder itself."
            )
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    return metadata


def _read_meta(folder: Path) -> dict[str, Any]:
    """Lightning's ``meta.pt`` (``torch.load(..., weights_only=True)``)."""
    path = folder / META_FILENAME
    with opened_user_file(path, "path", what=f"Lightning's `{META_FILENAME}`") as fh:
        try:
            meta = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            raise ValueError(
                f"`path` {str(folder)!r}: its `{META_FILENAME}` could not be read ({_load_error(err)})."
            ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"`path` {str(folder)!r}: its `{META_FILENAME}` holds a {type(meta).__name__}, not the dict of a "
            "Lightning checkpoint."
        )
    return meta


def _storage_reader(folder: Path, metadata: Any) -> Any:
    """DCP's file reader of ``folder`` that hands out ``metadata`` (read already) instead of unpickling its own."""
    from torch.distributed.checkpoint import FileSystemReader

    class _CheckedMetadataReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _CheckedMetadataReader(folder)


def _load_planner(folder: Path) -> Any:
    """DCP's default load planner on a flat state dict, reading non-tensor items with ``weights_only=True``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                self.state_dict[fqn] = torch.load(value, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
                raise ValueError(
                    f"`path` {str(folder)!r}: the item `{fqn}` could not be read ({_load_error(err)})."
                ) from None

    return _WeightsOnlyLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _first_failure(err: BaseException) -> BaseException:
    """The underlying error of DCP's ``CheckpointException`` (which wraps each rank's), else ``err``."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        if isinstance(first, tuple) and first and isinstance(first[0], BaseException):
            return first[0]
    return err


def _load_flat(folder: Path, metadata: Any, weights_only: bool) -> dict[str, Any]:
    """Every item of the DCP folder under its flat key, full tensors (every shard read), on the CPU."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    planner_data = metadata.planner_data or {}
    flat: dict[str, Any] = {}
    for key, item in metadata.state_dict_metadata.items():
        if weights_only and tuple(planner_data.get(key, (key,)))[:1] != ("state_dict",):
            continue
        if isinstance(item, TensorStorageMetadata):
            flat[key] = torch.empty(item.size, dtype=item.properties.dtype)
        else:
            flat[key] = None  # a non-tensor item: the planner puts it here
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*assuming the intent is to load in a single process.*"
            )
            load(
                flat,
                storage_reader=_storage_reader(folder, metadata),
                planner=_load_planner(folder),
                no_dist=True,
            )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - DCP's CheckpointException derives from BaseException
        cause = _first_failure(err)
        if isinstance(cause, ValueError) and str(cause).startswith("`path`"):
            raise cause from None
        raise ValueError(
            f"`path` {str(folder)!r}: the shards could not be read (a missing, truncated or foreign `.distcp` "
            f"file?): {type(cause).__name__}: {cause}"
        ) from None
    return flat


def _set_nested(root: dict[str, Any], path: Sequence[Any], value: Any) -> None:
    """Put ``value`` at ``path`` (dict keys, list indices) inside ``root``, creating what is missing."""
    node: Any = root
    for step, nxt in zip(path[:-1], path[1:]):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            node.extend([None] * (step + 1 - len(node)))
            if node[step] is None:
                node[step] = empty
            node = node[step]
        else:
            node = node.setdefault(step, empty)
    last = path[-1]
    if isinstance(node, list):
        node.extend([None] * (last + 1 - len(node)))
    node[last] = value


def _unflatten(flat: dict[str, Any], planner_data: dict[str, Any]) -> dict[str, Any]:
    """The nested state dict DCP flattened (``planner_data``: flat key -> path of keys and list indices)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        path = tuple(planner_data.get(key, (key,)))
        _set_nested(nested, path, value)
    return nested


def _indexed_optimizer_state(state: Any, folder: Path, key: str) -> Any:
    """An optimizer state keyed by parameter name (DCP's) renumbered as a single-device ``Optimizer.state_dict``:
    the parameters ``0, 1, ...`` in the order the parameter groups list them."""
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        return state
    positions: dict[Any, int] = {}
    groups = []
    for group in state["param_groups"]:
        params = list(group.get("params", []))
        if any(isinstance(p, int) for p in params):  # numbered already
            return state
        for name in params:
            positions[name] = len(positions)
        groups.append({**group, "params": [positions[name] for name in params]})
    per_param = state.get("state", {})
    strays = sorted(str(name) for name in per_param if name not in positions)
    if strays:
        raise ValueError(
            f"`path` {str(folder)!r}: `{key}` has state for parameters no parameter group lists: {strays[:5]}."
        )
    return {"state": {positions[name]: value for name, value in per_param.items()}, "param_groups": groups}


def _single_file_checkpoint(
    folder: Path, meta: dict[str, Any], nested: dict[str, Any], weights_only: bool
) -> dict[str, Any]:
    """Lightning's single-file layout: ``meta.pt``'s items, ``state_dict`` and ``optimizer_states``."""
    state_dict = nested.pop("state_dict", None)
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(
            f"`path` {str(folder)!r} holds no `state_dict` in its shards: expected {_EXPECTED} (a "
            "torch.distributed.checkpoint folder written by other code has no Lightning checkpoint inside)."
        )
    optimizers = sorted(
        (k for k in nested if k.startswith("optimizer_") and k[len("optimizer_") :].isdigit()),
        key=lambda k: int(k[len("optimizer_") :]),
    )
    optimizer_states = [_indexed_optimizer_state(nested.pop(k), folder, k) for k in optimizers]
    first = ("epoch", "global_step", "pytorch-lightning_version")
    checkpoint: dict[str, Any] = {k: meta[k] for k in first if k in meta}
    checkpoint["state_dict"] = state_dict
    for key, value in meta.items():
        if key not in checkpoint:
            checkpoint[key] = value
        if key == "callbacks" and not weights_only:
            checkpoint["optimizer_states"] = optimizer_states
    if not weights_only:
        checkpoint.setdefault("optimizer_states", optimizer_states)
    for key, value in nested.items():  # anything else saved with the shards
        checkpoint.setdefault(key, value)
    if weights_only:
        for key in _TRAINING_STATE_KEYS:
            checkpoint.pop(key, None)
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict):
        checkpoint["hyper_parameters"] = _single_device_hparams(hparams)
    return checkpoint


def _single_device_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """``ClassificationModule``'s hyperparameters for one device: ``sharding`` (and FSDP2's mixed precision,
    ``sharding_param_dtype``, which goes with it) set to ``None``; others as they are."""
    if hparams.get("sharding") is None:
        return hparams
    single: dict[str, Any] = {"sharding": None}
    if "sharding_param_dtype" in hparams:
        single["sharding_param_dtype"] = None
    return {**hparams, **single}


def _check_paths(source: Path, target: Path, overwrite: bool) -> None:
    if not source.exists():
        raise FileNotFoundError(f"`path` {str(source)!r} does not exist: expected {_EXPECTED}.")
    if source.is_file():
        raise ValueError(
            f"`path` {str(source)!r} is a file, not a sharded checkpoint folder: a single-file checkpoint needs no "
            "consolidation (load it as it is: `ckpt_path=...`, `load_from_checkpoint(...)`)."
        )
    if not source.is_dir():
        raise ValueError(
            f"`path` {str(source)!r} is not a folder (a FIFO, socket or device): expected {_EXPECTED}."
        )
    missing = [n for n in (META_FILENAME, DCP_METADATA_FILENAME) if not (source / n).is_file()]
    if missing:
        names = " and ".join(f"`{n}`" for n in missing)
        raise ValueError(
            f"`path` {str(source)!r} is not a sharded checkpoint: it has no {names}; expected {_EXPECTED}."
        )
    if target.is_dir():
        raise IsADirectoryError(
            f"`out` {str(target)!r} is a folder: give the path of the single `.ckpt` file to write (a folder is "
            "never replaced, `overwrite` or not)."
        )
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(
            f"`out` {str(target)!r} exists already: pass `overwrite=True` (`--overwrite`) to replace it, or choose "
            "another path."
        )


def consolidate_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False, weights_only: bool = False
) -> Path:
    """Turn a sharded checkpoint folder (``ModelParallelStrategy``, FSDP2) into one single-device ``.ckpt`` file.

    Runs in one process, without a process group (DCP's single-process loading): see the module docstring for
    what the file holds and how the folder is read.

    Args:
        path: the sharded checkpoint folder (``meta.pt``, ``.metadata``, ``*.distcp``), e.g.
            ``checkpoints/epoch=2-step=300.ckpt`` written by ``ModelCheckpoint`` under ``ModelParallelStrategy``.
        out: the file to write (its folder is created where missing).
        overwrite: replace ``out`` when it exists (a folder is never replaced).
        weights_only: leave the optimizer states, the callbacks' states and ``lr_schedulers`` out (a smaller
            file for deployment, which ``Trainer.fit(ckpt_path=...)`` cannot resume training from).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a file (a single-file checkpoint needs no consolidation), or a folder without
            ``meta.pt`` or ``.metadata``, or its content cannot be read safely (a ``.metadata`` that names other
            types than DCP's, an item or ``meta.pt`` that ``weights_only=True`` refuses, missing or truncated
            shards, no ``state_dict``).
        FileExistsError: ``out`` exists and ``overwrite`` is ``False``.
        IsADirectoryError: ``out`` is a folder.
        lightning_optim.plugins.CheckpointWriteError: ``out`` could not be written (a full disk, a folder that
            is not writable); a previous file at ``out`` is unchanged.

    Example::

        from lightning_optim.checkpoints import consolidate_checkpoint

        single = consolidate_checkpoint("checkpoints/epoch=2-step=300.ckpt", "model.ckpt")
        module = ClassificationModule.load_from_checkpoint(single, model=MyNet())
    """
    source, target = Path(path), Path(out)
    _check_paths(source, target, overwrite)
    meta = _read_meta(source)
    metadata = _read_metadata(source)
    flat = _load_flat(source, metadata, weights_only)
    nested = _unflatten(flat, metadata.planner_data or {})
    checkpoint = _single_file_checkpoint(source, meta, nested, weights_only)
    from lightning_optim.plugins import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    return target


# ----------------------------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_optim.checkpoints",
        description="Work with the sharded checkpoint folders of ModelParallelStrategy (FSDP2).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    consolidate = commands.add_parser(
        "consolidate",
        help="write a sharded checkpoint folder as one single-device .ckpt file",
        description=(
            "Write the sharded checkpoint folder DIR (meta.pt, .metadata, *.distcp) as the single Lightning "
            "checkpoint file OUT with the full weights (and optimizer states unless --weights-only), in one "
            "process without a process group."
        ),
    )
    consolidate.add_argument("dir", metavar="DIR", help="the sharded checkpoint folder")
    consolidate.add_argument("out", metavar="OUT", help="the .ckpt file to write")
    consolidate.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    consolidate.add_argument(
        "--weights-only",
        action="store_true",
        help="leave out the optimizer states, the callbacks' states and the LR schedulers",
    )
    return parser


def main(
    argv: Sequence[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """``python -m lightning_optim.checkpoints consolidate DIR OUT [--overwrite] [--weights-only]``.

    Returns:
        The exit status: 0 when ``OUT`` was written (its path is printed), 1 when a path was refused or the
        checkpoint could not be read or written (the reason is printed to ``stderr``); a bad command line exits
        with argparse's status 2.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        written = consolidate_checkpoint(
            args.dir, args.out, overwrite=args.overwrite, weights_only=args.weights_only
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=err)
        return 1
    print(written, file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
