"""Image classification data module over named datasets, image folders or in-memory tensors."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_optim.data.augmentation import build_batch_augmentation
from lightning_optim.data.datasets import (
    DATASETS,
    ImageSplit,
    InMemoryImageDataset,
    batched_collate,
    check_dataset_name,
    load_named_dataset,
)
from lightning_optim.data.normalization import check_normalization, fit_normalization, normalize
from lightning_optim.data.samplers import EpochSeededRandomSampler


class ImageClassificationDataModule(pl.LightningDataModule):
    """Image classification data kept in memory as uint8, batched, normalized and augmented on the device.

    Images stay uint8 on the host (a quarter of float32) and are fetched a whole batch per indexing
    operation. After transfer to the model's device, ``on_after_batch_transfer`` converts them to float,
    applies the batched augmentation (training only, each sample with its own random parameters) and the
    normalization fitted on the training split.

    Args:
        dataset: ``"digits"`` (embedded, no download), ``"mnist"``, ``"fashionmnist"`` or ``"cifar10"``.
        data_dir: root folder of torchvision datasets (MNIST reads ``<data_dir>/MNIST/raw/``).
        download: let torchvision download a missing dataset (needs internet).
        val_split: fraction of the training split held out for validation, in ``(0, 1)``.
        batch_size: training batch size (Lightning's ``BatchSizeFinder`` tunes it).
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        normalization: ``"zscore"``, ``"minmax"`` ([0, 1]), ``"minmax_symmetric"`` ([-1, 1]) or ``"none"``
            (then inputs are scaled to [0, 1] by 1/255).
        augmentation: a preset name or a list of augmentation steps (see :mod:`lightning_optim.data.augmentation`).
        num_workers: DataLoader workers.
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        seed: seed of the train/val split.
        return_index: batches carry the dataset index of each sample as a third element.
        limit_train_samples: keep only the first N training samples (after the split), for quick runs.
        images: with ``labels``, in-memory data instead of a named dataset: uint8 or float ``(N, C, H, W)``.
        labels: int labels for ``images``.

    Raises:
        ValueError: unknown dataset, normalization or augmentation name; ``val_split`` outside (0, 1);
            non-positive batch size; negative ``num_workers``.
        FileNotFoundError: a dataset missing from ``data_dir`` with ``download=False``.
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
        augmentation: Any = "none",
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 42,
        return_index: bool = False,
        limit_train_samples: int | None = None,
        images: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.dataset = check_dataset_name(dataset) if images is None else "tensors"
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"`val_split` must be in (0, 1), got {val_split}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        if (images is None) != (labels is None):
            raise ValueError("Give both `images` and `labels`, or neither.")
        self.data_dir = data_dir
        self.download = download
        self.val_split = val_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.normalization = check_normalization(normalization)
        self.augmentation = augmentation
        self.batch_augmentation = build_batch_augmentation(augmentation)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.return_index = return_index
        self.limit_train_samples = limit_train_samples
        self._tensors = (images, labels)
        self.norm_stats: dict[str, Tensor] = {}
        self.train_split: ImageSplit | None = None
        self.val_split_data: ImageSplit | None = None
        self.test_split: ImageSplit | None = None

    # ---------------------------------------------------------------------------------------- metadata
    @property
    def num_classes(self) -> int:
        if self.dataset == "tensors":
            return int(self._tensors[1].max().item()) + 1
        return DATASETS[self.dataset][2]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.dataset == "tensors":
            return tuple(self._tensors[0].shape[1:])  # type: ignore[return-value]
        c, s, _ = DATASETS[self.dataset]
        return (c, s, s)

    # ---------------------------------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        if self.dataset not in ("digits", "tensors") and self.download:
            load_named_dataset(self.dataset, self.data_dir, download=True)

    def _load(self) -> tuple[ImageSplit, ImageSplit]:
        if self.dataset == "tensors":
            images, labels = self._tensors
            full = ImageSplit(images, labels.long())
            perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
            n_test = max(1, len(full) // 5)
            return full.subset(perm[n_test:]), full.subset(perm[:n_test])
        return load_named_dataset(self.dataset, self.data_dir, download=False)

    def setup(self, stage: str | None = None) -> None:
        if self.train_split is not None:
            return
        train_full, test = self._load()
        perm = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, int(round(len(train_full) * self.val_split)))
        train = train_full.subset(perm[n_val:])
        if self.limit_train_samples is not None:
            train = train.subset(torch.arange(min(self.limit_train_samples, len(train))))
        self.train_split, self.val_split_data, self.test_split = train, train_full.subset(perm[:n_val]), test
        if not self.norm_stats:  # fitted on the training split only; kept if restored from a checkpoint
            chunks = (train.images[i : i + 4096] for i in range(0, len(train), 4096))
            self.norm_stats = fit_normalization(chunks, self.normalization)

    # ---------------------------------------------------------------------------------------- loaders
    def _loader(self, split: ImageSplit, train: bool) -> DataLoader:
        return DataLoader(
            InMemoryImageDataset(split, return_index=self.return_index),
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
        """uint8 (or float) images -> normalized float inputs; augments when ``train``."""
        x = images.float() if images.dtype != torch.uint8 else images.float().div_(255.0)
        if train and self.batch_augmentation is not None:
            x = self.batch_augmentation(x)
        if self.normalization != "none":
            # statistics are fitted on raw uint8 values; every one of them scales by 1/255 with the input
            scale = 255.0 if images.dtype == torch.uint8 else 1.0
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
        return {"normalization": self.normalization, "norm_stats": {k: v.clone() for k, v in self.norm_stats.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("normalization", self.normalization) != self.normalization:
            raise ValueError(
                f"Checkpoint was fitted with normalization={state_dict['normalization']!r}, "
                f"this data module uses {self.normalization!r}."
            )
        self.norm_stats = {k: v.clone() for k, v in state_dict.get("norm_stats", {}).items()}
