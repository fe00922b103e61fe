"""Loading weights into an architecture: the shapes of a model whose channels were removed come from the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.pruning.groups import prune_channels
from lightning_optim.weights import load_weights, resize_to_state_dict
from tests.nets import ConcatCNN, SEDepthwiseCNN

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("factory", [SEDepthwiseCNN, ConcatCNN], ids=lambda f: f.__name__)
def test_resize_then_load_gives_the_compacted_model(factory, tmp_path):
    torch.manual_seed(0)
    compact, _, _ = prune_channels(factory().eval(), X, 0.5)
    fresh = factory().eval()
    resized = resize_to_state_dict(fresh, compact.state_dict())
    assert resized  # depthwise groups, batch norms, linear and conv sizes follow
    fresh.load_state_dict(compact.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), compact.eval()(X))
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in compact.state_dict().items()}}, tmp_path / "c.ckpt"
    )
    other = load_weights(factory(), tmp_path / "c.ckpt", "checkpoint", resize=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(other(X), compact(X))


def test_without_resize_a_pruned_checkpoint_is_refused_with_the_shapes(tmp_path):
    compact, _, _ = prune_channels(SEDepthwiseCNN().eval(), X, 0.5)
    torch.save(compact.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="shape mismatches"):
        load_weights(SEDepthwiseCNN(), tmp_path / "w.pt", "weights", prefix="")


def test_a_layer_that_cannot_be_resized_is_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 4)

    with pytest.raises(
        ValueError, match="`embedding.weight` .* Embedding `embedding`, which cannot be resized"
    ):
        resize_to_state_dict(Odd(), {"embedding.weight": torch.zeros(10, 2)})
    # not strict (how a checkpoint load calls it): left for load_state_dict, which refuses it as before
    odd = Odd()
    assert resize_to_state_dict(odd, {"embedding.weight": torch.zeros(10, 2)}, strict=False) == []
    with pytest.raises(RuntimeError, match="size mismatch"):
        odd.load_state_dict({"embedding.weight": torch.zeros(10, 2)})
