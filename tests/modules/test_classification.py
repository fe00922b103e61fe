"""ClassificationModule: loss, label smoothing, L1 term, weight-decay groups, metrics, LR finder, bad input,
the dry run at setup."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch import nn

from lightning_optim import ClassificationModule, ImageClassificationDataModule
from lightning_optim.functional.regularization import split_decay_parameters
from lightning_optim.models import ConvNet3, LeNet300100, TextClassifier
from tests.conftest import quiet_trainer_kwargs


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        yield


def small_convnet(**kwargs) -> nn.Module:
    return ConvNet3(image_size=8, channels=(4, 8, 8), hidden=16, **kwargs)


def batch(n: int = 16, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_training_step_loss_is_cross_entropy():
    module = ClassificationModule(small_convnet())
    x, y = batch()
    loss = module.training_step((x, y), 0)
    torch.testing.assert_close(loss, F.cross_entropy(module(x), y))


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.3])
def test_label_smoothing_matches_its_definition(smoothing):
    module = ClassificationModule(small_convnet(), label_smoothing=smoothing)
    logits = torch.randn(12, 10)
    y = torch.randint(0, 10, (12,))
    logp = logits.log_softmax(-1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    uniform = -logp.mean(-1)
    expected = ((1 - smoothing) * nll + smoothing * uniform).mean()
    torch.testing.assert_close(module.task_loss(logits, y), expected)
    assert module.task_loss(logits, y) != ClassificationModule(small_convnet()).task_loss(logits, y)


def test_task_loss_is_float32_under_half_logits():
    module = ClassificationModule(small_convnet())
    loss = module.task_loss(torch.randn(4, 10, dtype=torch.bfloat16), torch.tensor([1, 2, 3, 4]))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("l1", [1e-4, 1e-2])
def test_l1_term_adds_exactly_l1_times_sum_of_abs_weights(l1):
    torch.manual_seed(0)
    net = small_convnet()
    plain = ClassificationModule(net)
    with_l1 = ClassificationModule(net, l1=l1)
    x, y = batch()
    plain.eval(), with_l1.eval()  # same BatchNorm behaviour for both calls
    difference = with_l1.training_step((x, y), 0) - plain.training_step((x, y), 0)
    weights, _ = split_decay_parameters(net)
    expected = l1 * sum(w.abs().sum() for w in weights)
    torch.testing.assert_close(difference, expected)
    # only conv/linear weights: no bias, no BatchNorm parameter
    assert sum(w.numel() for w in weights) == sum(
        m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )


def test_l1_gradient_is_sign_of_weights():
    net = LeNet300100(in_features=64)
    module = ClassificationModule(net, l1=0.5)
    module.l1_term().backward()
    torch.testing.assert_close(net.fc1.weight.grad, 0.5 * net.fc1.weight.sign())
    assert net.fc1.bias.grad is None


def test_param_groups_put_biases_and_norms_in_the_no_decay_group():
    net = small_convnet(norm="batch")
    module = ClassificationModule(net, optimizer="sgd", weight_decay=0.1)
    optimizer = module.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    for name, p in net.named_parameters():
        is_norm_or_bias = name.endswith("bias") or ".bn." in name
        assert (id(p) in no_decay) == is_norm_or_bias, name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


@pytest.mark.parametrize("norm", ["batch", "layer", "group"])
def test_weight_decay_step_shrinks_weights_but_not_biases_nor_norms(norm):
    """With zero gradients, one SGD step changes only the decayed weights (by lr * wd * w)."""
    net = small_convnet(norm=norm)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)  # make biases and norm shifts non-zero, so decay would show
    module = ClassificationModule(net, optimizer="sgd", lr=0.5, weight_decay=0.2)
    optimizer = module.configure_optimizers()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in net.named_parameters():
        if name.endswith("bias") or p.ndim <= 1:
            torch.testing.assert_close(p, before[name], msg=name)
        else:
            torch.testing.assert_close(p, before[name] * (1 - 0.5 * 0.2), msg=name)


def test_embeddings_are_not_decayed():
    module = ClassificationModule(
        TextClassifier(vocab_size=30, num_classes=3), optimizer="adamw", weight_decay=0.1
    )
    groups = {g["name"]: g for g in module.configure_optimizers().param_groups}
    assert any(p is module.model.embedding.weight for p in groups["no_decay"]["params"])


def test_weight_decay_none_keeps_the_optimizer_default_for_weights_only():
    module = ClassificationModule(small_convnet(), optimizer="adamw")
    groups = {g["name"]: g for g in module.configure_optimizers().param_groups}
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0


def test_lr_overrides_every_group():
    module = ClassificationModule(small_convnet(), optimizer="nesterov", lr=0.123)
    assert {g["lr"] for g in module.configure_optimizers().param_groups} == {0.123}


@pytest.mark.parametrize(("classes", "has_top5"), [(10, True), (5, True), (4, False), (2, False)])
def test_top5_accuracy_only_with_at_least_5_classes(classes, has_top5):
    module = ClassificationModule(LeNet300100(in_features=4, num_classes=classes))
    names = {*module.train_metrics.keys(), *module.val_metrics.keys(), *module.test_metrics.keys()}
    assert ("val_acc_top5" in names) is has_top5 and ("test_acc_top5" in names) is has_top5
    assert {"train_acc", "val_acc", "test_acc"} <= names


def test_accuracy_is_the_fraction_of_correct_samples():
    """Micro accuracy (not torchmetrics' default macro mean over classes)."""
    module = ClassificationModule(LeNet300100(in_features=4, num_classes=3))
    logits = torch.tensor([[5.0, 0, 0]] * 8 + [[0, 5.0, 0]] * 2)  # predicts 0 eight times, 1 twice
    targets = torch.tensor([0] * 8 + [2] * 2)  # 8 of 10 right; the macro mean would be (1 + 0) / 2
    module.test_metrics.update(logits, targets)
    assert module.test_metrics.compute()["test_acc"].item() == pytest.approx(0.8)


def test_top5_accuracy():
    module = ClassificationModule(LeNet300100(in_features=4, num_classes=10))
    logits = torch.arange(10.0).repeat(4, 1)  # ranking 9, 8, 7, 6, 5, ...
    module.val_metrics.update(logits, torch.tensor([9, 5, 4, 0]))
    out = module.val_metrics.compute()
    assert out["val_acc"].item() == pytest.approx(0.25) and out["val_acc_top5"].item() == pytest.approx(0.5)


def test_num_classes_is_inferred_from_the_model():
    assert ClassificationModule(LeNet300100(num_classes=7)).num_classes == 7
    assert ClassificationModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 3))).num_classes == 3


