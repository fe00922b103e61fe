"""Add lightning-optim callbacks to a plain Lightning ``Trainer`` (no CLI, no YAML).

Trains a LeNet-5 (MNIST) or a 3-block CNN (the embedded 8x8 digits) with our ``ClassificationModule``
and data module, a one-cycle learning rate from ``LRScheduling``, our ``EarlyStopping`` (which restores
the best weights and holds off while a compression phase is running), and Lightning's own
``ModelCheckpoint`` and ``LearningRateMonitor``. From the repository root::

    python examples/train_with_callbacks.py                                   # digits, seconds
    python examples/train_with_callbacks.py --dataset mnist --data-dir ../shared/data --epochs 4
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_optim import ClassificationModule, ImageClassificationDataModule
from lightning_optim.callbacks import EarlyStopping, LRScheduling, OneCycle
from lightning_optim.models import ConvNet3, LeNet5


def build(args: argparse.Namespace) -> tuple[ClassificationModule, ImageClassificationDataModule]:
    datamodule = ImageClassificationDataModule(
        args.dataset, data_dir=args.data_dir, batch_size=args.batch_size, val_split=0.1
    )
    channels, size, _ = datamodule.input_shape
    if size >= 16:
        network = LeNet5("classic", in_channels=channels, image_size=size, num_classes=datamodule.num_classes)
    else:
        network = ConvNet3(in_channels=channels, image_size=size, num_classes=datamodule.num_classes)
    module = ClassificationModule(
        network, optimizer="adamw", lr=args.lr, weight_decay=1e-4, label_smoothing=0.05
    )
    return module, datamodule


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits (embedded), mnist, fashionmnist, cifar10")
    parser.add_argument("--data-dir", default="../shared/data", help="root of torchvision datasets")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--out", default="runs/train_with_callbacks", help="logs and checkpoints")
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    module, datamodule = build(args)
    callbacks = [
        # one-cycle over the whole run; total steps come from trainer.estimated_stepping_batches
        LRScheduling(schedule=OneCycle(pct_start=0.25), interval="step"),
        # stop when val_acc stalls for 3 epochs (not before epoch 4) and go back to the best weights
        EarlyStopping(monitor="val_acc", mode="max", patience=3, start_epoch=4, restore_best_weights=True),
        ModelCheckpoint(dirpath=f"{args.out}/checkpoints", monitor="val_acc", mode="max", save_last=True),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=CSVLogger(args.out),
        default_root_dir=args.out,
    )
    trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule)[0]
    print(
        f"test accuracy: {100 * results['test_acc']:.2f}% (best checkpoint: {callbacks[2].best_model_path})"
    )
    return results


if __name__ == "__main__":
    main()
