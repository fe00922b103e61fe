"""WeightSharing: refusals in __init__ and at setup (before any epoch), the phase, composition with pruning (masks
kept, zeros without a codebook entry) and distillation, frozen vs trained centroids, exact resume after the
clustering, the exported artifact, and real architectures: a residual CNN (torchvision ResNet-18), a depthwise/SE
net (MobileNetV3-small) and a transformer block."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import KnowledgeDistillation, ProgressivePruning, WeightSharing
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.weight_sharing import load_shared, load_shared_state_dict
from lightning_optim.models import ConvNet3, LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.callbacks import matrix_support as ms
from tests.conftest import quiet_trainer_kwargs


def _lenet() -> nn.Module:
    return LeNet300100(in_features=64, hidden=(64, 32))


def _fit(tmp_path, callbacks, model=None, data=None, ckpt_path=None, **trainer):
    pl.seed_everything(0, workers=True)
    module = ClassificationModule(model if model is not None else _lenet(), optimizer="adam", lr=1e-2)
    kwargs = quiet_trainer_kwargs(
        tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=1, deterministic=True
    )
    kwargs.update(trainer)
    t = pl.Trainer(callbacks=callbacks, **kwargs)
    if isinstance(data, DataLoader):
        t.fit(module, train_dataloaders=data, ckpt_path=ckpt_path)
    else:
        t.fit(
            module,
            datamodule=data or ImageClassificationDataModule("digits", batch_size=32),
            ckpt_path=ckpt_path,
        )
    return t, module


def _assert_shared(model: nn.Module, callback: WeightSharing) -> None:
    params = dict(model.named_parameters())
    for name, shared in callback.shared.items():
        weight = params[name].detach()
        assert torch.equal(weight, shared.values().to(weight.device, weight.dtype)), name
        assert torch.unique(weight[weight != 0]).numel() <= 1 << callback.layer_bits[name], name


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, r"Unknown `bits` 0; allowed: \[1, 2, 3, 4, 5, 6, 7, 8\]\."),
        ({"bits": 9}, r"Unknown `bits` 9; allowed"),
        ({"bits": True}, r"Unknown `bits` True; allowed"),
        ({"bits": {"fc1": 4, "*": 12}}, r"Unknown `bits\['\*'\]` 12; allowed"),
        ({"bits": {}}, r"`bits` as a map needs at least one"),
        ({"init": "kmeans++"}, r"Unknown `init` 'kmeans\+\+'; allowed: \['linear', 'density', 'random'\]\."),
        (
            {"codebook_dtype": "int8"},
            r"Unknown `codebook_dtype` 'int8'; allowed: \['float32', 'float16', 'bfloat16'\]",
        ),
        ({"other_dtype": "float64"}, r"Unknown `other_dtype` 'float64'"),
        ({"start_epoch": -1}, r"`start_epoch` must be an int >= 0, got -1"),
        ({"start_after": ""}, r"`start_after` must be a phase name"),
        ({"max_iter": 0}, r"`max_iter` must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightSharing(**kwargs)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)  # 160 weights

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.flatten(x))))


class _NoEpochs(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        raise AssertionError("an epoch started")


@pytest.mark.parametrize(
    ("kwargs", "extra", "message"),
    [
        ({"start_epoch": 2}, [], r"`start_epoch`=2 is not before the Trainer's max_epochs=2"),
        ({"start_after": "pruning"}, [], r"No callback with phase_name='pruning'"),
        ({"bits": {"fc9": 3}}, [], r"`bits` patterns \['fc9'\] match no parameter"),
        ({"exclude": ["fc*"]}, [], r"selected no parameter to share"),
        # fc2 has 160 weights: 8 bits are 256 centroids
        (
            {"bits": 8},
            [],
            r"fc2\.weight \(10, 16\) will have 160 non-zero weights, fewer than the 256 centroids of "
            r"`bits`=8: give it at most 7 bits",
        ),
        # after the pruning ramp fc2 keeps 16 of 160 weights: too few for 5 bits, refused before it prunes
        (
            {"bits": 5, "start_after": "pruning"},
            [ProgressivePruning(final_sparsity=0.9, start=0, end=1, verbose=False)],
            r"fc2\.weight \(10, 16\) will have 16 non-zero weights after pruning, fewer than the 32 centroids",
        ),
    ],
)
def test_setup_refuses_before_any_epoch(tmp_path, kwargs, extra, message):
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, [WeightSharing(**kwargs), *extra, _NoEpochs()], model=_Tiny())


# ------------------------------------------------------------------------------------------ phase
def test_phase_pending_active_done_and_descriptions(tmp_path):
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((sharing.phase_state(trainer), sharing.describe_phase(trainer)))

    sharing = WeightSharing(bits=3, start_epoch=1, verbose=False, export=False)
    assert sharing.describe_phase(None) == "pending (starts at epoch 1)"
    t, _ = _fit(tmp_path, [sharing, Watch()], max_epochs=3)
    assert [s for s, _ in seen] == ["pending", "active", "done"]
    assert seen[1][1] == "running (shared at epoch 1, 3 bits, training centroids)"
    assert sharing.describe_phase(t, finished=True) == "done (3 bits)"


class _EndlessPhase(pl.Callback):
    phase_name = "endless"

    def phase_state(self, trainer):
        return "active"


def test_never_started_warns_and_writes_nothing(tmp_path):
    sharing = WeightSharing(bits=3, start_after="endless", verbose=False)
    with pytest.warns(UserWarning, match="WeightSharing never started"):
        t, _ = _fit(tmp_path, [_EndlessPhase(), sharing])
    assert sharing.exported_path is None and not sharing.clustered
    assert sharing.describe_phase(t, finished=True) == "never started"


# ------------------------------------------------------------------------------------------ behaviour
def test_after_pruning_masks_kept_and_zeros_take_no_entry(tmp_path):
    pruning = ProgressivePruning(final_sparsity=0.8, start=0, end=1, verbose=False)
    sharing = WeightSharing(bits=3, start_after="pruning", verbose=False)
    _, module = _fit(tmp_path, [pruning, sharing], max_epochs=3)
    assert sharing.started_epoch == 1  # the last pruning event: the end of epoch 0 (optimizer step 4)
    net = module.model
    for name, mask in pruning.masks.items():
        weight = dict(net.named_parameters())[name].detach()
        assert torch.equal(weight != 0, mask), name  # the pruning masks hold, nothing else is zero
        assert torch.equal(sharing.shared[name].mask, mask), name
        assert abs(float(mask.float().mean()) - 0.2) < 0.01
    _assert_shared(net, sharing)


def test_frozen_centroids_do_not_move_trained_ones_do(tmp_path):
    frozen = WeightSharing(bits=3, train_centroids=False, verbose=False, export=False)
    _, module = _fit(tmp_path / "a", [frozen], max_epochs=1)
    books = {n: s.codebook.clone() for n, s in frozen.shared.items()}
    start = WeightSharing(bits=3, verbose=False, export=False)
    pl.seed_everything(0)
    reference = {}
    for name, shared in frozen.shared.items():
        reference[name] = shared.codebook
    # frozen: the codebooks are those k-means gave at the start (the run's initial weights, seed 0)
    pl.seed_everything(0, workers=True)
    initial = ClassificationModule(_lenet(), optimizer="adam", lr=1e-2).model
    from lightning_optim.functional.weight_sharing import cluster_weight

    for name, book in books.items():
        expected = cluster_weight(dict(initial.named_parameters())[name], 3).codebook
        assert torch.equal(book, expected), name
    _assert_shared(module.model, frozen)
    _, trained_module = _fit(tmp_path / "b", [start], max_epochs=1)
    moved = [not torch.equal(start.shared[n].codebook, books[n]) for n in books]
    assert all(moved)
    _assert_shared(trained_module.model, start)


def test_resume_after_clustering_equals_uninterrupted(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = WeightSharing(bits=3, start_epoch=1, verbose=False, export=False)
    _, full_module = _fit(tmp_path / "a", [full, ckpt], max_epochs=3, enable_checkpointing=True)
    resumed = WeightSharing(bits=3, start_epoch=1, verbose=False, export=False)
    _, resumed_module = _fit(
        tmp_path / "b",
        [resumed],
        max_epochs=3,
        enable_checkpointing=True,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"),
    )
    assert resumed.started_epoch == 1
    ms.assert_states_equal(full.state_dict(), resumed.state_dict(), atol=0.0, what="callback state")
    ms.assert_states_equal(
        ms.model_state(full_module), ms.model_state(resumed_module), atol=0.0, what="model"
    )
    _assert_shared(resumed_module.model, resumed)


def test_export_reloads_exactly_and_never_overwrites(tmp_path):
    sharing = WeightSharing(bits={"fc3": 2, "*": 4}, verbose=False, codebook_dtype="float16")
    _, module = _fit(tmp_path, [sharing], max_epochs=1)
    path = sharing.exported_path
    assert path == tmp_path / "weight_sharing" / "model.lws" and path.is_file()
    # float16 codebooks: the network was loaded back from the file, so it holds exactly what the file holds
    rebuilt = load_shared(path, _lenet())
    x = torch.randn(6, 1, 8, 8)
    assert torch.equal(rebuilt(x), module.model.eval()(x))
    fc1 = module.model.fc1.weight.detach()
    assert torch.equal(fc1, fc1.half().float())
    assert sharing.size_breakdown.total == path.stat().st_size
    assert sharing.dense_bytes > 6 * sharing.size_breakdown.total  # 4-bit Huffman codes, no pruning
    again = WeightSharing(bits=3, verbose=False)
    _fit(tmp_path, [again], max_epochs=1)
    assert again.exported_path == tmp_path / "weight_sharing" / "model-v1.lws"


def test_distillation_trains_the_shared_student(tmp_path):
    torch.manual_seed(1)
    teacher = ConvNet3(image_size=8, channels=(16, 32, 64), hidden=64)
    kd = KnowledgeDistillation(teacher=teacher, temperature=4.0, alpha=0.7)
    sharing = WeightSharing(bits=4, start_epoch=1, verbose=False, export=False)
    t, module = _fit(tmp_path, [kd, sharing], model=ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32))
    assert "train_loss_kd" in t.callback_metrics
    assert sharing.clustered and kd.stats["distilled_steps"] > 0
    assert not any(name.startswith("teacher") for name in sharing.shared)
    _assert_shared(module.model, sharing)


# ------------------------------------------------------------------------------------------ architectures
def _images(n: int = 16, size: int = 32, classes: int = 10) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def test_residual_cnn_resnet18(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    sharing = WeightSharing(bits=2, verbose=False, export=False)
    _, module = _fit(
        tmp_path,
        [sharing],
        model=net,
        data=_images(n=8, size=16),
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
    )
    assert len(sharing.shared) == 21  # 20 convolutions (3 downsampling) and the classifier
    assert "conv1.weight" in sharing.shared and "layer4.1.conv2.weight" in sharing.shared
    assert not any("bn" in n for n in sharing.shared)
    _assert_shared(module.model, sharing)


def test_depthwise_se_net_mobilenet_v3_small(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    sharing = WeightSharing(bits=3, verbose=False)
    _, module = _fit(
        tmp_path,
        [sharing],
        model=net,
        data=_images(size=32),
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
    )
    names = set(sharing.shared)
    assert "features.1.block.0.0.weight" in names  # depthwise 3x3 (16 x 1 x 3 x 3)
    assert "features.1.block.1.fc1.weight" in names  # squeeze-excitation 1x1
    _assert_shared(module.model, sharing)
    rebuilt = load_shared(
        sharing.exported_path, torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    )
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), module.model.eval()(x))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(1))


def test_transformer_block(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = DataLoader(
        TensorDataset(torch.randn(16, 5, 8, generator=g), torch.randint(0, 10, (16,), generator=g)),
        batch_size=8,
    )
    sharing = WeightSharing(bits=4, start_epoch=1, verbose=False)
    _, module = _fit(tmp_path, [sharing], model=_Encoder(), data=data, limit_val_batches=0)
    assert {
        "layer.self_attn.in_proj_weight",
        "layer.self_attn.out_proj.weight",
        "layer.linear1.weight",
    } <= set(sharing.shared)
    _assert_shared(module.model, sharing)
    state = load_shared_state_dict(sharing.exported_path)
    for key, value in module.model.state_dict().items():
        assert torch.equal(state[key], value), key


class _TwoOptimizers(ClassificationModule):
    """Manual optimization with one optimizer per layer group: each step's hook sees one optimizer."""

    def __init__(self) -> None:
        super().__init__(_lenet(), optimizer="sgd", lr=0.01)
        self.automatic_optimization = False

    def configure_optimizers(self):
        net = self.model
        first = [*net.fc1.parameters()]
        rest = [*net.fc2.parameters(), *net.fc3.parameters()]
        return torch.optim.SGD(first, lr=0.01), torch.optim.SGD(rest, lr=0.01)

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt in self.optimizers():
            opt.zero_grad()
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.manual_backward(loss)
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters()}
        for opt in self.optimizers():
            opt.step()
        return loss