def test_predict_step_returns_probabilities():
    module = ClassificationModule(small_convnet()).eval()
    x, y = batch(5)
    probs = module.predict_step((x, y), 0)
    assert probs.shape == (5, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "adamax_typo"}, r"`optimizer`.*allowed names"),
        ({"l1": -1.0}, "`l1`"),
        ({"weight_decay": -0.1}, "`weight_decay`"),
        ({"label_smoothing": 1.0}, r"`label_smoothing` must be in \[0, 1\)"),
        ({"label_smoothing": -0.1}, "`label_smoothing`"),
        ({"scheduler_interval": "batch"}, r"`scheduler_interval` must be 'epoch' or 'step'"),
        ({"lr": 0.0}, "`lr`"),
        ({"lr": float("nan")}, "`lr` must be a finite number > 0"),
        ({"lr": float("inf")}, "`lr` must be a finite number > 0"),
        ({"l1": float("nan")}, "`l1` must be a finite number >= 0"),
        ({"weight_decay": float("inf")}, "`weight_decay` must be a finite number >= 0"),
        ({"num_classes": 5}, r"`num_classes`=5 .* model outputs 10"),
        ({"model": nn.Flatten()}, "`num_classes`"),
    ],
)
def test_bad_input_raises_naming_the_option(kwargs, message):
    kwargs = {"model": small_convnet(), **kwargs}
    with pytest.raises(ValueError, match=message):
        ClassificationModule(**kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="`model`"):
        ClassificationModule("convnet3")  # type: ignore[arg-type]


def test_hyperparameters_are_saved_without_the_network():
    module = ClassificationModule(small_convnet(), lr=0.01, l1=1e-5, label_smoothing=0.1)
    assert module.hparams["lr"] == 0.01 and module.hparams["l1"] == 1e-5
    assert "model" not in module.hparams


