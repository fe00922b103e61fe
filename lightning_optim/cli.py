"""The ``lightning-optim`` command: Lightning's CLI with our classes addressable by short names.

``lightning-optim fit|validate|test|predict --config recipe.yaml``:

- every class of :mod:`lightning_optim` (models, layers, data modules, callbacks, modules) is addressable
  by its short name (``class_path: ConvNet3``), as are Lightning's and torch's own by full class path;
- the data module's ``num_classes`` (where it has one) fills the module's ``num_classes`` at
  instantiation (and :class:`~lightning_optim.modules.ClassificationModule` checks it against the model);
- ``fit`` runs the test split on the final model afterwards (``--test_after_fit false`` to skip);
- the configuration is saved as ``config.yaml`` in the log directory and reloads as it is:
  ``lightning-optim fit --config <log_dir>/config.yaml`` trains again. ``--print_config`` prints the same.

Only ``lightning.pytorch`` is used (never ``pytorch_lightning``): callbacks and loggers in a recipe must
come from that namespace.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_optim.modules.classification import ClassificationModule

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


def data_num_classes(datamodule: Any) -> int | None:
    """The data module's ``num_classes`` where it has one, else ``None`` (the module infers it from the model)."""
    value = getattr(datamodule, "num_classes", None)
    return value if isinstance(value, int) else None


class LightningOptimCLI(LightningCLI):
    """LightningCLI for lightning-optim recipes.

    Any ``ClassificationModule`` subclass (or other ``LightningModule`` given by ``class_path``) and any
    ``LightningDataModule`` are accepted; the data module's ``num_classes`` fills the module's at
    instantiation. The optimizer and scheduler belong to the module (``model.init_args.optimizer``), so
    Lightning's automatic ``--optimizer``/``--lr_scheduler`` arguments are off.

    Example::

        lightning-optim fit --config examples/digits_baseline.yaml --trainer.max_epochs 3
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _import_short_name_modules()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, **kwargs)

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