def test_each_optimizer_step_sums_its_own_gradients_once(tmp_path):
    sharing = WeightSharing(bits=2, verbose=False, export=False)
    module = _TwoOptimizers()
    before = {}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before.update({n: s.codebook.clone() for n, s in sharing.shared.items()})

    pl.seed_everything(0)
    kwargs = quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    pl.Trainer(callbacks=[sharing, Record()], **kwargs).fit(
        module, datamodule=ImageClassificationDataModule("digits", batch_size=32)
    )
    # plain SGD: each centroid moved by exactly lr x the sum of its weights' gradients, not a multiple of it
    for name, shared in sharing.shared.items():
        grad = module.grads[name]
        for j in range(shared.k):
            members = shared.index == j
            if members.any():
                expected = before[name][j] - 0.01 * grad[members].double().sum()
                assert float(shared.codebook[j]) == pytest.approx(float(expected), rel=1e-5, abs=1e-6), name


# ------------------------------------------------------------------------------------------ size budget
def _budget_fit(tmp_path, sharing, epochs=3):
    pruning = ProgressivePruning(final_sparsity=0.5, start=0, end=4, unit="step", frequency=2, verbose=False)
    return _fit(tmp_path, [pruning, sharing], max_epochs=epochs)


def test_a_budget_chooses_per_layer_bits_within_the_choices_and_the_artifact_fits(tmp_path):
    sharing = WeightSharing(
        bits=8,
        size_budget_bytes=2600,
        bit_choices=[2, 3, 4],
        start_after="pruning",
        start_epoch=1,
        verbose=False,
    )
    _, module = _budget_fit(tmp_path, sharing)
    assert sharing.plan is not None and sharing.plan.total_bytes <= 2600
    assert set(sharing.layer_bits) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert set(sharing.layer_bits.values()) <= {2, 3, 4}
    assert sharing.layer_bits == sharing.plan.bits
    _assert_shared(module.model, sharing)
    # the whole file (trained centroids and biases included) stays within the budget
    assert sharing.exported_path.stat().st_size <= 2600
    state = sharing.state_dict()
    assert state["plan"]["bits"] == sharing.plan.bits  # the plan travels in checkpoints


