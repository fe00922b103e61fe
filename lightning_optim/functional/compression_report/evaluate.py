"""Top-1 evaluation of a classifier over batches, written once.

:func:`count_correct` is the one loop: it runs the model on each batch and counts the samples whose
highest logit is the target (and, if asked, sums the cross-entropy). :func:`evaluate_classifier` (the
compression report's test metrics) and :func:`accuracy` (the quantization report's fp32 and int8 accuracy)
are views of it, and the benchmarks count with it too.

Example::

    evaluate_classifier(model, test_loader)   # {"test_acc": 0.991, "test_loss": 0.03, "test_error_pct": 0.9, ...}
    accuracy(int8_model, batches)             # 0.9905
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def count_correct(
    model: nn.Module | Callable[[Tensor], Tensor],
    batches: Iterable[Any],
    prepare: Callable[[Any], tuple[Tensor, Tensor]] | None = None,
    max_batches: int | None = None,
    loss: bool = False,
) -> dict[str, Any]:
    """Count the top-1 hits of ``model`` over ``batches`` (under ``torch.no_grad``; the model's train/eval mode
    is left as it is).

    Logits are dequantized (int8 outputs) and cast to float32 before the argmax over the last dimension;
    targets are moved to the logits' device.

    Args:
        model: maps inputs to logits (float or int8).
        batches: an iterable of ``(inputs, targets, ...)`` batches (a DataLoader).
        prepare: turns a raw batch into ``(inputs, targets)`` (the data module's transfer hooks); default:
            the first two elements.
        max_batches: stop after this many batches.
        loss: also sum the cross-entropy of the batches.

    Returns:
        ``correct`` (int), ``samples`` (int) and ``loss_sum`` (float; ``None`` without ``loss``).
    """
    correct = 0
    seen = 0
    loss_sum = 0.0 if loss else None
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = prepare(batch) if prepare is not None else (batch[0], batch[1])
            logits = model(x)
            logits = logits.dequantize() if logits.is_quantized else logits
            logits = logits.float()
            y = y.to(logits.device)
            if loss_sum is not None:
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == y).sum())
            seen += int(y.shape[0])
    return {"correct": correct, "samples": seen, "loss_sum": loss_sum}


def evaluate_classifier(
    model: nn.Module | Callable[[Tensor], Tensor],
    batches: Iterable[Any],
    prepare: Callable[[Any], tuple[Tensor, Tensor]] | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy, mean cross-entropy and error (in %) of a classifier over ``batches``.

    A module is put in eval mode first (and left there).

    Args:
        model: maps inputs to logits (float or int8).
        batches: an iterable of ``(inputs, targets, ...)`` batches (a DataLoader).
        prepare: see :func:`count_correct`.
        max_batches: stop after this many batches.

    Returns:
        ``test_acc`` (fraction), ``test_loss``, ``test_error_pct`` and ``test_samples``.

    Raises:
        ValueError: if ``batches`` holds no sample.
    """
    if isinstance(model, nn.Module):
        model.eval()
    counts = count_correct(model, batches, prepare=prepare, max_batches=max_batches, loss=True)
    seen = counts["samples"]
    if seen == 0:
        raise ValueError("evaluate_classifier: the test batches were empty.")
    acc = counts["correct"] / seen
    return {
        "test_acc": acc,
        "test_loss": counts["loss_sum"] / seen,
        "test_error_pct": 100.0 * (1.0 - acc),
        "test_samples": seen,
    }


def accuracy(model: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``(inputs, targets)`` batches (CPU float inputs for int8 models);
    ``0.0`` for no batch. The model's train/eval mode is left as it is."""
    counts = count_correct(model, batches)
    return counts["correct"] / max(counts["samples"], 1)


__all__ = ["accuracy", "count_correct", "evaluate_classifier"]