def test_lr_finder_tunes_the_lr_attribute(tmp_path):
    from lightning.pytorch.tuner import Tuner

    torch.manual_seed(0)
    module = ClassificationModule(LeNet300100(in_features=64), optimizer="sgd", lr=1e-3)
    dm = ImageClassificationDataModule("digits", batch_size=32)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1))
    finder = Tuner(trainer).lr_find(module, datamodule=dm, min_lr=1e-4, max_lr=1.0, num_training=30)
    assert finder is not None and module.lr == pytest.approx(finder.suggestion())
    assert module.lr != 1e-3 and module.hparams["lr"] == module.lr
    assert {g["lr"] for g in module.configure_optimizers().param_groups} == {module.lr}


def test_short_fit_on_digits_learns_and_logs(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(LeNet300100(in_features=64), optimizer="adam", lr=3e-3, l1=1e-6)
    dm = ImageClassificationDataModule("digits", batch_size=64)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    for key in (
        "train_loss",
        "train_loss_task",
        "train_loss_l1",
        "val_loss",
        "val_acc",
        "val_acc_top5",
        "train_acc",
    ):
        assert key in logged, key
    assert logged["val_acc"] > 0.8
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert test["test_acc"] > 0.8 and math.isfinite(test["test_loss"])


def _resumable_fit(tmp_path, max_epochs: int, ckpt_path=None):
    from functools import partial

    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    module = ClassificationModule(
        LeNet300100(in_features=64, hidden=(32, 16)),
        optimizer="momentum",
        lr=0.05,
        weight_decay=1e-4,
        l1=1e-6,
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    trainer = Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=max_epochs,
            limit_train_batches=4,
            limit_val_batches=1,
            enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        )
    )
    trainer.fit(
        module,
        datamodule=ImageClassificationDataModule("digits", batch_size=32),
        ckpt_path=ckpt_path,
        weights_only=True,
    )
    return module, trainer


def test_resume_from_checkpoint_gives_the_same_weights(tmp_path):
    straight, _ = _resumable_fit(tmp_path / "a", max_epochs=2)
    _resumable_fit(tmp_path / "b", max_epochs=1)
    resumed, trainer = _resumable_fit(
        tmp_path / "b", max_epochs=2, ckpt_path=tmp_path / "b" / "ckpt" / "last.ckpt"
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**2)
    # the checkpoint loads with weights_only=True and the network given again (it is not a hyperparameter)
    loaded = ClassificationModule.load_from_checkpoint(
        tmp_path / "b" / "ckpt" / "last.ckpt",
        model=LeNet300100(in_features=64, hidden=(32, 16)),
        weights_only=True,
    )
    assert loaded.lr == 0.05 and loaded.l1 == 1e-6
    torch.testing.assert_close(loaded.model.fc1.weight, resumed.model.fc1.weight)


def test_train_metrics_cover_every_batch_of_the_epoch(tmp_path):
    """The training metrics are handed to Lightning once per epoch but updated at every step: the logged
    train_acc is the accuracy over all the epoch's batches, not only the last one."""
    torch.manual_seed(0)
    module = ClassificationModule(LeNet300100(in_features=64), optimizer="sgd", lr=1e-12)  # weights fixed
    dm = ImageClassificationDataModule("digits", batch_size=100)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    trainer.fit(module, datamodule=dm)
    assert trainer.num_training_batches > 2
    split = dm.train_split
    with torch.no_grad():
        predictions = module(dm.to_model_input(split.images, train=False)).argmax(-1)
    expected = (predictions == split.labels).float().mean()
    torch.testing.assert_close(trainer.callback_metrics["train_acc"], expected, atol=1e-6, rtol=0)
    # an epoch cut short by max_steps still logs its metrics
    module2 = ClassificationModule(LeNet300100(in_features=64))
    trainer2 = Trainer(**quiet_trainer_kwargs(tmp_path / "short", max_steps=2, limit_val_batches=0))
    trainer2.fit(module2, datamodule=dm)
    assert "train_acc" in trainer2.callback_metrics


# ------------------------------------------------------------------------------------ dry run at setup (issue 27)
class _EpochCounter(Callback):
    def __init__(self):
        self.epochs = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs += 1


