"""lightning-optim: callbacks, modules and data modules for PyTorch Lightning that make training faster
and models smaller.

The names most recipes need are importable from the top level::

    from lightning_optim import ClassificationModule, ImageClassificationDataModule

Callbacks live in :mod:`lightning_optim.callbacks`, models in :mod:`lightning_optim.models`, layers in
:mod:`lightning_optim.layers`, and the ``lightning-optim`` command in :mod:`lightning_optim.cli`.
"""

from lightning_optim.data import ImageClassificationDataModule, TextClassificationDataModule
from lightning_optim.modules import ClassificationModule, StepContext, combine_losses

__version__ = "0.1.0"

__all__ = [
    "ClassificationModule",
    "ImageClassificationDataModule",
    "StepContext",
    "TextClassificationDataModule",
    "__version__",
    "combine_losses",
]
