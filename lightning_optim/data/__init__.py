"""Data modules with cleaning, augmentation and normalization."""

from lightning_optim.data.datasets import DATASETS, ImageSplit, InMemoryImageDataset, load_digits, load_named_dataset
from lightning_optim.data.image_datamodule import ImageClassificationDataModule
from lightning_optim.data.normalization import NORMALIZATIONS, fit_normalization, normalize

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "ImageClassificationDataModule",
    "ImageSplit",
    "InMemoryImageDataset",
    "fit_normalization",
    "load_digits",
    "load_named_dataset",
    "normalize",
]
