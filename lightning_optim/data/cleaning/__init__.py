"""Cleaning of text, image files and tensors; every rule usable alone and through the data modules."""

from lightning_optim.data.cleaning.images import (
    DROP_REASONS,
    IMAGE_EXTENSIONS,
    IMAGE_MODES,
    ImageScanResult,
    list_image_folder,
    scan_images,
)
from lightning_optim.data.cleaning.tensors import (
    NONFINITE_POLICIES,
    TensorCleaningReport,
    clean_nonfinite_rows,
    nonfinite_rows,
)
from lightning_optim.data.cleaning.text import (
    ENGLISH_STOPWORDS,
    TextCleaner,
    collapse_whitespace,
    lowercase,
    normalize_unicode,
    remove_punctuation,
    remove_stopwords,
    strip_emails,
    strip_html,
    strip_urls,
    tokenize,
)

__all__ = [
    "DROP_REASONS",
    "ENGLISH_STOPWORDS",
    "IMAGE_EXTENSIONS",
    "IMAGE_MODES",
    "NONFINITE_POLICIES",
    "ImageScanResult",
    "TensorCleaningReport",
    "TextCleaner",
    "clean_nonfinite_rows",
    "collapse_whitespace",
    "list_image_folder",
    "lowercase",
    "nonfinite_rows",
    "normalize_unicode",
    "remove_punctuation",
    "remove_stopwords",
    "scan_images",
    "strip_emails",
    "strip_html",
    "strip_urls",
    "tokenize",
]
