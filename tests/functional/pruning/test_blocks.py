"""Block (layer) pruning, pure torch: which blocks are candidates, what they are worth on data, and their
replacement by identity."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.functional.pruning import (
    BlockPruningError,
    SkippedBlock,
    block_importance,
    find_blocks,
    is_residual,
    remove_blocks,
    restore_removed_blocks,
)
from tests.nets import ResBlock, ResidualCNN, TinyResNet, TokenClassifier


def tiny_resnet(seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    net = TinyResNet().eval()
    with torch.no_grad():  # random batch-norm statistics and scales: every branch matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net


def zero_branch(block: ResBlock) -> None:
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()


X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ find_blocks
def test_find_blocks_of_a_residual_stack():
    assert find_blocks(tiny_resnet(), X) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def test_residual_cnn_adds_its_skip_outside_the_blocks():
    """tests/nets.py ResidualCNN adds ``x + block(x)`` in the parent: its blocks hold no skip connection
    (identity in their place would double the stream), so none is a residual candidate; without the residual
    check the innermost shape-preserving layers of the stacks are (the batch norms)."""
    net = ResidualCNN()
    assert find_blocks(net, torch.randn(2, 3, 16, 16)) == []
    assert find_blocks(net, torch.randn(2, 3, 16, 16), residual_only=False) == [
        "stem.1",
        "blocks.0.1",
        "blocks.0.4",
        "blocks.1.1",
        "blocks.1.4",
    ]


def test_find_blocks_of_a_token_transformer_stack():
    assert find_blocks(TokenClassifier(), torch.randn(2, 5, 8)) == ["blocks.0", "blocks.1"]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet18", ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
        (
            "resnet50",
            [f"layer1.{i}" for i in (1, 2)]
            + [f"layer2.{i}" for i in (1, 2, 3)]
            + [f"layer3.{i}" for i in (1, 2, 3, 4, 5)]
            + [f"layer4.{i}" for i in (1, 2)],
        ),
    ],
)
def test_find_blocks_of_torchvision_resnets_skips_the_downsampling_blocks(name, expected):
    torchvision = pytest.importorskip("torchvision")
    net = getattr(torchvision.models, name)(weights=None).train()
    state = copy.deepcopy(net.state_dict())
    assert find_blocks(net, torch.randn(1, 3, 32, 32)) == expected
    # every block that changes the shape (first of each stage, resnet50's layer1.0 too: 64 -> 256 channels) is out
    assert all(getattr(net.get_submodule(n), "downsample", None) is None for n in expected)
    # the model is as it was: training flags, batch-norm statistics
    assert all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())


def test_find_blocks_of_torchvision_vit():
    torchvision = pytest.importorskip("torchvision")
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    assert find_blocks(vit, torch.randn(1, 3, 32, 32)) == [
        f"encoder.layers.encoder_layer_{i}" for i in range(3)
    ]


def test_find_blocks_of_timm_vit():
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=16, depth=3, num_heads=2, num_classes=10
    )
    assert find_blocks(vit, torch.randn(1, 3, 32, 32)) == ["blocks.0", "blocks.1", "blocks.2"]


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, mask):
        return x + self.fc(x) * mask


class _ReturnsTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(x), x


class _Widens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return self.fc(x)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(x)


class _Mixed(nn.Module):
    """A ModuleList of blocks called in a loop: only the one that maps one tensor to the same shape counts."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Residual(), _TwoInputs(), _ReturnsTuple(), _Residual(), _Widens()])
        self.unused = nn.ModuleList([_Residual()])  # never called: not a candidate
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.layers[0](x)
        x = self.layers[1](x, torch.ones_like(x))
        x, _ = self.layers[2](x)
        x = self.layers[3](x)
        return self.head(self.layers[4](x))


def test_only_one_tensor_in_same_shape_out_and_called_blocks_are_candidates():
    assert find_blocks(_Mixed(), torch.randn(2, 8)) == ["layers.0", "layers.3"]


def test_a_model_that_fails_on_the_example_is_refused():
    with pytest.raises(
        BlockPruningError, match=r"find_blocks: TinyResNet failed on the example input of shape \(2, 5\)"
    ):
        find_blocks(TinyResNet(), torch.randn(2, 5))


class _PostNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(x + torch.relu(self.fc(x)))


class _NoSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x + 1.0)))  # an add, but of a constant: no skip connection