def _fit_tiny(tmp_path, network, dm=None, **module_kwargs):
    counter = _EpochCounter()
    trainer = Trainer(
        callbacks=[counter], **quiet_trainer_kwargs(tmp_path, limit_train_batches=1, limit_val_batches=1)
    )
    module = ClassificationModule(network, **module_kwargs)
    try:
        trainer.fit(module, datamodule=dm or ImageClassificationDataModule("digits", batch_size=16))
    except Exception:
        assert counter.epochs == 0, "the error came after an epoch had started, not at setup"
        raise
    return module, trainer


def test_rgb_network_on_grey_images_names_the_channels_fix(tmp_path):
    from torchvision.models import resnet18

    network = resnet18(num_classes=10)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(ValueError) as info:
        _fit_tiny(tmp_path, network)
    message = str(info.value)
    assert "expects 3 input channels but the data give 1" in message
    assert (
        "`data.init_args.channels: 3`" in message and "ImageClassificationDataModule(channels=3)" in message
    )
    assert "expected input[2, 1, 8, 8] to have 3 channels" in message  # torch's words, kept
    assert "dry run" in message
    # the dry run changed nothing: no batch-norm statistics, no mode
    for k, v in network.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert network.training
    # and the fix it names works
    _, trainer = _fit_tiny(
        tmp_path, resnet18(num_classes=10), ImageClassificationDataModule("digits", batch_size=16, channels=3)
    )
    assert trainer.state.finished


def test_grey_network_on_colour_images_names_channels_1(tmp_path):
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    dm = ImageClassificationDataModule(images=images, labels=torch.arange(40) % 10, batch_size=8)
    with pytest.raises(
        ValueError, match=r"expects 1 input channels but the data give 3.*`data.init_args.channels: 1`"
    ):
        _fit_tiny(tmp_path, small_convnet(), dm)


def test_network_with_other_channels_names_in_channels(tmp_path):
    with pytest.raises(ValueError, match=r"expects 4 input channels but the data give 1.*`in_channels`"):
        _fit_tiny(tmp_path, small_convnet(in_channels=4))


def test_images_too_small_for_the_network_name_image_size(tmp_path):
    from lightning_optim.models import LeNet5

    with pytest.raises(ValueError) as info:
        _fit_tiny(tmp_path, LeNet5())  # built for 28x28: its second 5x5 convolution meets a 2x2 map
    message = str(info.value)
    assert "8x8 images are too small for the network" in message
    assert "`data.init_args.image_size: 28`" in message  # the smallest tried size that passes
    assert "Kernel size can't be greater than actual input size" in message
    _, trainer = _fit_tiny(
        tmp_path, LeNet5(), ImageClassificationDataModule("digits", batch_size=16, image_size=28)
    )
    assert trainer.state.finished


def test_network_built_for_another_image_size_names_image_size(tmp_path):
    with pytest.raises(ValueError, match=r"built for another input size than the data's 8x8.*`image_size`"):
        _fit_tiny(tmp_path, ConvNet3(image_size=28, channels=(4, 8, 8), hidden=16))


def test_other_number_of_outputs_than_classes_names_num_classes(tmp_path):
    head = nn.Sequential(nn.Conv2d(1, 5, 8), nn.Flatten())  # no nn.Linear: num_classes cannot be inferred
    with pytest.raises(ValueError, match=r"outputs 5 values per sample but the module's `num_classes` is 10"):
        _fit_tiny(tmp_path, head, num_classes=10)
    # the module's count agrees with the network, the data have more classes
    with pytest.raises(
        ValueError, match=r"outputs 5 values .* the data have 10 classes.*`num_classes` to 10"
    ):
        _fit_tiny(tmp_path, nn.Sequential(nn.Flatten(), nn.Linear(64, 5)))


def test_more_outputs_than_the_in_memory_labels_use_is_fine(tmp_path):
    # in-memory labels only show a lower bound of the classes: a 10-way network on labels 0..2 trains
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    dm = ImageClassificationDataModule(images=images, labels=torch.arange(40) % 3, batch_size=8)
    _, trainer = _fit_tiny(tmp_path, small_convnet(), dm)
    assert trainer.state.finished


class _Broken(nn.Module):
    def __init__(self, error: Exception):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.error = error

    def forward(self, x):
        raise self.error


