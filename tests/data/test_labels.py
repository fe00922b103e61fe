"""Labels checked before any epoch: class indices of tensors and named data sets, canonical text labels, and
data sets too small to split."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_optim.data import ImageClassificationDataModule, scan_images
from lightning_optim.data.cleaning.tensors import nonfinite_rows
from lightning_optim.data.labels import canonical_label, check_class_indices, split_sizes
from tests.data.conftest import write_image

X = torch.rand(30, 1, 4, 4)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            torch.tensor([0.0, 2.97, 1.0]),
            r"1 label\(s\) that are not whole numbers, the first at index 1 \(2.97\)",
        ),
        (torch.tensor([0.0, float("nan"), 1.0]), r"1 NaN/inf label\(s\), the first at index 1 \(nan\)"),
        (torch.tensor([0.0, 1.0, float("inf")]), r"NaN/inf label\(s\), the first at index 2 \(inf\)"),
        (torch.tensor([0, -1, 1]), r"1 negative label\(s\), the first at index 1 \(-1\)"),
        (
            torch.zeros(3, 1, dtype=torch.long),
            r"shape \(3, 1\): class indices are 1-D, shape \(3,\): use `labels.squeeze\(1\)`",
        ),
        (torch.eye(3), r"shape \(3, 3\): .*one-hot or per-class scores of 3 classes .*`labels.argmax\(1\)`"),
        (torch.tensor(2), r"shape \(\): give one label per sample"),
        (
            torch.tensor([1e12, 0.0], dtype=torch.float64),
            r"out of range, the first at index 0 \(1000000000000\); class indices must be below",
        ),
        (torch.tensor([0j, 1j]), r"must be class indices \(an integer tensor\); got dtype torch.complex64"),
        (["cat", "dog"], r"must be class indices, one number per sample"),
    ],
)
def test_bad_class_indices_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        check_class_indices(labels)


def test_good_class_indices_become_int64():
    assert check_class_indices(torch.tensor([3.0, 0.0, 1.0])).tolist() == [3, 0, 1]
    assert check_class_indices(torch.tensor([True, False])).tolist() == [1, 0]
    assert check_class_indices(np.array([2, 0], dtype=np.uint8)).dtype == torch.long
    assert check_class_indices(torch.tensor([7], dtype=torch.uint16)).tolist() == [7]
    with pytest.raises(ValueError, match=r"index 1 \(10\); class indices must be 0..9 \(10 classes\)"):
        check_class_indices(torch.tensor([9, 10]), num_classes=10)


def test_tensor_labels_are_checked_at_construction_over_every_split():
    # the one bad label falls in the held-out test split: still refused, before any split or epoch
    labels = torch.arange(30) % 3
    from lightning_optim.data.image_datamodule import seeded_holdout

    _, test = seeded_holdout(30, 0.2, 0)
    for bad, message in ((2.97, "not whole numbers"), (-2, "negative"), (float("nan"), "NaN")):
        y = labels.double()
        y[test[0]] = bad
        with pytest.raises(ValueError, match=message):
            ImageClassificationDataModule(images=X, labels=y)
    dm = ImageClassificationDataModule(images=X, labels=labels.double())  # 3.0 is class 3
    dm.setup("fit")
    assert dm.train_split.labels.dtype == torch.long and dm.num_classes == 3
    with pytest.raises(ValueError, match=r"`labels` has shape \(30, 1\).*`labels.squeeze\(1\)`"):
        ImageClassificationDataModule(images=X, labels=labels.view(-1, 1))


def test_one_based_labels_warn_that_class_0_is_empty():
    with pytest.warns(
        UserWarning, match=r"leave 1 of the 4 classes 0..3 without a sample, e.g. \[0\] \(1-based"
    ):
        ImageClassificationDataModule(images=X, labels=torch.arange(30) % 3 + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageClassificationDataModule(images=X, labels=torch.arange(30) % 3)


@pytest.mark.parametrize(
    ("n", "empty"), [(0, "train, val and test splits"), (1, "val and test splits"), (2, "val split")]
)
def test_tensor_data_too_small_to_split_is_refused_at_construction(n, empty):
    with pytest.raises(
        ValueError, match=rf"Too few samples to split: `images` and `labels` hold {n} sample.*{empty} empty"
    ):
        ImageClassificationDataModule(images=torch.rand(n, 1, 4, 4), labels=torch.zeros(n, dtype=torch.long))
    assert split_sizes(3, 0.1) == {"train": 1, "val": 1, "test": 1}
    ImageClassificationDataModule(
        images=torch.rand(3, 1, 4, 4), labels=torch.zeros(3, dtype=torch.long)
    ).setup("fit")


def test_a_split_emptied_by_cleaning_is_refused_at_setup():
    images = torch.rand(10, 1, 4, 4)
    images[:9] = float("nan")  # one clean row: cleaning leaves two of the splits empty
    dm = ImageClassificationDataModule(images=images, labels=torch.arange(10) % 2)
    with pytest.raises(
        ValueError, match=r"Too few samples to split: `images` hold 10 sample\(s\), 9 dropped for NaN/inf"
    ):
        dm.setup("fit")
    assert nonfinite_rows(torch.zeros(0, 3)).shape == (0,)  # no reshape error on an empty split


def test_image_folder_too_small_to_split(tmp_path):
    (tmp_path / "a").mkdir()
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "y.png", seed=1)
    dm = ImageClassificationDataModule(image_folder=str(tmp_path))
    with pytest.raises(
        ValueError, match=r"`image_folder` .* holds 2 usable image\(s\), which leaves the val split empty"
    ):
        dm.setup("fit")


def test_list_labels_of_the_image_scan_are_whole_numbers(tmp_path):
    path = write_image(tmp_path / "x.png")
    assert scan_images([(path, 1.0)], classes=["a", "b"]).labels.tolist() == [1]
    with pytest.raises(ValueError, match=r"Label 2.97 of .*x.png' is not a class index"):
        scan_images([(path, 2.97)])
    with pytest.raises(ValueError, match="is a bool"):
        scan_images([(path, True)])


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1", "1"),
        ("1.0", "1"),
        (" 1", "1"),
        ("+1", "1"),
        ("01", "1"),
        ("1e0", "1"),
        (1, "1"),
        (1.0, "1"),
        ("-0", "0"),
        ("2.50", "2.5"),
        ("1e2", "100"),
        ("  very   good ", "very good"),
        ("Pos", "Pos"),
        ("", None),
        ("   ", None),
        (None, None),
        (True, "true"),
        ("12345678901234567890123", "12345678901234567890123"),  # exact: never through a float
    ],
)
def test_canonical_label(raw, canonical):
    assert canonical_label(raw) == canonical


@pytest.mark.parametrize("raw", ["NaN", "nan", "inf", "-Infinity", float("nan"), float("inf")])
def test_nan_and_infinite_text_labels_are_refused(raw):
    with pytest.raises(ValueError, match="is not a class: NaN and infinite numbers are refused"):
        canonical_label(raw, " ('t.csv' line 3)")


def test_lists_are_not_labels():
    with pytest.raises(ValueError, match="a label is a string or a number"):
        canonical_label([1, 2])
