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


# ------------------------------------------------------------------------------------------------ strict=False
def _lenet_checkpoint(path, prefix="model."):
    from lightning_optim.models import LeNet300100

    torch.manual_seed(0)
    net = LeNet300100(in_features=64, hidden=(16, 8))
    torch.save({"state_dict": {f"{prefix}{k}": v for k, v in net.state_dict().items()}}, path)
    return net


def test_a_load_that_matches_no_key_is_refused_with_keys_of_both_sides(tmp_path):
    """WarmStart(strict=False) on a checkpoint of another network would load 0 tensors and say "loaded"."""
    from lightning_optim.callbacks import WarmStart
    from lightning_optim.models import LeNet300100
    from lightning_optim.modules import ClassificationModule

    path = tmp_path / "other.ckpt"
    torch.save(
        {"state_dict": {"net.body.weight": torch.zeros(3, 3), "net.head.weight": torch.zeros(2, 3)}}, path
    )
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(16, 8)))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError) as err:
        WarmStart(str(path), strict=False).setup(None, module, "fit")
    message = str(err.value)
    assert "`checkpoint`" in message and "would load none of its 6 tensors" in message
    assert "Checkpoint keys: ['net.body.weight', 'net.head.weight']" in message
    assert (
        "architecture keys: ['fc1.bias', 'fc1.weight', 'fc2.bias', 'fc2.weight', 'fc3.bias'] (+1 more)"
        in message
    )
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # nothing changed
    # the same with the network under another attribute than the one given
    _lenet_checkpoint(tmp_path / "net.ckpt", prefix="net.")
    with pytest.raises(ValueError, match=r"would load none of its 6 tensors.*WarmStart's `attribute`"):
        load_weights(
            LeNet300100(in_features=64, hidden=(16, 8)), tmp_path / "net.ckpt", "checkpoint", strict=False
        )


def test_a_partial_load_says_how_many_tensors_matched(tmp_path):
    from lightning_optim.models import LeNet300100

    saved = _lenet_checkpoint(tmp_path / "lenet.ckpt")

    class Wider(nn.Module):
        def __init__(self):
            super().__init__()
            base = LeNet300100(in_features=64, hidden=(16, 8))
            self.fc1, self.fc2, self.fc3 = base.fc1, base.fc2, base.fc3
            self.extra = nn.Linear(10, 10)

    wider = Wider()
    with pytest.warns(UserWarning) as record:
        load_weights(wider, tmp_path / "lenet.ckpt", "checkpoint", strict=False)
    (message,) = [str(w.message) for w in record if "loaded" in str(w.message)]
    assert "loaded 6 of the 8 tensors of Wider (`strict=False`)" in message
    assert "not in the checkpoint: ['extra.bias', 'extra.weight']" in message
    assert torch.equal(wider.fc1.weight, saved.fc1.weight)
    # an exact match says nothing
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_weights(
            LeNet300100(in_features=64, hidden=(16, 8)), tmp_path / "lenet.ckpt", "checkpoint", strict=False
        )