def test_a_bigger_budget_never_gives_fewer_bits(tmp_path):
    plans = []
    for budget in (2600, 4000):
        sharing = WeightSharing(
            bits=8, size_budget_bytes=budget, bit_choices=[2, 3, 4, 5], start_epoch=1, verbose=False
        )
        _fit(tmp_path / str(budget), [sharing])
        plans.append(sharing.plan)
    assert plans[0].total_bytes <= 2600 < plans[1].total_bytes <= 4000
    assert sum(plans[1].bits.values()) > sum(plans[0].bits.values())


def test_a_budget_below_the_smallest_artifact_is_refused_at_setup_with_that_size(tmp_path):
    sharing = WeightSharing(bits=8, size_budget_bytes=500, bit_choices=[2, 3], start_after="pruning")
    pruning = ProgressivePruning(final_sparsity=0.5, start=0, end=4, unit="step", frequency=2, verbose=False)
    module = ClassificationModule(_lenet())
    trainer = pl.Trainer(callbacks=[pruning, sharing], **quiet_trainer_kwargs(tmp_path, max_epochs=2))
    with pytest.raises(
        ValueError,
        match=r"`size_budget_bytes`=500 is below the smallest artifact these settings allow: \d+ bytes",
    ):
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=32))
    assert trainer.global_step == 0  # before any step