class _BranchesOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc1(x) + self.fc2(x)  # both operands go through parameters


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x + self.fc(x)
        return x - self.fc(x)


@pytest.mark.parametrize(
    "block,expected",
    [
        (_Residual(), True),
        (_PostNorm(), True),
        (ResBlock(), True),
        (_NoSkip(), False),
        (_BranchesOnly(), False),
        (_Untraceable(), False),
        (nn.Linear(8, 8), False),
    ],
    ids=["x+f(x)", "post-norm", "ResBlock", "add-of-a-constant", "two-branches", "untraceable", "Linear"],
)
def test_is_residual(block, expected):
    assert is_residual(block) is expected


# ------------------------------------------------------------------------------------------------ importance
def test_a_block_whose_branch_is_zero_costs_nothing_and_is_the_cheapest():
    net = tiny_resnet()
    zero_branch(net.blocks[2])
    net.train()  # restored afterwards
    modules = list(net.modules())
    x1, x2 = X, torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batches = [(x1, net.eval()(x1)), (x2, net(x2))]  # targets: the network's own outputs (loss 0)
    net.train()
    scores = block_importance(net, ["blocks.0", "blocks.1", "blocks.2", "blocks.3"], batches, F.mse_loss)
    assert list(scores) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert scores["blocks.2"] == pytest.approx(0.0, abs=1e-9)
    assert all(scores[b] > 1e-4 for b in ("blocks.0", "blocks.1", "blocks.3")), scores
    assert min(scores, key=scores.get) == "blocks.2"
    assert list(net.modules()) == modules and all(m.training for m in net.modules())  # put back as it was


