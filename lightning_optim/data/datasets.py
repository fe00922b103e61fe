"""In-memory image datasets and loaders for named datasets (digits, MNIST, FashionMNIST, CIFAR-10)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_optim.checks import check_choice
from lightning_optim.data.labels import check_class_indices


@dataclass
class ImageSplit:
    """uint8 images ``(N, C, H, W)`` and int64 labels."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> ImageSplit:
        return ImageSplit(self.images[index], self.labels[index])


class InMemoryImageDataset(Dataset):
    """A dataset over uint8 image tensors that hands out whole batches at once.

    ``__getitems__`` lets the DataLoader fetch a batch with one indexing operation instead of one
    ``__getitem__`` per sample; use it with :func:`batched_collate`. Samples are ``(image, label)`` or,
    with ``return_index=True``, ``(image, label, index)`` (for caches keyed by sample). A ``transform``
    (for example :func:`~lightning_optim.data.augmentation.build_sample_augmentation`) is applied to
    every image on its own, in the DataLoader workers.
    """

    def __init__(
        self, split: ImageSplit, return_index: bool = False, transform: Callable | None = None
    ) -> None:
        self.split = split
        self.return_index = return_index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        image = self.split.images[i]
        if self.transform is not None:
            image = self.transform(image)
        item = (image, self.split.labels[i])
        return (*item, torch.tensor(i)) if self.return_index else item

    def __getitems__(self, indices: Sequence[int]):
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.split.images[index]
        if self.transform is not None:  # the per-sample path: one transform call (own random draw) per image
            images = torch.stack([self.transform(img) for img in images])
        item = (images, self.split.labels[index])
        return (*item, index) if self.return_index else item


def batched_collate(batch):
    """Collate for :class:`InMemoryImageDataset`: batches arrive already stacked."""
    return batch


#: dataset name -> (channels, image size, number of classes)
DATASETS: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 10),
    "mnist": (1, 28, 10),
    "fashionmnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
}


def check_dataset_name(name: str) -> str:
    """Normalize and validate a dataset name.

    Raises:
        ValueError: for a name outside :data:`DATASETS`.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:  # the message shows the name as given
        check_choice("dataset", name, sorted(DATASETS), hint=" (or give `image_folder`)")
    return key


def load_digits() -> tuple[ImageSplit, ImageSplit]:
    """The 1,797 8x8 handwritten digits bundled with the package (UCI ML digits, as in scikit-learn).

    Pixel values 0-16 are scaled to 0-255. A fixed 80/20 train/test split (seed 0) that never changes.
    """
    with resources.files("lightning_optim.data").joinpath("assets/digits8x8.npz").open("rb") as fh:
        data = np.load(fh)
        images = torch.from_numpy(
            (data["images"].astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
        )
        labels = torch.from_numpy(data["labels"].astype(np.int64))
    images = images.unsqueeze(1)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = len(labels) // 5
    test, train = perm[:n_test], perm[n_test:]
    return ImageSplit(images[train], labels[train]), ImageSplit(images[test], labels[test])


def _idx_split(key: str, root: str, train: bool) -> ImageSplit:
    """A split of MNIST or FashionMNIST read by our bounded IDX reader (:mod:`lightning_optim.data.idx`)."""
    from lightning_optim.data.idx import IDX_DATASETS, idx_files, read_idx_split

    files = idx_files(key, root, train)
    if files is None:
        folder = os.path.join(root, IDX_DATASETS[key], "raw")
        raise FileNotFoundError(
            f"Dataset {key!r} not found under `data_dir`={root!r} and `download` is False. Set `download: true` "
            f"(needs internet) or point `data_dir` at a folder holding it (for {IDX_DATASETS[key]}: "
            f"<data_dir>/{IDX_DATASETS[key]}/raw/ with the four IDX files, plain or .gz); looked in {folder!r}."
        )
    images, labels = read_idx_split(*files, option="data_dir", name=IDX_DATASETS[key])
    where = f" (file {files[1]!r})"
    labels = check_class_indices(labels, num_classes=DATASETS[key][2], option="data_dir", where=where)
    return ImageSplit(images.contiguous(), labels)


def _torchvision_split(name: str, root: str, train: bool, download: bool) -> ImageSplit:
    import torchvision.datasets as tvd

    from lightning_optim.data.idx import IDX_DATASETS, idx_files

    if name in IDX_DATASETS and (not download or idx_files(name, root, train) is not None):
        return _idx_split(name, root, train)  # files present: never torchvision's reader
    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        ds = cls(root=root, train=train, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"Dataset {name!r} not found under `data_dir`={root!r} and `download` is False. Set `download: true` "
            f"(needs internet) or point `data_dir` at a folder holding it (for MNIST: <data_dir>/MNIST/raw/). "
            f"torchvision said: {err}"
        ) from err
    if name in IDX_DATASETS:  # downloaded now: read by our reader like any other time
        return _idx_split(name, root, train)
    data = ds.data
    images = torch.as_tensor(data) if not isinstance(data, Tensor) else data
    channels, size, num_classes = DATASETS[name]
    if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, channels):
        raise ValueError(
            f"`data_dir`: dataset {name!r} under {root!r} holds images of shape {tuple(images.shape[1:])}, "
            f"expected {(size, size, channels)}; download it again or replace it."
        )
    images = images.permute(0, 3, 1, 2)
    labels = check_class_indices(ds.targets, num_classes=num_classes, option="data_dir", where=f" ({name})")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"`data_dir`: dataset {name!r} under {root!r} holds {images.shape[0]} images but {labels.shape[0]} "
            "labels; download it again or replace it."
        )
    return ImageSplit(images.contiguous(), labels)


def load_image_folder(
    root: str | os.PathLike, mode: str = "RGB", size: int | tuple[int, int] | None = None
) -> tuple[ImageSplit, ImageSplit | None, list[str]]:
    """Load an ImageFolder layout into uint8 splits through the cleaning scan.

    ``root/<class>/<image>`` gives one training split; ``root/train/<class>/...`` with
    ``root/test/<class>/...`` gives a training and a test split (the test split's labels must be among the
    training classes, others are dropped and reported). Returns ``(train, test or None, class names)``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no images; no image survives the scan; images of different sizes without ``size``.
    """
    from lightning_optim.data.cleaning.images import scan_images

    base = Path(root)
    if (base / "train").is_dir() and (base / "test").is_dir():
        train_scan = scan_images(base / "train", mode=mode, size=size)
        test_scan = scan_images(base / "test", mode=mode, size=size, classes=train_scan.classes)
    else:
        train_scan, test_scan = scan_images(base, mode=mode, size=size), None
    for scan, what in ((train_scan, "train"), (test_scan, "test")):
        if scan is not None and len(scan) == 0:
            raise ValueError(
                f"`image_folder` {os.fspath(root)!r}: no {what} image survived cleaning: {scan.summary}."
            )
    train = ImageSplit(train_scan.images, train_scan.labels)
    test = ImageSplit(test_scan.images, test_scan.labels) if test_scan is not None else None
    return train, test, train_scan.classes


def load_named_dataset(name: str, data_dir: str, download: bool) -> tuple[ImageSplit, ImageSplit]:
    """Return ``(train, test)`` uint8 splits of a named dataset."""
    key = check_dataset_name(name)
    if key == "digits":
        return load_digits()
    root = os.fspath(data_dir)
    return _torchvision_split(key, root, True, download), _torchvision_split(key, root, False, download)