def test_fixed_bits_hold_under_a_budget_and_bad_ones_are_refused(tmp_path):
    sharing = WeightSharing(
        bits=8,
        size_budget_bytes=3000,
        bit_choices=[2, 3],
        fixed_bits={"fc3": 4},
        start_epoch=1,
        verbose=False,
    )
    _fit(tmp_path, [sharing])
    assert sharing.layer_bits["fc3.weight"] == 4
    assert set(v for k, v in sharing.layer_bits.items() if k != "fc3.weight") <= {2, 3}
    with pytest.raises(ValueError, match="`fixed_bits` fixes layers under a budget"):
        WeightSharing(fixed_bits={"fc3": 4})
    with pytest.raises(ValueError, match="`fixed_bits` patterns \\['fc9'\\] match no shared layer"):
        _fit(tmp_path / "bad", [WeightSharing(size_budget_bytes=3000, fixed_bits={"fc9": 4}, start_epoch=1)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_budget_bytes": 0}, "size_budget_bytes"),
        ({"size_budget_bytes": 100, "average_bits": 3}, "not both"),
        ({"average_bits": 0}, "average_bits"),
        ({"size_budget_bytes": 100, "bit_choices": [0, 2]}, "bit_choices"),
        ({"size_budget_bytes": 100, "sensitivity": "fisher"}, r"Unknown `sensitivity` 'fisher'"),
        ({"size_budget_bytes": 100, "sparsity_choices": [1.0]}, "sparsity_choices"),
        ({"size_budget_bytes": 100, "sensitivity_batches": 0}, "sensitivity_batches"),
    ],
)
def test_budget_options_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightSharing(**kwargs)


