"""The ``lightning-optim`` command: Lightning's CLI with our classes addressable by short names.

``lightning-optim fit|validate|test|predict --config recipe.yaml``. The data module's ``num_classes`` is
linked to the module's, and ``fit`` runs the test split afterwards (``--test_after_fit false`` to skip).
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


class LightningOptimCLI(LightningCLI):
    """LightningCLI for lightning-optim recipes.

    Any ``ClassificationModule`` subclass and any ``LightningDataModule`` are accepted by class path; the
    data module's ``num_classes`` (where it has one) fills the module's at instantiation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _import_short_name_modules()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After `fit`, run the test split on the final model."
        )

    def after_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("test_after_fit", True) and self.datamodule is not None:
            has_test = type(self.datamodule).test_dataloader is not LightningDataModule.test_dataloader
            if has_test:
                self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-optim`` console script."""
    LightningOptimCLI(
        ClassificationModule,
        LightningDataModule,
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
