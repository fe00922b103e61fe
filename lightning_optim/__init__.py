"""lightning-optim: callbacks, modules and data modules for PyTorch Lightning that make training faster
and models smaller."""

from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.modules import ClassificationModule, StepContext

__version__ = "0.1.0"

__all__ = ["ClassificationModule", "ImageClassificationDataModule", "StepContext", "__version__"]
