"""Shared by the coverage benchmarks: the error for a missing benchmark-only library, and a Hugging Face
classifier that returns its logits tensor."""

from __future__ import annotations

from torch import Tensor, nn


class MissingDependency(RuntimeError):
    """A benchmark-only library (timm, transformers, torch_pruning, onnxruntime) is not installed."""


class HFLogits(nn.Module):
    """A Hugging Face classifier that returns its logits tensor (what the timing and the checks compare)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits
