"""Images per second: batched on-device augmentation vs torchvision per-sample v2 transforms in a DataLoader.

The same augmentation (crop with padding, horizontal flip, random affine) on real MNIST, side by side in
one run::

    .venv/bin/python -m benchmarks.augmentation --data-dir ../shared/data

Paths measured (each delivers float batches ready for the model, ``batch_size`` images at a time):

* ``torchvision MNIST + v2 per sample``: ``torchvision.datasets.MNIST`` (PIL image per sample) with a
  ``v2.Compose([ToImage, RandomCrop, RandomHorizontalFlip, RandomAffine, ToDtype])`` in a DataLoader,
  ``num_workers`` 0 and 2: the usual torchvision recipe.
* ``in-memory uint8 + v2 per sample``: our ``augmentation_mode="sample"`` path (uint8 tensor, one v2 call
  per image in the workers), ``num_workers`` 0 and 2.
* ``in-memory uint8 + batched``: our default path: one indexing operation per batch, then
  :class:`~lightning_optim.data.augmentation.BatchAugmentation` on the whole float batch with per-sample
  parameters (one ``grid_sample``), on ``--device``.

Worker start-up is excluded (two warm-up batches before timing). The main process runs ``--threads``
torch threads (default 1: the batched path then uses one core while the 2-worker paths use two).
Ratios are against the torchvision per-sample DataLoader with 2 workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch.utils.data import DataLoader

from lightning_optim.data.augmentation import BatchAugmentation, build_sample_augmentation
from lightning_optim.data.datasets import ImageSplit, InMemoryImageDataset, batched_collate

#: the augmentation every path applies
SPEC = [
    {"name": "crop", "padding": 2},
    {"name": "flip", "p": 0.5},
    {"name": "affine", "degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]},
]


def _measure(batches, n_images: int, step=None, warmup: int = 2) -> float:
    """Images per second over ``n_images`` images drawn from the ``batches`` iterator (after warm-up)."""
    iterator = iter(batches)
    for _ in range(warmup):
        x = next(iterator)[0]
        if step is not None:
            step(x)
    seen = 0
    start = time.perf_counter()
    while seen < n_images:
        try:
            x = next(iterator)[0]
        except StopIteration:
            iterator = iter(batches)
            continue
        if step is not None:
            x = step(x)
        seen += x.shape[0]
    if step is not None and isinstance(x, torch.Tensor) and x.is_cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def _torchvision_loader(data_dir: str, batch_size: int, workers: int) -> DataLoader:
    import torchvision
    from torchvision.transforms import v2

    sample = build_sample_augmentation(SPEC, input_size=(28, 28))
    transform = v2.Compose([v2.ToImage(), *sample.transforms, v2.ToDtype(torch.float32, scale=True)])
    dataset = torchvision.datasets.MNIST(data_dir, train=True, download=False, transform=transform)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )


def _in_memory_loader(split: ImageSplit, batch_size: int, workers: int, transform=None) -> DataLoader:
    return DataLoader(
        InMemoryImageDataset(split, transform=transform),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=batched_collate,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def run(
    data_dir: str, n_images: int, batch_size: int, workers: list[int], device: str
) -> list[tuple[str, int, str, float]]:
    from lightning_optim.data.datasets import load_named_dataset

    train, _ = load_named_dataset("mnist", data_dir, download=False)
    rows: list[tuple[str, int, str, float]] = []
    for w in workers:
        rate = _measure(_torchvision_loader(data_dir, batch_size, w), n_images)
        rows.append(("torchvision MNIST + v2 per sample", w, "cpu", rate))
    sample = build_sample_augmentation(SPEC, input_size=(28, 28))
    for w in workers:
        rate = _measure(
            _in_memory_loader(train, batch_size, w, sample), n_images, step=lambda x: x.float().div_(255.0)
        )
        rows.append(("in-memory uint8 + v2 per sample", w, "cpu", rate))
    aug = BatchAugmentation(SPEC, seed=0)
    dev = torch.device(device)

    def batched(x: torch.Tensor) -> torch.Tensor:
        return aug(x.to(dev, non_blocking=True).float().div_(255.0))

    rate = _measure(_in_memory_loader(train, batch_size, 0), n_images * 4, step=batched, warmup=3)
    rows.append(("in-memory uint8 + batched (per-sample params)", 0, device, rate))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--images", type=int, default=10240, help="images timed per per-sample path")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers", default="0,2", help="comma-separated num_workers of the per-sample paths"
    )
    parser.add_argument("--device", default="cpu", help="device of the batched path (cpu, cuda)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the main process (workers always use 1)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]
    rows = run(args.data_dir, args.images, args.batch_size, workers, args.device)
    reference = next((r[3] for r in rows if r[0].startswith("torchvision") and r[1] == 2), rows[0][3])
    print(f"\nAugmentation throughput on MNIST (28x28), batch {args.batch_size}; augmentation: {SPEC}")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{args.threads} torch thread(s) in the main process, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n"
    )
    print("| path | num_workers | device | images/s | vs torchvision v2, 2 workers |")
    print("|---|---:|---|---:|---:|")
    for name, w, device, rate in rows:
        print(f"| {name} | {w} | {device} | {rate:,.0f} | {rate / reference:.1f}x |")


if __name__ == "__main__":
    main()
