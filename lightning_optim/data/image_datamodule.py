"""Image classification data module over named datasets, image folders or in-memory tensors."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_optim.checks import check_choice
from lightning_optim.data.augmentation import (
    BatchAugmentation,
    augmented_size,
    build_batch_augmentation,
    build_sample_augmentation,
    parse_augmentation,
)
from lightning_optim.data.cleaning.images import IMAGE_MODES, check_image_mode, list_image_folder
from lightning_optim.data.cleaning.tensors import (
    check_nonfinite_policy,
    clean_nonfinite_rows,
    column_fill_values,
)
from lightning_optim.data.datasets import (
    DATASETS,
    ImageSplit,
    InMemoryImageDataset,
    batched_collate,
    check_dataset_name,
    load_image_folder,
    load_named_dataset,
)
from lightning_optim.data.labels import (
    check_class_indices,
    check_split_sizes,
    holdout_count,
    split_sizes,
    warn_missing_classes,
)
from lightning_optim.data.normalization import check_normalization, fit_normalization, normalize
from lightning_optim.data.pixels import check_image_tensor, pixel_scale
from lightning_optim.data.samplers import EpochSeededRandomSampler

log = logging.getLogger(__name__)

#: where augmentation runs: on the device over whole batches, or per sample in the DataLoader workers
AUGMENTATION_MODES: tuple[str, ...] = ("batch", "sample")
#: allowed ``channels``: ``None`` keeps the images as they are, 1 makes colour images grey, 3 repeats grey ones
CHANNEL_CHOICES: tuple[int | None, ...] = (None, 1, 3)
#: ITU-R BT.601 luma weights of R, G and B (as PIL's ``convert("L")`` and torchvision's ``rgb_to_grayscale``)
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: ``deploy_metadata()["channels_from"]``: how raw images become model inputs, where ``channels`` converted them
CHANNELS_FROM: dict[tuple[int, int], str] = {
    (1, 3): "grey repeated to 3",
    (3, 1): "colour to grey by luma (0.299 R + 0.587 G + 0.114 B)",
}


def check_channels(channels: int | None) -> int | None:
    """Validate ``channels`` (``None``, 1 or 3).

    Raises:
        ValueError: ``Unknown `channels` ...; allowed: [None, 1, 3].`` (a bool is refused too: ``True == 1``).
    """
    value = str(channels) if isinstance(channels, bool) else channels
    check_choice("channels", value, CHANNEL_CHOICES)
    return None if value is None else int(value)


def grey_by_luma(images: Tensor, chunk: int = 4096) -> Tensor:
    """``(N, 3, H, W)`` colour images -> ``(N, 1, H, W)`` grey ones: ``0.299 R + 0.587 G + 0.114 B``.

    uint8 and uint16 keep their dtype (rounded), float keeps its dtype. Converted ``chunk`` images at a time, so
    that no float copy of the whole data is made.
    """
    dtype = images.dtype if images.is_floating_point() else torch.float32
    weights = torch.tensor(LUMA_WEIGHTS, dtype=dtype).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=images.dtype)
    for i in range(0, images.shape[0], chunk):
        grey = (images[i : i + chunk].to(dtype) * weights).sum(1, keepdim=True)
        if not images.is_floating_point():
            grey = grey.round_().clamp_(0, pixel_scale(images.dtype))
        out[i : i + chunk] = grey.to(images.dtype)
    return out


def check_tensor_data(images: Any, labels: Any, val_split: float) -> tuple[Tensor, Tensor]:
    """In-memory ``images`` and ``labels`` as the data module stores them, checked at construction.

    Labels: :func:`~lightning_optim.data.labels.check_class_indices` (1-D whole non-negative numbers, no
    NaN/inf; a warning when a class below the largest label has no sample). Images: ``(N, C, H, W)`` or
    ``(N, F)`` with one label each, no empty axis, stored per the dtype rule of
    :mod:`lightning_optim.data.pixels`. Enough samples for the training, validation and test splits.

    Raises:
        ValueError: any of those checks, naming the option, the shape or value found and the fix.
    """
    if not isinstance(images, Tensor):
        try:
            images = torch.as_tensor(images)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"`images` must be a tensor, got {type(images).__name__} ({err}).") from None
    labels = check_class_indices(labels, option="labels")
    if images.ndim < 2 or images.ndim == 3 or images.ndim > 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`images` must be (N, C, H, W) images or (N, F) features with one label each; got images "
            f"{tuple(images.shape)}, labels {tuple(labels.shape)}"
            + (": add the channel axis, `images.unsqueeze(1)`." if images.ndim == 3 else ".")
        )
    if images.shape[0] and any(int(d) == 0 for d in images.shape[1:]):
        raise ValueError(
            f"`images` of shape {tuple(images.shape)} hold no value per sample (an axis of size 0)."
        )
    images = check_image_tensor(images, option="images")
    n = int(labels.shape[0])
    check_split_sizes(
        split_sizes(n, val_split),
        f"`images` and `labels` hold {n} sample(s), of which 20% are held out for testing and `val_split`="
        f"{val_split} of the rest for validation",
        "give at least 3 samples",
    )
    warn_missing_classes(labels, option="labels")
    return images, labels


def seeded_holdout(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(kept, held_out)`` index tensors: a seeded random ``fraction`` of ``range(n)`` (at least one) held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_out = holdout_count(n, fraction)
    return perm[n_out:], perm[:n_out]


class ImageClassificationDataModule(pl.LightningDataModule):
    """Image classification data kept in memory as uint8, batched, normalized and augmented on the device.

    Images stay uint8 on the host (a quarter of float32; 16-bit images uint16, float tensors as given) and are
    fetched a whole batch per indexing operation. After transfer to the model's device,
    ``on_after_batch_transfer`` converts them to float in ``[0, 1]`` (the scaling rule of their dtype),
    applies the batched augmentation (training only, each sample with its own random parameters) and the
    normalization fitted on the training split. With ``augmentation_mode="sample"`` the same augmentation runs
    instead as ``torchvision.transforms.v2`` per image in the DataLoader workers.

    Data comes from one of three sources:

    * a named dataset (``dataset``): ``"digits"`` (embedded 8x8 digits, no download), ``"mnist"``,
      ``"fashionmnist"`` (read by our bounded IDX reader, :mod:`lightning_optim.data.idx`), ``"cifar10"`` (read
      by torchvision) from ``data_dir``;
    * an image folder (``image_folder``) in ImageFolder layout, cleaned by
      :func:`~lightning_optim.data.cleaning.images.scan_images` (corrupt, truncated, zero-byte and duplicate
      files dropped and reported), converted to ``image_mode`` and resized to ``image_size``;
    * in-memory tensors (``images`` and ``labels``): images ``(N, C, H, W)`` or a feature table ``(N, F)``
      (normalized per feature, not augmented); float rows holding NaN/inf are cleaned per ``nonfinite``.

    ``channels`` fits the images of any source to the model's input channels: ``channels=3`` repeats grey
    images to 3 channels (for torchvision and timm models built for RGB), ``channels=1`` turns colour images
    grey by luma. Grey images stay one channel on the host, through the transfer and the augmentation; they
    are repeated on the device, in the normalization of each batch (one kernel writes the 3 channels).
    Colour images are made grey once, on the stored tensors at ``setup``. The normalization statistics and
    :meth:`deploy_metadata` have one value per model input channel.

    Args:
        dataset: a name from :data:`~lightning_optim.data.datasets.DATASETS`.
        data_dir: root folder of torchvision datasets (MNIST reads ``<data_dir>/MNIST/raw/``).
        download: let torchvision download a missing dataset (needs internet).
        val_split: fraction of the training split held out for validation (seeded), in ``(0, 1)``.
        batch_size: training batch size (Lightning's ``BatchSizeFinder`` tunes it).
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        normalization: ``"zscore"``, ``"minmax"`` ([0, 1]), ``"minmax_symmetric"`` ([-1, 1]) or ``"none"``
            (then integer inputs are only scaled to [0, 1], by the rule of their dtype). Fitted on the training
            split only.
        augmentation: a preset (``none``, ``light``, ``standard``, ``strong``) or a list of steps (see
            :mod:`lightning_optim.data.augmentation`).
        augmentation_mode: ``"batch"`` (on the device, whole batches) or ``"sample"`` (v2 per image in the
            DataLoader workers).
        num_workers: DataLoader workers.
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        seed: seed of the train/val split and of the batched augmentation's generator (plus the global
            rank under DDP, so that ranks draw different parameters).
        return_index: batches carry the dataset index of each sample as a third element.
        limit_train_samples: keep only the first N training samples (after the split), for quick runs.
        image_folder: an ImageFolder-layout folder (``<folder>/<class>/<image>``, or ``<folder>/train`` and
            ``<folder>/test`` each in that layout); replaces ``dataset``.
        image_size: resize the images to this size (int or ``[height, width]``): folder images when they
            are read (needed when they differ in size); the images of other sources on the device, batch by
            batch (a ``resize`` step before the augmentation), for models that need larger images.
        image_mode: ``"L"``, ``"RGB"`` or ``"RGBA"``: the mode folder images are converted to.
        images: with ``labels``, in-memory data instead of a named dataset: ``(N, C, H, W)`` images or an
            ``(N, F)`` feature table. Each dtype has one scaling rule (:mod:`lightning_optim.data.pixels`): uint8
            ``/ 255``, uint16 ``/ 65535``, other integer dtypes must hold ``0..255`` (stored as uint8, ``/ 255``;
            any other value is refused), float as it is.
        labels: class indices for ``images``, checked at construction over every split
            (:func:`~lightning_optim.data.labels.check_class_indices`): 1-D, whole numbers (``3.0`` is 3, ``2.97``
            is refused), no NaN/inf, non-negative; the number of classes is the largest label + 1 (a warning
            says when a class below it has no sample).
        nonfinite: what to do with in-memory rows holding NaN/inf: ``"drop"``, ``"mean"``, ``"median"``,
            ``"zero"`` (imputed with training-split statistics), ``"error"`` or ``"keep"``.
        channels: the model's input channels: ``None`` (the images as they are), ``3`` (grey images
            repeated to 3 channels, colour ones kept) or ``1`` (colour images made grey by luma,
            ``0.299 R + 0.587 G + 0.114 B``; grey ones kept).

    Raises:
        ValueError: unknown dataset, normalization, augmentation, augmentation mode, image mode,
            ``nonfinite`` name or ``channels``; ``channels`` for a feature table or for images that are
            neither grey nor RGB; ``val_split`` outside (0, 1); non-positive batch size; negative
            ``num_workers``; an empty ``image_folder``; ``labels`` that are not class indices (see ``labels``);
            ``images`` whose integer values the scaling rule cannot map; too few samples to give the training,
            validation and test splits one each (at construction for tensors, at ``setup`` for every source,
            after cleaning). At ``setup``: a damaged MNIST/FashionMNIST file (read by
            :func:`~lightning_optim.data.idx.read_idx`, which checks its header against its size and the
            expected 28x28 images), labels of a named dataset out of range, an augmentation step that fails on
            the data's image size.
        FileNotFoundError: a dataset missing from ``data_dir`` with ``download=False`` (at ``setup``), or an
            ``image_folder`` that does not exist.

    Example::

        dm = ImageClassificationDataModule("mnist", data_dir="../shared/data", augmentation="standard")
        trainer.fit(ClassificationModule(LeNet5()), datamodule=dm)

        # grey MNIST for a torchvision ResNet built for RGB
        dm = ImageClassificationDataModule("mnist", data_dir="../shared/data", channels=3, image_size=32)
        trainer.fit(ClassificationModule(torchvision.models.resnet18(num_classes=10)), datamodule=dm)
    """

    def __init__(
        self,
        dataset: str = "digits",
        data_dir: str = "data",
        download: bool = False,
        val_split: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        normalization: str = "zscore",
        augmentation: str | list[dict[str, Any]] | None = "none",
        augmentation_mode: str = "batch",
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 42,
        return_index: bool = False,
        limit_train_samples: int | None = None,
        image_folder: str | None = None,
        image_size: int | list[int] | None = None,
        image_mode: str = "RGB",
        images: Tensor | None = None,
        labels: Tensor | None = None,
        nonfinite: str = "drop",
        channels: int | None = None,
    ) -> None:
        super().__init__()
        if images is not None:
            self.dataset = "tensors"
        elif image_folder is not None:
            self.dataset = "folder"
        else:
            self.dataset = check_dataset_name(dataset)
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"`val_split` must be in (0, 1), got {val_split}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"`eval_batch_size` must be >= 1 or None, got {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        if (images is None) != (labels is None):
            raise ValueError("Give both `images` and `labels`, or neither.")
        if images is not None:
            images, labels = check_tensor_data(images, labels, val_split)
        check_choice("augmentation_mode", augmentation_mode, AUGMENTATION_MODES)
        self.channels = check_channels(channels)
        self.image_mode = check_image_mode(image_mode)
        if limit_train_samples is not None and limit_train_samples < 1:
            raise ValueError(f"`limit_train_samples` must be >= 1 or None, got {limit_train_samples}.")
        self.data_dir = data_dir
        self.download = download
        self.val_split = val_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.normalization = check_normalization(normalization)
        self.augmentation = augmentation
        self.augmentation_mode = augmentation_mode
        self.augmentation_steps = parse_augmentation(augmentation)
        if images is not None and images.ndim != 4 and self.augmentation_steps:
            raise ValueError(
                f"`augmentation` needs (N, C, H, W) images; `images` has shape {tuple(images.shape)}: "
                "use augmentation 'none'."
            )
        if images is not None and images.ndim != 4 and (image_size is not None or self.channels is not None):
            option = "image_size" if image_size is not None else "channels"
            raise ValueError(
                f"`{option}` applies to (N, C, H, W) images; `images` is a table of shape "
                f"{tuple(images.shape)}: leave `{option}` unset."
            )
        if image_size is not None and image_folder is None:  # folders are resized when read
            resize = parse_augmentation([{"name": "resize", "size": image_size}])
            if tuple(resize[0]["size"]) != self._raw_size(images):
                self.augmentation_steps = resize + self.augmentation_steps
        self.batch_augmentation: BatchAugmentation | None = (
            build_batch_augmentation(self.augmentation_steps, seed=seed)
            if augmentation_mode == "batch"
            else None
        )
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.return_index = return_index
        self.limit_train_samples = limit_train_samples
        self.image_folder = image_folder
        self.image_size = image_size
        self.nonfinite = check_nonfinite_policy(nonfinite)
        self._tensors = (images, labels)
        self._raw_channels = self._source_channels()
        if self.channels is not None and self._raw_channels not in (1, 3):
            source = (
                f"`image_mode` {self.image_mode!r} gives {self._raw_channels} channels: use 'RGB' or 'L'"
                if image_folder is not None
                else f"`images` have {self._raw_channels} channels"
            )
            raise ValueError(
                f"`channels`={self.channels} converts grey (1-channel) and colour (3-channel) images; "
                f"{source}."
            )
        self._folder_classes: list[str] | None = None
        if image_folder is not None:  # fail early on a missing or empty folder
            self._folder_classes = list_image_folder(image_folder)[1]
        self._loaded: tuple[ImageSplit, ImageSplit] | None = None
        self.classes: list[str] | None = self._folder_classes
        self.norm_stats: dict[str, Tensor] = {}
        self.cleaning_reports: dict[str, Any] = {}
        self.train_split: ImageSplit | None = None
        self.val_split_data: ImageSplit | None = None
        self.test_split: ImageSplit | None = None
        self._augmentation_seeded = False

    # ---------------------------------------------------------------------------------------- metadata
    @property
    def num_classes(self) -> int:
        """Number of classes (folder: its class sub-folders; tensors: largest label + 1)."""
        if self.dataset == "tensors":
            return int(self._tensors[1].max().item()) + 1
        if self.dataset == "folder":
            return len(self._folder_classes or [])
        return DATASETS[self.dataset][2]

    def _raw_size(self, images: Tensor | None) -> tuple[int, int]:
        """``(H, W)`` of a named dataset's or the in-memory images, as the source gives them."""
        if images is not None:
            return (int(images.shape[-2]), int(images.shape[-1]))
        size = DATASETS[self.dataset][1]
        return (size, size)

    def _source_channels(self) -> int | None:
        """Channels of the images as the source gives them (``None`` for a feature table); no data is read."""
        if self.dataset == "tensors":
            images = self._tensors[0]
            return int(images.shape[1]) if images.ndim == 4 else None
        if self.dataset == "folder":
            return IMAGE_MODES[self.image_mode]
        return DATASETS[self.dataset][0]

    @property
    def model_channels(self) -> int | None:
        """Channels of the model inputs: ``channels`` where set, else the source's (``None`` for a table)."""
        return self.channels if self.channels is not None else self._raw_channels

    @property
    def _channel_repeat(self) -> int:
        """How many times the stored images' channels are repeated on the device (3 for grey to 3, else 1)."""
        return 3 if self.channels == 3 and self._raw_channels == 1 else 1

    @property
    def channels_from(self) -> str | None:
        """How raw images become model inputs where ``channels`` converts them (``"grey repeated to 3"``)."""
        if self.channels is None or self._raw_channels == self.channels:
            return None
        return CHANNELS_FROM[(self._raw_channels, self.channels)]

    @property
    def source_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of the images as the source gives them (``(F,)`` for feature tables), before
        ``channels`` and the augmentation."""
        if self.dataset == "tensors":
            return tuple(self._tensors[0].shape[1:])  # type: ignore[return-value]
        if self.dataset == "folder":
            if self.image_size is not None:
                size = self.image_size
                h, w = (size, size) if isinstance(size, int) else tuple(size)
                return (IMAGE_MODES[self.image_mode], int(h), int(w))
            return tuple(self._load()[0].images.shape[1:])  # type: ignore[return-value]
        c, s, _ = DATASETS[self.dataset]
        return (c, s, s)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of the model inputs: ``channels`` applied, and a size-changing augmentation (a crop, a
        resize, ``image_size``)."""
        if len(self.source_shape) != 3:
            return self.source_shape
        _, h, w = self.source_shape
        return (self.model_channels, *augmented_size(self.augmentation_steps, (h, w)))

    def deploy_metadata(self) -> dict[str, Any]:
        """The input preprocessing a deployed model needs, as the ``.pt2``/ONNX exports store it.

        ``{"pixel_scale", "mean", "std", "input_shape", "class_names"}``: the model input is
        ``(raw / pixel_scale - mean) / std`` per channel, where ``raw`` are the stored images (uint8 pixels:
        ``pixel_scale`` 255; uint16: 65535; float images: 1). Every normalization is written as ``mean``/``std``
        (min-max: ``mean`` = the minimum, ``std`` = the range; symmetric min-max: the midpoint and half the
        range); ``"none"`` leaves them out. ``class_names`` are the folder's classes (else ``"0"``, ``"1"``...).
        ``mean``, ``std`` and ``input_shape`` count the model's input channels. Where ``channels`` converts
        the images, ``"channels_from"`` says how raw images become model inputs first: ``"grey repeated to
        3"`` or ``"colour to grey by luma (0.299 R + 0.587 G + 0.114 B)"`` (absent otherwise).
        Call it after ``setup("fit")`` (the statistics are fitted there).
        """
        images = self.train_split.images if self.train_split is not None else None
        scale = 255.0 if images is None else pixel_scale(images.dtype)
        info: dict[str, Any] = {"pixel_scale": scale, "input_shape": list(self.input_shape)}
        stats = {k: v.double() / scale for k, v in self.norm_stats.items()}
        if self.normalization == "zscore" and stats:
            mean, std = stats["mean"], stats["std"]
        elif self.normalization in ("minmax", "minmax_symmetric") and stats:
            lo, span = stats["min"], (stats["max"] - stats["min"]).clamp_min(1e-12)
            mean, std = (lo, span) if self.normalization == "minmax" else (lo + span / 2, span / 2)
        else:
            mean = std = None
        if mean is not None and std is not None:
            info["mean"], info["std"] = [float(v) for v in mean], [float(v) for v in std]
        if self.channels_from is not None:
            info["channels_from"] = self.channels_from
        names = self.classes or [str(i) for i in range(self.num_classes)]
        info["class_names"] = [str(c) for c in names]
        return info

    # ---------------------------------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        if self.dataset in DATASETS and self.dataset != "digits" and self.download:
            load_named_dataset(self.dataset, self.data_dir, download=True)

    def _load(self) -> tuple[ImageSplit, ImageSplit]:
        if self._loaded is not None:
            return self._loaded
        if self.dataset == "tensors":
            images, labels = self._tensors
            full = ImageSplit(images, labels.long())
            keep, test = seeded_holdout(len(full), 0.2, 0)
            self._loaded = (full.subset(keep), full.subset(test))
        elif self.dataset == "folder":
            train, test, classes = load_image_folder(
                self.image_folder, mode=self.image_mode, size=self.image_size
            )
            self.classes = self._folder_classes = classes
            if test is None:
                keep, held = seeded_holdout(len(train), 0.2, 0)
                train, test = train.subset(keep), train.subset(held)
            for split, what in ((train, "training"), (test, "test")):  # indices we made: checked all the same
                check_class_indices(
                    split.labels, num_classes=len(classes), option="image_folder", where=f" ({what})"
                )
            if test.images.shape[1:] != train.images.shape[1:]:
                raise ValueError(
                    f"`image_folder` train images are {tuple(train.images.shape[1:])} but test images "
                    f"{tuple(test.images.shape[1:])}; set `image_size`."
                )
            self._loaded = (train, test)
        else:
            self._loaded = load_named_dataset(self.dataset, self.data_dir, download=False)
        return self._loaded

    def _clean_tensor_splits(self, splits: dict[str, ImageSplit]) -> dict[str, ImageSplit]:
        """Drop or impute NaN/inf rows of every split; imputation values come from the training split only."""
        if not splits["train"].images.is_floating_point() or self.nonfinite == "keep":
            return splits
        fill = None
        if self.nonfinite in ("mean", "median", "zero"):
            fill = column_fill_values(splits["train"].images, self.nonfinite)
        cleaned = {}
        for name, split in splits.items():
            x, y, report = clean_nonfinite_rows(
                split.images, split.labels, self.nonfinite, fill=fill, name=f"{name} images"
            )
            self.cleaning_reports[name] = report.summary
            cleaned[name] = ImageSplit(x, y)
        return cleaned

    def setup(self, stage: str | None = None) -> None:
        if self.batch_augmentation is not None and not self._augmentation_seeded:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self.batch_augmentation.reseed(self.seed + rank)
            self._augmentation_seeded = True
        if self.train_split is not None:
            return
        train_full, test = self._load()
        total = len(train_full) + len(test)
        keep, held = seeded_holdout(len(train_full), self.val_split, self.seed)
        train, val = train_full.subset(keep), train_full.subset(held)
        if self.dataset == "tensors":
            cleaned = self._clean_tensor_splits({"train": train, "val": val, "test": test})
            train, val, test = cleaned["train"], cleaned["val"], cleaned["test"]
        if self.channels == 1 and self._raw_channels == 3:  # once, on the stored tensors
            train, val, test = (ImageSplit(grey_by_luma(s.images), s.labels) for s in (train, val, test))
        if self.limit_train_samples is not None:
            train = train.subset(torch.arange(min(self.limit_train_samples, len(train))))
        self._check_splits(train, val, test, total)
        self._check_augmentation(train)
        self.train_split, self.val_split_data, self.test_split = train, val, test
        if not self.norm_stats:  # fitted on the training split only; kept if restored from a checkpoint
            # uint16 has no min/max kernels: its chunks are read as int32 (same values)
            wide = torch.int32 if train.images.dtype == torch.uint16 else None
            chunks = (
                train.images[i : i + 4096].to(wide or train.images.dtype) for i in range(0, len(train), 4096)
            )
            stats = fit_normalization(chunks, self.normalization)
            # one value per model input channel: a grey channel repeated to 3 has its statistics 3 times
            self.norm_stats = {k: v.repeat(self._channel_repeat) for k, v in stats.items()}

    def _check_splits(self, train: ImageSplit, val: ImageSplit, test: ImageSplit, total: int) -> None:
        """Refuse an empty split (a data set too small to split, or emptied by cleaning) before any epoch."""
        sizes = {"train": len(train), "val": len(val), "test": len(test)}
        if self.dataset == "tensors":
            source = f"`images` hold {total} sample(s)"
        elif self.dataset == "folder":
            source = f"`image_folder` {self.image_folder!r} holds {total} usable image(s)"
        else:
            source = f"dataset {self.dataset!r} holds {total} sample(s)"
        dropped = sum(int(r.get("dropped", 0)) for r in self.cleaning_reports.values())
        if dropped:
            source += f", {dropped} dropped for NaN/inf (`nonfinite`={self.nonfinite!r})"
        if self.limit_train_samples is not None:
            source += f", `limit_train_samples`={self.limit_train_samples}"
        hint = (
            "every split needs a sample: 20% (at least one) is held out for testing where the source has no "
            f"test split, then `val_split`={self.val_split} (at least one) of the rest for validation; give more "
            "samples"
        )
        check_split_sizes(sizes, source, hint)

    def _check_augmentation(self, train: ImageSplit) -> None:
        """Run the augmentation once on two training images (RNG states restored), so that a step that cannot
        work on the data's image size fails here, at setup, with the fix, not in the first epoch."""
        if not self.augmentation_steps or train.images.ndim != 4:
            return
        sample = train.images[:2]
        h, w = (int(d) for d in sample.shape[-2:])
        try:
            if self.augmentation_mode == "sample":
                with torch.random.fork_rng(devices=[]):
                    for is_train in (True, False):
                        transform = build_sample_augmentation(self.augmentation_steps, (h, w), train=is_train)
                        for image in sample if transform is not None else ():
                            transform(image)
            elif self.batch_augmentation is not None:
                state = self.batch_augmentation.state_dict()
                try:
                    x = sample.float() / pixel_scale(sample.dtype)
                    self.batch_augmentation(x, train=True)
                    self.batch_augmentation(x, train=False)
                finally:
                    self.batch_augmentation.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - re-raised with the data's size and the fix
            steps = [step["name"] for step in self.augmentation_steps]
            raise ValueError(
                f"`augmentation` {steps} (`augmentation_mode`={self.augmentation_mode!r}) fails on the data's "
                f"{h}x{w} images: {str(err).rstrip('.')}. Make the images larger (`image_size`), give a `crop` step `padding`, or "
                "drop the step. Found at setup on two training images."
            ) from err

    # ---------------------------------------------------------------------------------------- loaders
    def _loader(self, split: ImageSplit, train: bool) -> DataLoader:
        transform = None
        if self.augmentation_mode == "sample" and self.augmentation_steps:
            transform = build_sample_augmentation(
                self.augmentation_steps, tuple(split.images.shape[-2:]), train=train
            )
        return DataLoader(
            InMemoryImageDataset(split, return_index=self.return_index, transform=transform),
            batch_size=self.batch_size if train else (self.eval_batch_size or self.batch_size),
            sampler=EpochSeededRandomSampler(len(split), self.seed) if train else None,
            drop_last=False,
            collate_fn=batched_collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split_data, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, False)

    # ---------------------------------------------------------------------------------------- device
    def to_model_input(self, images: Tensor, train: bool = False) -> Tensor:
        """uint8 (or float) images -> normalized float inputs; augments when ``train``.

        Without training, the batched augmentation still applies its size-changing steps (resize, a
        centre crop for crops) so that evaluation inputs have the training input size.
        """
        scale = pixel_scale(images.dtype)  # uint8: 255, uint16: 65535, float: 1 (pixels.py)
        x = images.float() if scale == 1.0 else images.float().div_(scale)
        if self.batch_augmentation is not None:  # on the stored channels: a third of the work for grey to 3
            x = self.batch_augmentation(x, train=train)
        if self._channel_repeat > 1 and x.ndim == 4 and x.shape[1] == 1:
            # a view here; the normalization below writes the 3 channels in one kernel
            x = x.expand(-1, self._channel_repeat, -1, -1)
            if self.normalization == "none":
                x = x.contiguous()
        if self.normalization != "none":
            # statistics are fitted on the stored values; every one of them scales with the input
            stats = {k: v / scale for k, v in self.norm_stats.items()}
            x = normalize(x, self.normalization, stats)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        images, *rest = batch
        return (self.to_model_input(images, train=train), *rest)

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Normalization statistics (and the augmentation generator state): they travel in checkpoints."""
        state: dict[str, Any] = {
            "normalization": self.normalization,
            "norm_stats": {k: v.clone() for k, v in self.norm_stats.items()},
        }
        if self.batch_augmentation is not None:
            state["augmentation"] = self.batch_augmentation.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the statistics fitted on the training split of the run that saved them.

        Raises:
            ValueError: the checkpoint was fitted with another ``normalization``, or for another number of
                model input channels (``channels``).
        """
        if state_dict.get("normalization", self.normalization) != self.normalization:
            raise ValueError(
                f"Checkpoint was fitted with normalization={state_dict['normalization']!r}, "
                f"this data module uses {self.normalization!r}."
            )
        stats = {k: v.clone() for k, v in state_dict.get("norm_stats", {}).items()}
        n_stats = {int(v.numel()) for v in stats.values()}
        if self.model_channels is not None and n_stats and n_stats != {self.model_channels}:
            raise ValueError(
                f"Checkpoint normalization statistics have {sorted(n_stats)[0]} value(s) per statistic, but "
                f"this data module gives the model {self.model_channels} channels (`channels`={self.channels}): "
                "use the `channels` of the run that saved it."
            )
        self.norm_stats = stats
        if self.batch_augmentation is not None and "augmentation" in state_dict:
            self.batch_augmentation.load_state_dict(state_dict["augmentation"])
            self._augmentation_seeded = True
            rank = self.trainer.global_rank if self.trainer is not None else 0
            if rank:  # the checkpoint holds rank 0's stream; other ranks branch off it deterministically
                g = self.batch_augmentation.generator
                g.manual_seed(int(torch.randint(2**62, (1,), generator=g)) + rank)
