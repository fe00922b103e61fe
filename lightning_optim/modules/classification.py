"""A LightningModule that trains any ``nn.Module`` classifier."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_optim.functional.regularization import l1_penalty, split_decay_parameters, weight_decay_param_groups
from lightning_optim.modules.loss_terms import StepContext, combine_losses, unpack_batch
from lightning_optim.modules.optimizers import optimizer_factory


def infer_num_classes(model: nn.Module) -> int | None:
    """The model's ``num_classes`` attribute, else the ``out_features`` of its last ``nn.Linear``."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None


class ClassificationModule(pl.LightningModule):
    """Train, validate and test any ``nn.Module`` that maps inputs to class logits.

    Cross-entropy (optional label smoothing) plus terms added by callbacks through the loss-term
    extension point (:mod:`lightning_optim.modules.loss_terms`), torchmetrics accuracy (top-1, and top-5
    where there are at least 5 classes) for train/val/test, L2 as weight decay that skips biases and
    normalization parameters, L1 as a loss term, and the optimizer and scheduler injected the LightningCLI
    way.

    Args:
        model: the network; it receives the inputs and returns logits of shape ``(batch, num_classes)``.
        num_classes: number of classes; inferred from ``model`` when ``None``.
        optimizer: a short name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``,
            ``adamw``) or a callable ``params -> Optimizer`` (a class path with ``init_args`` in YAML).
        lr_scheduler: optional callable ``optimizer -> scheduler``; stepped per epoch, or per step when
            ``scheduler_interval="step"``. ReduceLROnPlateau monitors ``scheduler_monitor``.
        lr: learning rate for every parameter group; ``None`` keeps the optimizer's own. Lightning's
            ``LearningRateFinder`` tunes this attribute.
        weight_decay: L2 decay of weights (not biases nor normalization/embedding parameters); ``None``
            keeps the optimizer's default for weights.
        l1: coefficient of an L1 penalty on the same weights, added to the training loss.
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1)``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric that a ReduceLROnPlateau scheduler watches.

    Raises:
        ValueError: for an unknown optimizer name, a negative ``l1``/``weight_decay``, ``label_smoothing``
            outside ``[0, 1)``, or an unknown ``scheduler_interval``.

    Example::

        from lightning_optim.models import LeNet5
        module = ClassificationModule(LeNet5(), optimizer="adamw", lr=3e-3, weight_decay=5e-4)
        trainer = Trainer(max_epochs=3)
        trainer.fit(module, datamodule=ImageClassificationDataModule("mnist", data_dir="data"))
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        optimizer: str | OptimizerCallable = "adam",
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        l1: float = 0.0,
        label_smoothing: float = 0.0,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val_loss",
    ) -> None:
        super().__init__()
        if isinstance(optimizer, str):
            optimizer_factory(optimizer)  # validates the name now, at construction time
        if l1 < 0:
            raise ValueError(f"`l1` must be >= 0, got {l1}.")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {scheduler_interval!r}.")
        if lr is not None and lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr}.")
        num_classes = num_classes if num_classes is not None else infer_num_classes(model)
        if num_classes is None or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2 (could not infer it from the model), got {num_classes}.")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.num_classes = num_classes
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr = lr
        self.weight_decay = weight_decay
        self.l1 = l1
        self.label_smoothing = label_smoothing
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        metrics: dict[str, Any] = {"acc": MulticlassAccuracy(num_classes, top_k=1)}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5)
        base = MetricCollection(metrics)
        self.train_metrics = base.clone(prefix="train_")
        self.val_metrics = base.clone(prefix="val_")
        self.test_metrics = base.clone(prefix="test_")

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: Any) -> Tensor:
        return self.model(x)

    def task_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy in float32 (stable under mixed precision)."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    # ----------------------------------------------------------------------------------------- steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, index = unpack_batch(batch)
        logits = self(x)
        ctx = StepContext("train", x, y, logits, self.task_loss(logits, y), batch, batch_idx, index)
        loss, parts = combine_losses(self, ctx)
        if self.l1 > 0:
            decay, _ = split_decay_parameters(self.model)
            l1_term = self.l1 * l1_penalty(decay)
            loss = loss + l1_term
            parts["l1"] = l1_term.detach()
            parts["total"] = loss.detach()
        self.train_metrics.update(logits.detach(), y)
        self.log("train_loss", parts["total"], prog_bar=True, on_step=True, on_epoch=True, batch_size=y.shape[0])
        extra = {f"train_loss_{k}": v for k, v in parts.items() if k not in ("total",) and len(parts) > 2}
        if extra:
            self.log_dict(extra, on_step=True, on_epoch=True, batch_size=y.shape[0])
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        x, y, _ = unpack_batch(batch)
        logits = self(x)
        loss = self.task_loss(logits, y)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = unpack_batch(batch)[0] if isinstance(batch, (tuple, list, dict)) else batch
        return torch.softmax(self(x).float(), dim=-1)

    # ----------------------------------------------------------------------------------------- optim
    def configure_optimizers(self) -> Any:
        groups = weight_decay_param_groups(self.model, self.weight_decay)
        factory = optimizer_factory(self.optimizer) if isinstance(self.optimizer, str) else self.optimizer
        optimizer = factory(groups)
        if self.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = self.lr
                group["initial_lr"] = self.lr
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