class _OddError(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(f"code {code}: {detail}")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TypeError("forward got a tensor it cannot use"), TypeError),
        (_OddError(7, "odd failure"), RuntimeError),
    ],
)
def test_other_dry_run_errors_keep_their_message_and_say_where(error, kind):
    module = ClassificationModule(_Broken(error))
    module.example_input_array = torch.zeros(2, 1, 8, 8)
    with pytest.raises(kind) as info:
        module.setup("fit")
    message = str(info.value)
    assert str(error) in message and "at setup by the dry run" in message and "`dry_run: false`" in message
    assert info.value.__cause__ is error


def test_dry_run_false_skips_the_check():
    module = ClassificationModule(_Broken(TypeError("never called")), dry_run=False)
    module.example_input_array = torch.zeros(2, 1, 8, 8)
    module.setup("fit")
    assert module.hparams["dry_run"] is False


def test_no_shape_and_no_example_means_no_dry_run():
    module = ClassificationModule(_Broken(TypeError("never called")))
    module.setup("fit")  # no trainer, no data module, no example_input_array: nothing to check


def test_dry_run_restores_every_mode_and_runs_once_per_shape():
    network = small_convnet(norm="batch")
    calls = []
    network.register_forward_hook(lambda m, args, out: calls.append((m.training, args[0].shape[0])))
    module = ClassificationModule(network)
    module.train()
    frozen = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)][0]
    frozen.eval()  # a user's frozen layer stays in eval mode
    stats = frozen.running_mean.clone()
    module.example_input_array = torch.randn(3, 1, 8, 8) + 5
    module.setup("fit")
    module.setup("test")
    assert calls == [(False, 3)]  # once, in eval mode, on the example
    assert module.training and network.training and not frozen.training
    assert all(m.training for m in network.modules() if m is not frozen)
    assert torch.equal(frozen.running_mean, stats)
    assert torch.is_grad_enabled()


# ------------------------------------------------------------------------------------------ sharding (FSDP2)
# The 2-process FSDP2 fits that shard the network are in tests/callbacks/test_fsdp2.py.
def test_unknown_sharding_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"Unknown `sharding` 'fsdp'; allowed: \['fsdp2'\] or null"):
        ClassificationModule(small_convnet(), sharding="fsdp")


def test_sharding_is_a_typed_hyperparameter_for_yaml():
    import inspect

    parameter = inspect.signature(ClassificationModule.__init__).parameters["sharding"]
    assert parameter.default is None and "str | None" in str(parameter.annotation)
    assert ClassificationModule(small_convnet(), sharding="fsdp2").hparams["sharding"] == "fsdp2"


class _StepCounter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, *args) -> None:
        self.steps += 1


def test_sharding_under_another_strategy_is_refused_at_setup_before_any_step(tmp_path):
    counter = _StepCounter()
    module = ClassificationModule(small_convnet(), sharding="fsdp2", dry_run=False)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, callbacks=[counter]))
    with pytest.raises(
        ValueError, match=r"`sharding`='fsdp2' needs .*ModelParallelStrategy.*got SingleDeviceStrategy"
    ):
        trainer.fit(module, train_dataloaders=loader)
    assert counter.steps == 0


def _model_parallel_trainer() -> Trainer:
    from datetime import timedelta

    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=30)
    )
    return Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False)


def test_model_parallel_strategy_without_sharding_is_refused_at_setup():
    module = ClassificationModule(small_convnet(), dry_run=False)
    module.trainer = _model_parallel_trainer()
    with pytest.raises(
        ValueError, match=r"ModelParallelStrategy.*`sharding` is null: set `sharding='fsdp2'`"
    ):
        module.setup("fit")


def test_a_subclass_that_parallelizes_itself_is_left_alone_under_model_parallel_strategy():
    class OwnParallel(ClassificationModule):
        def configure_model(self) -> None:  # the user's own parallelization
            pass

    module = OwnParallel(small_convnet(), dry_run=False)
    module.trainer = _model_parallel_trainer()
    module.setup("fit")  # no error


def test_configure_model_without_sharding_changes_nothing():
    module = ClassificationModule(small_convnet())
    before = [type(m) for m in module.modules()]
    module.configure_model()
    assert [type(m) for m in module.modules()] == before
