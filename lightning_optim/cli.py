"""The ``lightning-optim`` command: Lightning's CLI with our classes addressable by short names.

``lightning-optim fit|validate|test|predict --config recipe.yaml``:

- every class of :mod:`lightning_optim` (models, layers, data modules, callbacks, modules) is addressable
  by its short name (``class_path: ConvNet3``), as are Lightning's and torch's own by full class path;
- the data module's ``num_classes`` (where it has one) fills the module's ``num_classes`` at
  instantiation (and :class:`~lightning_optim.modules.ClassificationModule` checks it against the model);
- ``fit`` runs the test split on the final model afterwards (``--test_after_fit false`` to skip);
- the configuration is saved as ``config.yaml`` in the log directory and reloads as it is:
  ``lightning-optim fit --config <log_dir>/config.yaml`` trains again. ``--print_config`` prints the same;
- the default logger (no ``trainer.logger`` in the recipe, or ``true``) is TensorBoard where ``tensorboard`` or
  ``tensorboardX`` is importable (``pip install 'lightning-optim[tensorboard]'``), else CSV, both under the
  run's ``default_root_dir``; a recipe's own ``trainer.logger`` (``false`` included) wins;
- dependency notices a user cannot act on (Lightning's litlogger/litmodels tips, its use of a deprecated
  torch pytree class) are filtered out while the command runs (:data:`QUIET_LOG_MESSAGES`,
  :data:`QUIET_WARNINGS`); deprecation warnings of the formats the package writes are never filtered;
- faults: checkpoints are written atomically (:class:`~lightning_optim.plugins.AtomicCheckpointIO`, unless
  the recipe names a ``CheckpointIO`` plugin); ``fit`` adds
  :class:`~lightning_optim.callbacks.InterruptCheckpoint` (SIGTERM/SIGINT: finish the step, save
  ``last.ckpt``, exit with status 128 + signal, e.g. 143; ``--interrupt_checkpoint false`` to leave it out) and
  :class:`~lightning_optim.callbacks.ExactResume` (random states and the rest of an interrupted epoch, for a
  resume exact to the bit; ``--exact_resume false``) unless the recipe has them; ``--ckpt_path last`` resumes
  from the newest ``last*.ckpt`` of the run's folders (:func:`find_last_checkpoint`: every ``version_N`` of the
  logger, the ``ModelCheckpoint`` and ``InterruptCheckpoint`` folders), and a checkpoint path must name a
  regular file (a FIFO or a folder is refused before anything is read);
- sharded checkpoints (``ModelParallelStrategy``, FSDP2: a checkpoint is a FOLDER of ``meta.pt`` and
  ``torch.distributed.checkpoint`` shards, :func:`lightning_optim.checkpoints.is_sharded_checkpoint`):
  ``--ckpt_path`` takes such a folder and ``--ckpt_path last`` finds ``last*.ckpt`` folders as it finds files
  (the strategy reads the shards; nothing is read at parse time); a folder that is not a sharded checkpoint is
  still refused, and so is a sharded folder under a strategy that reads single files (single device, DDP),
  naming ``python -m lightning_optim.checkpoints consolidate`` (:func:`check_ckpt_path_for_strategy`).

Only ``lightning.pytorch`` is used (never ``pytorch_lightning``): callbacks and loggers in a recipe must
come from that namespace.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_optim import yaml_limits
from lightning_optim.callbacks.exact_resume import ExactResume
from lightning_optim.callbacks.interrupt_checkpoint import InterruptCheckpoint
from lightning_optim.checkpoints import DCP_METADATA_FILENAME, META_FILENAME, is_sharded_checkpoint
from lightning_optim.modules.classification import ClassificationModule
from lightning_optim.paths import user_file
from lightning_optim.plugins import AtomicCheckpointIO

#: modules whose presence makes TensorBoard the default logger (``pip install 'lightning-optim[tensorboard]'``)
TENSORBOARD_MODULES: tuple[str, ...] = ("tensorboard", "tensorboardX")
#: loggers whose INFO notices advertise services (Lightning's rank-zero info messages go through them)
QUIET_LOGGERS: tuple[str, ...] = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
#: the start of log messages dropped while the command runs: Lightning's tips for litlogger and litmodels
QUIET_LOG_MESSAGES: tuple[str, ...] = (
    "💡 Tip: For seamless cloud logging",
    "💡 Tip: For seamless cloud uploads",
)
#: ``(message regex, category, module regex)`` of warnings ignored while the command runs: only notices about
#: a dependency's own internals (never a deprecation of torch.export, TorchScript or ONNX, which we write)
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Lightning's own pytree helper still builds LeafSpec, which torch 2.14 deprecates
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\."),
)

#: imported so that jsonargparse resolves their classes by short name (``class_path: LeNet5``)
SHORT_NAME_MODULES = (
    "lightning_optim.models",
    "lightning_optim.layers",
    "lightning_optim.data",
    "lightning_optim.callbacks",
    "lightning_optim.modules",
)


def _import_short_name_modules() -> None:
    for name in SHORT_NAME_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:  # a part that is not there is simply not addressable
            if err.name != name:
                raise


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextmanager
def quiet_dependency_notices() -> Iterator[None]:
    """While the block runs: drop :data:`QUIET_LOG_MESSAGES` and ignore :data:`QUIET_WARNINGS`, nothing else.

    Scoped to the command (the filters are removed afterwards), matched by message text.
    """
    import lightning_utilities.core.rank_zero as rank_zero

    loggers = {logging.getLogger(name) for name in QUIET_LOGGERS}
    loggers.add(rank_zero.log)  # the logger rank_zero_info writes to
    drop = _DropMessages(QUIET_LOG_MESSAGES)
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message, category, module in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def tensorboard_available() -> bool:
    """Whether ``tensorboard`` or ``tensorboardX`` can be imported (without importing either)."""
    for name in TENSORBOARD_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # a broken or half-imported package counts as missing
            continue
    return False


def default_logger(save_dir: str | os.PathLike) -> Logger:
    """The logger of a run whose recipe names none: TensorBoard when :func:`tensorboard_available`, else CSV.

    Both write under ``save_dir`` (the run's ``default_root_dir``): ``<save_dir>/lightning_logs/version_N/``.
    """
    if tensorboard_available():
        from lightning.fabric.plugins.environments import SLURMEnvironment

        try:  # as Lightning's own default: the SLURM job id, if any, names the version
            return TensorBoardLogger(save_dir=save_dir, version=SLURMEnvironment.job_id())
        except ModuleNotFoundError:  # importable, but not installed the way Lightning checks it
            pass
    return CSVLogger(save_dir=save_dir)


#: ``ckpt_path`` values Lightning resolves itself (every other value is a file path, checked to be a regular file,
#: or a sharded checkpoint folder)
SPECIAL_CKPT_PATHS: tuple[str, ...] = ("last", "best", "hpc")
#: what ``--ckpt_path`` may name, for the message refusing anything else
CKPT_PATH_EXPECTED = (
    f"a checkpoint file, or a sharded checkpoint folder (`{META_FILENAME}` and `{DCP_METADATA_FILENAME}` inside, "
    "as ModelParallelStrategy writes it)"
)
#: strategies that read a checkpoint as one file (through their ``CheckpointIO``): a sharded folder is refused
#: under them, before anything is read
SINGLE_FILE_STRATEGIES: tuple[type[Strategy], ...] = (SingleDeviceStrategy, DDPStrategy)


def _is_remote(path: str) -> bool:
    """A URL (``s3://...``) or a model registry name (``registry:...``): Lightning reads those itself."""
    return "://" in path or path.startswith("registry:")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def last_checkpoint_folders(trainer: Trainer) -> list[str]:
    """Where the run's ``last*.ckpt`` files can be: each ``ModelCheckpoint``'s and ``InterruptCheckpoint``'s
    folder; for those that follow the logger, its folder of every version (``<save_dir>/<name>/*/checkpoints``,
    since each run of the command logs to a new ``version_N``); ``<default_root_dir>/checkpoints``."""
    folders = [os.path.join(trainer.default_root_dir, "checkpoints")]
    follows_logger = False
    for callback in trainer.callbacks:
        if isinstance(callback, (ModelCheckpoint, InterruptCheckpoint)) and callback.dirpath:
            folders.append(os.fspath(callback.dirpath))
        elif isinstance(callback, (ModelCheckpoint, InterruptCheckpoint)):
            follows_logger = True
    if follows_logger and trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        pattern = os.path.join(
            glob.escape(os.fspath(save_dir)), glob.escape(str(logger.name or "")), "*", "checkpoints"
        )
        folders.extend(sorted(glob.glob(pattern)))
    return list(dict.fromkeys(os.path.normpath(f) for f in folders))


def _checkpoint_mtime(path: str) -> float | None:
    """When the checkpoint at ``path`` was last written: a regular file's modification time; for a sharded
    checkpoint folder the newest of the folder, its ``meta.pt`` and its ``.metadata`` (a checkpoint saved again
    into the same folder rewrites those files in place, which leaves the folder's own time as it was);
    ``None`` for anything else (another folder, a FIFO, a broken link)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(info.st_mode):
        return info.st_mtime
    if not stat.S_ISDIR(info.st_mode) or not is_sharded_checkpoint(path):
        return None
    times = [info.st_mtime]
    for name in (META_FILENAME, DCP_METADATA_FILENAME):
        try:
            times.append(os.stat(os.path.join(path, name)).st_mtime)
        except OSError:  # removed in between: the folder is no checkpoint any more
            return None
    return max(times)


def find_last_checkpoint(trainer: Trainer) -> str | None:
    """The newest ``last*.ckpt`` (by modification time) in :func:`last_checkpoint_folders`, or ``None``.

    What ``--ckpt_path last`` resumes from: Lightning's own ``"last"`` looks only in the folder of this run's
    logger version, which the command makes new at every run. A ``last*.ckpt`` is a regular file or, under
    ``ModelParallelStrategy``, a sharded checkpoint folder (:func:`~lightning_optim.checkpoints.is_sharded_checkpoint`;
    its time is that of its newest ``meta.pt``/``.metadata``); other folders and FIFOs of that name are skipped.
    """
    found: list[tuple[float, str]] = []
    for folder in last_checkpoint_folders(trainer):
        for path in glob.glob(os.path.join(glob.escape(folder), "last*.ckpt")):
            mtime = _checkpoint_mtime(path)
            if mtime is not None:
                found.append((mtime, path))
    return max(found)[1] if found else None


def check_ckpt_path_for_strategy(ckpt_path: str | os.PathLike | None, strategy: Strategy) -> None:
    """Refuse a sharded checkpoint folder under a strategy that reads checkpoints as single files.

    Args:
        ckpt_path: the checkpoint to resume from or evaluate (``None``, a special name, a file: nothing to do).
        strategy: the Trainer's strategy.

    Raises:
        ValueError: ``ckpt_path`` is a sharded checkpoint folder and ``strategy`` is one of
            :data:`SINGLE_FILE_STRATEGIES` (single device, DDP), which would fail to read a folder only after
            setting up; the message names the strategy that reads it and the command that makes one file of it.
    """
    if ckpt_path is None or not isinstance(strategy, SINGLE_FILE_STRATEGIES):
        return
    text = os.fspath(ckpt_path)
    if text in SPECIAL_CKPT_PATHS or _is_remote(text) or not is_sharded_checkpoint(text):
        return
    raise ValueError(
        f"`ckpt_path` {text!r} is a sharded checkpoint folder (ModelParallelStrategy's), which "
        f"{type(strategy).__name__} cannot read: resume it under the strategy that wrote it (`trainer.strategy: "
        "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, ...}` with `model.init_args.sharding: "
        "fsdp2`), or write it as one single-device file first and give that file: "
        f"`python -m lightning_optim.checkpoints consolidate {text} model.ckpt`."
    )


def data_num_classes(datamodule: Any) -> int | None:
    """The data module's ``num_classes`` where it has one, else ``None`` (the module infers it from the model)."""
    value = getattr(datamodule, "num_classes", None)
    return value if isinstance(value, int) else None


class LightningOptimCLI(LightningCLI):
    """LightningCLI for lightning-optim recipes.

    Any ``ClassificationModule`` subclass (or other ``LightningModule`` given by ``class_path``) and any
    ``LightningDataModule`` are accepted; the data module's ``num_classes`` fills the module's at
    instantiation. The optimizer and scheduler belong to the module (``model.init_args.optimizer``), so
    Lightning's automatic ``--optimizer``/``--lr_scheduler`` arguments are off. Without a ``trainer.logger``
    (or with ``true``) the run logs with :func:`default_logger` under its ``default_root_dir``. Dependency
    notices are filtered while it runs (:func:`quiet_dependency_notices`).

    Example::

        lightning-optim fit --config examples/digits_baseline.yaml --trainer.max_epochs 3
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # YAML with alias/size/depth limits and no python tags; a --config that is a FIFO or folder refused
        # before jsonargparse would block on it or read it
        yaml_limits.guard_cli(kwargs.get("args"))
        _import_short_name_modules()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        with quiet_dependency_notices():
            super().__init__(*args, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with :func:`default_logger` where the recipe names no logger (or ``logger: true``),
        :class:`~lightning_optim.plugins.AtomicCheckpointIO` where it names no ``CheckpointIO`` plugin and, for
        ``fit``, :class:`~lightning_optim.callbacks.ExactResume` (first, so that it sets the random states back
        before the other callbacks' epoch-start hooks) and :class:`~lightning_optim.callbacks.InterruptCheckpoint`
        where the recipe has none (``--exact_resume false``, ``--interrupt_checkpoint false`` leave them out)."""
        config = self._get(self.config_init, "trainer", default={}) or {}
        logger = config.get("logger")
        if "logger" not in kwargs and (logger is None or logger is True):
            kwargs["logger"] = default_logger(config.get("default_root_dir") or os.getcwd())
        if "plugins" not in kwargs:
            plugins = _as_list(config.get("plugins"))
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if "callbacks" not in kwargs and self.subcommand in (None, "fit"):
            callbacks = _as_list(config.get("callbacks"))
            if self._get(self.config_init, "exact_resume", default=True) and not any(
                isinstance(c, ExactResume) for c in callbacks
            ):
                callbacks.insert(0, ExactResume())
            if self._get(self.config_init, "interrupt_checkpoint", default=True) and not any(
                isinstance(c, InterruptCheckpoint) for c in callbacks
            ):
                callbacks.append(InterruptCheckpoint())
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data", "model.init_args.num_classes", compute_fn=data_num_classes, apply_on="instantiate"
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After `fit`, run the test split on the final model (when the data module has one).",
        )
        parser.add_argument(
            "--interrupt_checkpoint",
            type=bool,
            default=True,
            help="`fit`: on SIGTERM/SIGINT finish the step, save last.ckpt and exit with 128 + the signal "
            "(InterruptCheckpoint, unless the recipe has one).",
        )
        parser.add_argument(
            "--exact_resume",
            type=bool,
            default=True,
            help="`fit`: keep the random states and the data position in checkpoints, so a resume is exact "
            "(ExactResume, unless the recipe has one).",
        )

    def before_fit(self) -> None:
        self._resolve_ckpt_path("fit")

    def before_validate(self) -> None:
        self._resolve_ckpt_path("validate")

    def before_test(self) -> None:
        self._resolve_ckpt_path("test")

    def before_predict(self) -> None:
        self._resolve_ckpt_path("predict")

    def _parse_ckpt_path(self) -> None:
        """Lightning's CLI reads a ``ckpt_path`` file at parse time for the hyperparameters it holds: first
        checked here to be a regular file (a FIFO would never be read, a folder is named as such), and a file
        that is not a readable checkpoint is reported naming ``ckpt_path``, before anything is set up. A sharded
        checkpoint folder (:func:`~lightning_optim.checkpoints.is_sharded_checkpoint`) is accepted as it is and
        not read here: the strategy reads its shards when the run starts (the recipe's hyperparameters stand)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        text = os.fspath(ckpt_path) if ckpt_path is not None else None
        if text is not None and text not in SPECIAL_CKPT_PATHS and not _is_remote(text):
            if is_sharded_checkpoint(text):
                return
            user_file(text, "ckpt_path", what=CKPT_PATH_EXPECTED)
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, OSError) as err:
            raise ValueError(
                f"`ckpt_path` {text!r} is not a readable checkpoint (truncated, corrupt or another format: {err}). "
                "Resume from an earlier checkpoint."
            ) from err

    def _resolve_ckpt_path(self, subcommand: str) -> None:
        """``--ckpt_path last``: the newest ``last*.ckpt`` of the run (:func:`find_last_checkpoint`), where
        Lightning would look only in this run's new logger version; then the path is checked against the
        strategy (:func:`check_ckpt_path_for_strategy`), before the run sets anything up."""
        config = self.config_init.get(subcommand) if hasattr(self.config_init, "get") else None
        if config is None:
            return
        if config.get("ckpt_path") == "last":
            found = find_last_checkpoint(self.trainer)
            if found is not None:
                rank_zero_info(f"--ckpt_path last: resuming from {found}")
                config["ckpt_path"] = found
        check_ckpt_path_for_strategy(config.get("ckpt_path"), self.trainer.strategy)

    def after_fit(self) -> None:
        if not self.config.get(self.subcommand, {}).get("test_after_fit", True) or self.datamodule is None:
            return
        if self.trainer.interrupted:
            return
        has_test = type(self.datamodule).test_dataloader is not LightningDataModule.test_dataloader
        if has_test:
            self.trainer.test(self.model, datamodule=self.datamodule)


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningOptimCLI:
    """Parse ``args``, instantiate the trainer, module and data module, and (with ``run``) run the subcommand.

    Args:
        args: command-line arguments (``None`` reads ``sys.argv``), for example
            ``["fit", "--config", "recipe.yaml"]``.
        run: run the subcommand; with ``False`` (and no subcommand in ``args``) only parse and instantiate.

    Returns:
        The CLI object, with ``trainer``, ``model``, ``datamodule`` and ``config``.
    """
    return LightningOptimCLI(ClassificationModule, LightningDataModule, args=args, run=run)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-optim`` console script (returns nothing, so the exit status is 0)."""
    build_cli(args)


if __name__ == "__main__":
    main()