@pytest.mark.parametrize("sensitivity", ["hessian", "loss"])
def test_average_bits_and_both_sensitivities_run(tmp_path, sensitivity):
    sharing = WeightSharing(
        bits=8, average_bits=2.5, bit_choices=[2, 3, 4], sensitivity=sensitivity, start_epoch=1, verbose=False
    )
    _fit(tmp_path, [sharing])
    params = dict(_lenet().named_parameters())
    total = sum(params[n].numel() for n in sharing.layer_bits)
    average = sum(b * params[n].numel() for n, b in sharing.layer_bits.items()) / total
    assert average <= 2.5 + 1e-9


# ------------------------------------------------------------------------------------------ size-accuracy curve
def test_curve_budgets_give_a_size_accuracy_curve_beside_the_artifact(tmp_path):
    import json

    sharing = WeightSharing(
        bits=4, bit_choices=[2, 3, 4], start_epoch=1, curve_budgets=[4000, 2600], verbose=False
    )
    _, module = _fit(tmp_path, [sharing])
    assert [row["budget"] for row in sharing.curve] == [2600, 4000]  # sorted
    for row in sharing.curve:
        assert row["bytes"] is not None and row["bytes"] <= row["budget"], row
        assert 0.0 <= row["metric"] <= 1.0
        assert set(row["bits"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        assert set(row["bits"].values()) <= {2, 3, 4}
    assert sharing.layer_bits == {
        n: 4 for n in ("fc1.weight", "fc2.weight", "fc3.weight")
    }  # training unchanged
    _assert_shared(module.model, sharing)
    md = sharing.exported_path.parent / "size_accuracy_curve.md"
    assert md.is_file() and sharing.curve_paths["markdown"] == md
    text = md.read_text()
    assert "| 2,600 |" in text and "| 4,000 |" in text
    state = sharing.state_dict()
    json.dumps(state["curve"])  # plain data in checkpoints
    restored = WeightSharing(bits=4, curve_budgets=[2600, 4000])
    restored.load_state_dict(state)
    assert restored.curve == sharing.curve


def test_curve_budgets_without_recent_batches_are_skipped(tmp_path):
    sharing = WeightSharing(bits=4, start_epoch=0, curve_budgets=[4000], verbose=False)
    _fit(tmp_path, [sharing])
    assert sharing.curve == []
    assert not (sharing.exported_path.parent / "size_accuracy_curve.md").exists()


@pytest.mark.parametrize("budgets", [[0], [-5], [1.5], [True], 4000])
def test_bad_curve_budgets_are_refused_at_construction(budgets):
    with pytest.raises(ValueError, match="`curve_budgets` must be"):
        WeightSharing(curve_budgets=budgets)


def test_a_budget_at_the_edge_of_the_smallest_file_is_warned_about_at_setup(tmp_path):
    """The estimate at setup can be a few bytes under what the weights encode to when sharing starts: a budget
    within 3% of it is said before any epoch (a refusal after the pruning ramp would waste the run)."""
    probe = WeightSharing(bits=8, size_budget_bytes=10, bit_choices=[2], start_epoch=1)
    with pytest.raises(ValueError, match=r"allow: (\d+) bytes") as refused:
        _fit(tmp_path / "probe", [probe])
    smallest = int(__import__("re").search(r"allow: (\d+) bytes", str(refused.value)).group(1))
    sharing = WeightSharing(
        bits=8, size_budget_bytes=smallest + 1, bit_choices=[2], start_epoch=1, verbose=False
    )
    with pytest.warns(UserWarning, match="within 3% of the smallest file"):
        try:
            _fit(tmp_path / "edge", [sharing])
        except ValueError:
            pass  # the weights at sharing may indeed encode larger: the warning is what is checked
