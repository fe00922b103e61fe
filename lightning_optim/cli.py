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
  :data:`QUIET_WARNINGS`); deprecation warnings of the formats the package writes are never filtered.

Only ``lightning.pytorch`` is used (never ``pytorch_lightning``): callbacks and loggers in a recipe must
come from that namespace.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_optim.modules.classification import ClassificationModule

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
        _import_short_name_modules()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        with quiet_dependency_notices():
            super().__init__(*args, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with :func:`default_logger` where the recipe names no logger (or ``logger: true``)."""
        config = self._get(self.config_init, "trainer", default={}) or {}
        logger = config.get("logger")
        if "logger" not in kwargs and (logger is None or logger is True):
            kwargs["logger"] = default_logger(config.get("default_root_dir") or os.getcwd())
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
