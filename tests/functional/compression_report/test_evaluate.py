"""The one top-1 evaluation: counts, loss and accuracy against a direct computation on a 2-layer MLP."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.evaluate import (
    accuracy,
    count_correct,
    evaluate_classifier,
)
from lightning_optim.functional.quantization import accuracy as quantization_accuracy
from tests.functional.compression_report import batches
from tests.nets import int8_mlp, mlp


def direct(model, data):
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    with torch.no_grad():
        logits = model(x)
    return int((logits.argmax(1) == y).sum()), nn.functional.cross_entropy(logits, y, reduction="sum").item()


def test_counts_and_loss_equal_a_direct_computation():
    model, data = mlp().eval(), batches()
    correct, loss_sum = direct(model, data)
    counts = count_correct(model, data, loss=True)
    assert counts["correct"] == correct and counts["samples"] == 48
    assert counts["loss_sum"] == pytest.approx(loss_sum, rel=1e-5)
    assert count_correct(model, data)["loss_sum"] is None
    assert count_correct(model, data, max_batches=2)["samples"] == 32


def test_evaluate_classifier_figures():
    model, data = mlp(), batches()
    result = evaluate_classifier(model, data)
    assert not model.training  # a module is put in eval mode
    correct, loss_sum = direct(model, data)
    assert result["test_acc"] == correct / 48 and result["test_samples"] == 48
    assert result["test_error_pct"] == pytest.approx(100 * (1 - correct / 48))
    assert result["test_loss"] == pytest.approx(loss_sum / 48, rel=1e-5)
    prepared = evaluate_classifier(model, [(x, y, "extra") for x, y in data], prepare=lambda b: (b[0], b[1]))
    assert prepared == result


def test_evaluate_classifier_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        evaluate_classifier(mlp(), [])


def test_accuracy_is_the_same_count_and_keeps_the_mode():
    model, data = mlp(), batches()
    model.train()
    acc = accuracy(model, data)
    assert model.training  # the mode is the caller's business
    assert acc == direct(model, data)[0] / 48 == evaluate_classifier(model, data)["test_acc"]
    assert accuracy(model, []) == 0.0
    assert quantization_accuracy is accuracy  # the QAT/PTQ callbacks count with the same function


def test_int8_and_half_logits_are_counted_like_float():
    model, data = mlp().eval(), batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = int8_mlp(model)
        expected = direct(q, data)[0]
        assert count_correct(q, data)["correct"] == expected

    def quantized_out(x):
        return torch.quantize_per_tensor(model(x), 0.05, 0, torch.qint8)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert count_correct(quantized_out, data)["samples"] == 48
    half = count_correct(lambda x: model(x).half(), data)["correct"]
    assert half == direct(lambda x: model(x).half().float(), data)[0]
