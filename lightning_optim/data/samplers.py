"""A shuffling sampler whose order depends only on (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSeededRandomSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)`` drawn from ``seed + epoch``.

    Lightning calls ``set_epoch`` before every epoch (also after a resume), so the order of epoch ``e`` is the
    same in an uninterrupted run and in one resumed from a checkpoint, independent of the global RNG state.
    Without ``set_epoch`` calls the epoch advances by one per iteration.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        if num_samples < 0:
            raise ValueError(f"`num_samples` must be >= 0, got {num_samples}.")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        self.epoch += 1
        return iter(order)
