"""Bad-input catalogue part: labels (rows as in ``tests/bad_input_catalogue.py``).

Every label is checked before any epoch, held-out splits included: class indices are 1-D, whole, finite and
non-negative (in range where the number of classes is known); text labels have one canonical form per class;
a data set too small to split is refused with the counts.
"""

from __future__ import annotations

from pathlib import Path

#: 30 small images for the tensor entries
_IMAGES = "torch.rand(30, 1, 4, 4)"

ENTRIES: list[tuple[str, str, str, str]] = [
    (
        "labels",
        "fractional float labels (2.97 would be truncated to 2)",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=torch.arange(30) / 7)",
        "ValueError",
    ),
    (
        "labels",
        "a NaN label",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=torch.tensor([float('nan')] + [1.0] * 29))",
        "ValueError",
    ),
    (
        "labels",
        "-1 as the label of unknown samples",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=torch.arange(30) % 3 - 1)",
        "ValueError",
    ),
    (
        "labels",
        "labels as an (N, 1) column",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=(torch.arange(30) % 2).view(30, 1))",
        "ValueError",
    ),
    (
        "labels",
        "one-hot labels",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=torch.eye(3)[torch.arange(30) % 3])",
        "ValueError",
    ),
    (
        "labels",
        "class names instead of class indices in a tensor data module",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=['cat', 'dog'] * 15)",
        "ValueError",
    ),
    (
        "labels",
        "a bad label that falls in the held-out test split",
        f"ImageClassificationDataModule(images={_IMAGES}, labels=LABELS_BAD_IN_TEST)",
        "ValueError",
    ),
    (
        "labels",
        "an MNIST label file holding the label 10",
        "ImageClassificationDataModule('mnist', data_dir=MNIST_LABEL_10).setup('fit')",
        "ValueError",
    ),
    (
        "labels",
        "an empty tensor data set",
        "ImageClassificationDataModule(images=torch.rand(0, 1, 4, 4), labels=torch.zeros(0, dtype=torch.long))",
        "ValueError",
    ),
    (
        "labels",
        "a one-sample tensor data set",
        "ImageClassificationDataModule(images=torch.rand(1, 1, 4, 4), labels=torch.zeros(1, dtype=torch.long))",
        "ValueError",
    ),
    (
        "labels",
        "NaN cleaning leaves a split empty",
        "ImageClassificationDataModule(images=MOSTLY_NAN, labels=torch.arange(10) % 2).setup('fit')",
        "ValueError",
    ),
    (
        "labels",
        "an image folder of two images (nothing left for validation)",
        "ImageClassificationDataModule(image_folder=TWO_IMAGES).setup('fit')",
        "ValueError",
    ),
    (
        "labels",
        "a fractional class index in an image list",
        "scan_images([(ONE_PNG, 2.97)])",
        "ValueError",
    ),
    (
        "labels",
        "NaN written as a text label",
        "TextClassificationDataModule(NAN_LABEL_CSV).setup('fit')",
        "ValueError",
    ),
    (
        "labels",
        "a JSON object as a text label",
        "TextClassificationDataModule(OBJECT_LABEL_JSONL).setup('fit')",
        "ValueError",
    ),
    (
        "labels",
        "a validation label never seen in training",
        "TextClassificationDataModule(GOOD_CSV, val_file=UNSEEN_LABEL_CSV).setup('fit')",
        "ValueError",
    ),
    (
        "labels",
        "a text file with one usable row and no validation file",
        "TextClassificationDataModule(ONE_ROW_CSV).setup('fit')",
        "ValueError",
    ),
]

MUST_NAME: dict[str, str] = {
    "fractional float labels (2.97 would be truncated to 2)": "not whole numbers",
    "a NaN label": "NaN/inf label",
    "-1 as the label of unknown samples": "negative label",
    "labels as an (N, 1) column": "`labels.squeeze(1)`",
    "one-hot labels": "`labels.argmax(1)`",
    "a bad label that falls in the held-out test split": "not whole numbers",
    "an MNIST label file holding the label 10": "t10k-labels-idx1-ubyte",
    "an empty tensor data set": "give at least 3 samples",
    "a one-sample tensor data set": "val and test splits empty",
    "NaN cleaning leaves a split empty": "`nonfinite`='drop'",
    "an image folder of two images (nothing left for validation)": "`val_split`",
    "a fractional class index in an image list": "2.97",
    "NaN written as a text label": "line 3",
    "a JSON object as a text label": "a label is a string or a number",
    "a validation label never seen in training": "`label_column`",
    "a text file with one usable row and no validation file": "`val_file`",
}


def fixtures(tmp: Path) -> dict:
    """The files and tensors the entries use, written under ``tmp``."""
    import numpy as np
    import torch

    from lightning_optim.data.image_datamodule import seeded_holdout
    from tests.data.conftest import write_image
    from tests.data.idx_files import idx_bytes, write_mnist

    root = tmp / "labels"
    mnist = root / "mnist_label_10"
    raw = write_mnist(mnist)
    labels = (np.arange(20) % 10).astype(np.uint8)
    labels[3] = 10
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    two = root / "two_images" / "a"
    two.mkdir(parents=True)
    write_image(two / "x.png", seed=1)
    write_image(two / "y.png", seed=2)
    one_png = write_image(root / "one.png", seed=3)
    texts = {
        "nan_label.csv": "text,label\ngood,1\nbad,NaN\nfine,1\n",
        "object_label.jsonl": '{"text": "good", "label": {"stars": 5}}\n{"text": "bad", "label": 0}\n',
        "unseen_label.csv": "text,label\nso so,neutral\n",
        "one_row.csv": "text,label\nhello world,1\n",
    }
    for name, content in texts.items():
        (root / name).write_text(content, encoding="utf-8")
    bad_in_test = (torch.arange(30) % 3).double()
    bad_in_test[seeded_holdout(30, 0.2, 0)[1][0]] = 2.5
    mostly_nan = torch.rand(10, 1, 4, 4)
    mostly_nan[:9] = float("nan")
    return {
        "MNIST_LABEL_10": str(mnist),
        "TWO_IMAGES": str(root / "two_images"),
        "ONE_PNG": str(one_png),
        "NAN_LABEL_CSV": str(root / "nan_label.csv"),
        "OBJECT_LABEL_JSONL": str(root / "object_label.jsonl"),
        "UNSEEN_LABEL_CSV": str(root / "unseen_label.csv"),
        "ONE_ROW_CSV": str(root / "one_row.csv"),
        "LABELS_BAD_IN_TEST": bad_in_test,
        "MOSTLY_NAN": mostly_nan,
    }