def test_importance_is_the_mean_loss_increase():
    net = tiny_resnet()
    y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(3))
    scores = block_importance(net, ["blocks.1"], [(X, y)], F.cross_entropy)
    with torch.no_grad():
        dense = F.cross_entropy(net(X), y)
        skipped = copy.deepcopy(net)
        skipped.blocks[1] = nn.Identity()
        expected = float(F.cross_entropy(skipped(X), y) - dense)
    assert scores["blocks.1"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_importance_refuses_unknown_blocks_and_no_data():
    net = tiny_resnet()
    with pytest.raises(ValueError, match=r"Unknown block name\(s\) \['blocks.9'\] in `names`"):
        block_importance(net, ["blocks.9"], [(X, torch.zeros(4, dtype=torch.long))], F.cross_entropy)
    with pytest.raises(BlockPruningError, match="at least one"):
        block_importance(net, ["blocks.0"], [], F.cross_entropy)


# ------------------------------------------------------------------------------------------------ removal
def test_removing_a_block_skips_its_branch():
    net = tiny_resnet()
    reference = copy.deepcopy(net)
    params = count_parameters(net)
    block_params = count_parameters(net.blocks[1])
    assert remove_blocks(net, ["blocks.1"]) == ["blocks.1"]
    assert isinstance(net.blocks[1], SkippedBlock) and repr(net.blocks[1]) == "SkippedBlock(removed ResBlock)"
    assert count_parameters(net) == params - block_params
    with torch.no_grad():
        h = reference.stem(X)
        for i, block in enumerate(reference.blocks):
            h = h if i == 1 else block(h)
        expected = reference.head(h.mean((2, 3)))
        torch.testing.assert_close(net(X), expected)
        assert not torch.allclose(net(X), reference(X), atol=1e-3)  # the block did matter
    # once removed, removing again changes nothing
    assert remove_blocks(net, ["blocks.1"]) == []


def test_removing_a_zero_branch_block_keeps_the_function():
    net = tiny_resnet()
    zero_branch(net.blocks[3])
    with torch.no_grad():
        before = net(X)
        remove_blocks(net, ["blocks.3"])
        torch.testing.assert_close(net(X), before)


@pytest.mark.parametrize(
    "names,match",
    [
        (["blocks.7"], r"Unknown block name\(s\) \['blocks.7'\]"),
        ([""], r"Unknown block name\(s\) \[''\].*the root"),
        ("blocks.0", "must be a list of block names"),
    ],
)
def test_remove_blocks_refuses_unknown_names(names, match):
    net = tiny_resnet()
    with pytest.raises(ValueError, match=match):
        remove_blocks(net, names)
    assert not any(isinstance(m, SkippedBlock) for m in net.modules())


def test_restore_removed_blocks_from_a_checkpoint_dict():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_resnet()

    saved = Wrapper()
    remove_blocks(saved, ["model.blocks.0", "model.blocks.2"])
    checkpoint = {
        "state_dict": saved.state_dict(),
        "lightning_optim": {"removed_blocks": ["model.blocks.0", "model.blocks.2"]},
    }
    fresh = Wrapper()
    assert restore_removed_blocks(fresh, checkpoint) == ["model.blocks.0", "model.blocks.2"]
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: the keys fit now
    assert restore_removed_blocks(Wrapper(), {"state_dict": {}}) == []
    with pytest.raises(BlockPruningError, match="checkpoint records removed blocks"):
        restore_removed_blocks(tiny_resnet(), checkpoint)


# ------------------------------------------------------------------------------------------------ ranking
def test_rank_blocks_by_loss_or_by_loss_per_millisecond():
    from lightning_optim.functional.pruning import rank_blocks

    importance = {"a": 1.0, "b": 2.0, "c": -0.5, "d": 1.0}
    latency = {"a": 1.0, "b": 10.0, "c": 1.0, "d": 4.0}
    assert rank_blocks(importance) == ["c", "a", "d", "b"]
    # per ms: c lowers the loss (first), then b (0.2/ms), d (0.25/ms), a (1/ms)
    assert rank_blocks(importance, latency, "loss_per_latency") == ["c", "b", "d", "a"]
    with pytest.raises(ValueError, match="Unknown `ranking` 'fast'"):
        rank_blocks(importance, latency, "fast")
    with pytest.raises(ValueError, match="needs the blocks' `latency`"):
        rank_blocks(importance, None, "loss_per_latency")


def test_block_latency_times_each_block_inside_the_forward(monkeypatch):
    """Timed on a scripted clock (no wall time: a busy machine cannot change the result): the clock moves only
    while the slow block "sleeps", so each block's time is exactly what it spent between its hooks."""
    import types

    import lightning_optim.functional.pruning.blocks as blocks_module
    from lightning_optim.functional.pruning import block_latency

    clock = [0.0]
    monkeypatch.setattr(blocks_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    class Slow(ResBlock):
        def forward(self, x):
            clock[0] += 0.02  # 20 ms inside this block only
            return super().forward(x)

    net = tiny_resnet()
    net.blocks[2] = Slow()
    times = block_latency(net, ["blocks.0", "blocks.2"], X, repeats=2)
    assert times["blocks.2"] == pytest.approx(20.0) and times["blocks.0"] == 0.0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())  # hooks removed


# ------------------------------------------------------------------------------------------------ shortcuts
class ProjectionBlock(nn.Module):
    """``relu(branch(x) + proj(x))`` with a strided projection: the shape changes, no identity skip."""

    def __init__(self, cin: int = 8, cout: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.proj = nn.Conv2d(cin, cout, 1, stride=2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.proj(x))


def test_a_block_with_a_projection_shortcut_is_replaced_by_its_shortcut():
    from lightning_optim.functional.pruning import shortcut_block

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ProjectionBlock(), ResBlock(16)).eval()
    assert find_blocks(net, X) == ["2"]  # the shape-changing block only with shortcuts
    assert find_blocks(net, X, shortcuts=True) == ["1", "2"]
    short = shortcut_block(net[1])
    x = torch.randn(2, 8, 16, 16)
    torch.testing.assert_close(short(x), torch.relu(net[1].proj(x)))
    assert set(short.state_dict()) == {"proj.weight", "proj.bias"}  # the block's own keys
    pruned = copy.deepcopy(net)
    remove_blocks(pruned, ["1"])
    assert count_parameters(pruned) == count_parameters(net) - count_parameters(
        net[1].conv1
    ) - count_parameters(net[1].conv2)
    assert pruned(X).shape == net(X).shape
    fresh = copy.deepcopy(net)  # a checkpoint's removal applied to the unpruned architecture loads
    remove_blocks(fresh, ["1"])
    fresh.load_state_dict(pruned.state_dict())
    assert shortcut_block(ResBlock(8)) is not None and isinstance(
        copy.deepcopy(pruned)[1], torch.fx.GraphModule
    )


def test_torchvision_resnet50_downsampling_blocks_are_candidates_with_shortcuts():
    import torchvision

    net = torchvision.models.resnet50(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert len(find_blocks(net, x)) == 12
    found = find_blocks(net, x, shortcuts=True)
    assert len(found) == 16 and {"layer1.0", "layer2.0", "layer3.0", "layer4.0"} <= set(found)
