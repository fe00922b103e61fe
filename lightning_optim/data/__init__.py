"""Data modules with cleaning, augmentation and normalization."""

from lightning_optim.data.augmentation import (
    AUGMENTATION_PRESETS,
    AUGMENTATION_STEPS,
    BatchAugmentation,
    build_batch_augmentation,
    build_sample_augmentation,
    parse_augmentation,
)
from lightning_optim.data.cleaning import TextCleaner, clean_nonfinite_rows, scan_images
from lightning_optim.data.datasets import (
    DATASETS,
    ImageSplit,
    InMemoryImageDataset,
    load_digits,
    load_image_folder,
    load_named_dataset,
)
from lightning_optim.data.idx import read_idx
from lightning_optim.data.image_datamodule import ImageClassificationDataModule
from lightning_optim.data.labels import canonical_label, check_class_indices
from lightning_optim.data.normalization import NORMALIZATIONS, fit_normalization, normalize
from lightning_optim.data.text_datamodule import TextClassificationDataModule, Vocabulary

__all__ = [
    "AUGMENTATION_PRESETS",
    "AUGMENTATION_STEPS",
    "DATASETS",
    "NORMALIZATIONS",
    "BatchAugmentation",
    "ImageClassificationDataModule",
    "ImageSplit",
    "InMemoryImageDataset",
    "TextClassificationDataModule",
    "TextCleaner",
    "Vocabulary",
    "build_batch_augmentation",
    "build_sample_augmentation",
    "canonical_label",
    "check_class_indices",
    "clean_nonfinite_rows",
    "fit_normalization",
    "load_digits",
    "load_image_folder",
    "load_named_dataset",
    "normalize",
    "parse_augmentation",
    "read_idx",
    "scan_images",
]
