"""ProgressivePruning behaviour: exact sparsity, masks held through optimizer steps, schedule, resume,
structured compaction, phases, logging, mixed precision, DDP and the CLI; channel groups; blocks (layer pruning)."""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.functional.pruning.schedules import event_sparsity, scheduled_sparsity
from lightning_optim.models import ConvNet3, LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs
from tests.nets import ResidualCNN, SEDepthwiseCNN


def small_mlp() -> nn.Module:
    return LeNet300100(in_features=64, hidden=(48, 24))


def fixed_loader(n: int = 192, batch_size: int = 16, seed: int = 0) -> DataLoader:
    """Deterministic, unshuffled 8x8 data (so a resumed run sees the same batches)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = (x.flatten(1)[:, :10].argmax(1)).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def fit(tmp_path, cb, model=None, epochs=2, optimizer="adam", lr=1e-2, weight_decay=None, extra=(), **kw):
    model = model if model is not None else small_mlp()
    module = ClassificationModule(model, optimizer=optimizer, lr=lr, weight_decay=weight_decay)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=[cb, *extra], **kw))
    trainer.fit(module, train_dataloaders=fixed_loader())
    return trainer, module


class MaskChecker(Callback):
    """After every training batch, every masked weight is zero."""

    def __init__(self, pruning: ProgressivePruning) -> None:
        self.pruning = pruning
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.model.named_parameters())
        for name, mask in self.pruning.masks.items():
            w = params[name].detach()
            assert torch.count_nonzero(w * ~mask.expand_as(w)) == 0, name
            self.checked += 1


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_exact_layerwise_sparsity(tmp_path, sparsity):
    cb = ProgressivePruning(final_sparsity=sparsity, start=0, end=6, unit="step", frequency=2, verbose=False)
    _, module = fit(tmp_path, cb)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(module.model, name).weight
        assert int((w == 0).sum()) == round(sparsity * w.numel()), name
        assert torch.count_nonzero(getattr(module.model, name).bias) > 0  # biases left alone
    assert cb.global_sparsity() == pytest.approx(sparsity, abs=1e-3)


def test_exact_global_sparsity_with_overrides_and_dense_last(tmp_path):
    cb = ProgressivePruning(
        final_sparsity=0.9,
        start=0,
        end=4,
        unit="step",
        scope="global",
        keep_last_dense=True,
        layer_sparsity={"fc2": 0.5},
        verbose=False,
    )
    _, module = fit(tmp_path, cb, epochs=1)
    m = module.model
    assert torch.count_nonzero(m.fc3.weight) == m.fc3.weight.numel()
    assert int((m.fc2.weight == 0).sum()) == round(0.5 * m.fc2.weight.numel())
    assert int((m.fc1.weight == 0).sum()) == round(0.9 * m.fc1.weight.numel())  # the only global layer
    assert set(cb.masks) == {"fc1.weight", "fc2.weight"}


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd_momentum", "adam_weight_decay", "adamw"],
)
def test_masked_weights_stay_zero_after_optimizer_steps(tmp_path, optimizer):
    cb = ProgressivePruning(final_sparsity=0.7, start=2, end=6, unit="step", frequency=2, verbose=False)
    checker = MaskChecker(cb)
    _, module = fit(tmp_path, cb, optimizer=optimizer, lr=None, extra=[checker], epochs=2)
    assert checker.checked > 0
    # fine-tuning after the end keeps the final masks: exactly 70% zeros at the end
    w = module.model.fc1.weight
    assert int((w == 0).sum()) == round(0.7 * w.numel())
    # and the surviving weights did move during fine-tuning
    assert torch.count_nonzero(w) == w.numel() - round(0.7 * w.numel())


def test_pruning_events_follow_the_schedule(tmp_path):
    cb = ProgressivePruning(
        final_sparsity=0.8, initial_sparsity=0.1, start=3, end=15, unit="step", frequency=4, verbose=False
    )
    states = []

    class PhaseRecorder(Callback):
        def on_train_batch_end(self, trainer, *args):
            states.append((trainer.global_step, cb.phase_state(trainer)))

    fit(tmp_path, cb, extra=[PhaseRecorder()], epochs=2)  # 24 steps
    assert [h["step"] for h in cb.history] == [3, 7, 11, 15]
    for h in cb.history:
        assert h["target"] == pytest.approx(scheduled_sparsity(int(h["step"]), 3, 15, 4, 0.1, 0.8))
        assert h["sparsity"] == pytest.approx(h["target"], abs=2e-3)
    assert dict(states)[2] == "pending" and dict(states)[8] == "active" and dict(states)[15] == "done"


def test_layer_overrides_follow_the_event_sparsity_at_every_event(tmp_path):
    overrides = {"fc2": 0.4, "fc*": 0.6}  # fc2 takes the first matching pattern, fc1 and fc3 the second
    cb = ProgressivePruning(
        final_sparsity=0.9,
        initial_sparsity=0.5,
        start=2,
        end=10,
        unit="step",
        frequency=4,
        schedule="linear",
        layer_sparsity=overrides,
        verbose=False,
    )
    seen = []

    class LayerRecorder(Callback):
        def on_train_batch_end(self, trainer, *args):
            if cb.history and (not seen or seen[-1][0] != cb.history[-1]["step"]):
                seen.append((cb.history[-1]["step"], cb.layer_sparsities()))

    _, module = fit(tmp_path, cb, extra=[LayerRecorder()], epochs=1)
    assert [step for step, _ in seen] == [2, 6, 10]
    for step, stats in seen:
        assert cb.history[[h["step"] for h in cb.history].index(step)]["target"] == event_sparsity(
            int(step), 2, 10, 0.5, 0.9, "linear"
        )
        for layer in ("fc1", "fc2", "fc3"):
            target = event_sparsity(int(step), 2, 10, 0.5, 0.9, "linear", layer, overrides)
            shape, kept, _ = stats[f"{layer}.weight"]
            assert shape[0] * shape[1] - kept == round(target * shape[0] * shape[1]), (step, layer)
    assert int((module.model.fc2.weight == 0).sum()) == round(0.4 * module.model.fc2.weight.numel())


def _full_sparsity(progress, initial, final):
    return 1.0


def test_schedule_value_out_of_range_stops_fit(tmp_path):
    cb = ProgressivePruning(start=0, end=4, unit="step", schedule=_full_sparsity, verbose=False)
    with pytest.raises(ValueError, match=r"schedule\(progress, initial_sparsity, final_sparsity\)"):
        fit(tmp_path, cb, epochs=1)


def test_epoch_units_and_once_per_epoch(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.6, start=1, end=2, unit="epoch", verbose=False)
    fit(tmp_path, cb, epochs=3)  # 12 steps per epoch
    assert [h["step"] for h in cb.history] == [12, 24]
    assert cb.phase_state(None) == "done"


def test_sparsity_logged_at_each_pruning_step(tmp_path):
    class Recorder(Logger):
        name, version = "rec", 0
        metrics: list = []

        @property
        def experiment(self):
            return None

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, dict(metrics)))

    logger = Recorder()
    cb = ProgressivePruning(final_sparsity=0.5, start=0, end=8, unit="step", frequency=4, verbose=False)
    fit(tmp_path, cb, epochs=1, logger=logger)
    logged = [m for _, m in logger.metrics if "pruning/sparsity" in m]
    assert len(logged) == 3
    assert logged[-1]["pruning/sparsity/fc1.weight"] == pytest.approx(0.5, abs=1e-3)


def test_summary_table(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.5, start=0, end=2, unit="step", verbose=False)
    fit(tmp_path, cb, epochs=1)
    table = cb.summary_table()
    assert "| fc1.weight | 48x64 | 1536 | 50.00% |" in table and "**total**" in table


def test_resume_mid_ramp_continues_exactly(tmp_path):
    kwargs = dict(final_sparsity=0.8, start=4, end=20, unit="step", frequency=4, verbose=False)
    seed_everything(0)
    straight = ProgressivePruning(**kwargs)
    _, module_a = fit(tmp_path / "a", straight, model=small_mlp(), epochs=2, optimizer="momentum", lr=0.05)

    seed_everything(0)
    first = ProgressivePruning(**kwargs)
    trainer_b, _ = fit(tmp_path / "b", first, model=small_mlp(), epochs=1, optimizer="momentum", lr=0.05)
    ckpt = tmp_path / "mid.ckpt"
    trainer_b.save_checkpoint(ckpt)
    assert first.phase_state(trainer_b) == "active"  # the checkpoint is in the middle of the ramp

    resumed = ProgressivePruning(**kwargs)
    module_c = ClassificationModule(small_mlp(), optimizer="momentum", lr=0.05)
    trainer_c = Trainer(**quiet_trainer_kwargs(tmp_path / "c", max_epochs=2, callbacks=[resumed]))
    trainer_c.fit(module_c, train_dataloaders=fixed_loader(), ckpt_path=str(ckpt))
    for (name, a), (_, c) in zip(module_a.model.state_dict().items(), module_c.model.state_dict().items()):
        assert torch.allclose(a, c, atol=1e-6), name
    assert set(straight.masks) == set(resumed.masks)
    for name in straight.masks:
        assert torch.equal(straight.masks[name], resumed.masks[name])
    assert straight.history == resumed.history


def test_checkpoint_is_model_plus_compact_masks_and_deepcopy_works(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.9, start=0, end=2, unit="step", verbose=False)
    _, module = fit(tmp_path, cb, epochs=1)
    state = cb.state_dict()
    mask_bytes = sum(p.numel() for p in state["masks"].values())
    weight_bytes = sum(module.model.get_parameter(n).numel() * 4 for n in cb.masks)
    assert mask_bytes * 32 <= weight_bytes + 32 * len(cb.masks)
    assert not any(k.endswith(("_orig", "_mask")) for k in module.model.state_dict())
    clone = copy.deepcopy(module.model)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(clone(x), module.model(x))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = ProgressivePruning(final_sparsity=0.9, start=0, end=2, unit="step")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict()["events_done"] == state["events_done"]


def test_structured_pruning_compacts_at_fit_end(tmp_path):
    seed_everything(0)
    net = ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)
    cb = ProgressivePruning(
        final_sparsity=0.5,
        start=0,
        end=6,
        unit="step",
        frequency=2,
        granularity="filter",
        module_types=["Conv2d"],
        compact_at_end=True,
        verbose=False,
    )
    module = ClassificationModule(net, lr=1e-2)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1, callbacks=[cb]))
    trainer.fit(module, train_dataloaders=fixed_loader())
    masked = net.eval()
    # the masked network: half of each conv's filters, their batch-norm scale/shift zero
    assert int((masked.features.block2.bn.weight == 0).sum()) == 8
    compact = module.model.eval()
    assert compact is cb.compacted_model
    assert [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv2d)] == [4, 8, 16]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert (masked(x) - compact(x)).abs().max() <= 1e-5
    trainer.test(module, dataloaders=fixed_loader(32), verbose=False)  # the compact model keeps working


def test_include_exclude_patterns(tmp_path):
    net = ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)
    cb = ProgressivePruning(include=["features.*"], exclude=["*.block1.*"])
    assert list(cb.select_modules(net)) == ["features.block2.conv", "features.block3.conv"]
    cb = ProgressivePruning(module_types=["Linear"], keep_first_dense=True)
    assert list(cb.select_modules(net)) == ["classifier.fc2"]
    # norms and embeddings are never selected by default
    assert all(
        isinstance(m, (nn.Linear, nn.Conv2d)) for m in ProgressivePruning().select_modules(net).values()
    )


def test_no_module_matched(tmp_path):
    cb = ProgressivePruning(include=["nothing.*"])
    with pytest.raises(ValueError, match="matched no module"):
        fit(tmp_path, cb, epochs=1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"final_sparsity": 1.0}, "final_sparsity"),
        ({"final_sparsity": -0.1}, "final_sparsity"),
        ({"initial_sparsity": 1.5}, "initial_sparsity"),
        ({"start": 5, "end": 2}, "end"),
        ({"start": -1}, "start"),
        ({"frequency": 0}, "frequency"),
        ({"unit": "batch"}, "unit"),
        ({"schedule": "exponential"}, "schedule"),
        ({"granularity": "block"}, "granularity"),
        ({"importance": "taylor"}, "importance"),
        ({"scope": "network"}, "scope"),
        ({"module_types": ["Dense"]}, "module_types"),
        ({"layer_sparsity": {"fc1": 1.2}}, "layer_sparsity"),
        ({"compact_at_end": True}, "compact_at_end"),
        ({"granularity": "blocks", "layer_sparsity": {"blocks.0": 0.5}}, "`layer_sparsity` does not apply"),
        ({"granularity": "blocks", "importance_batches": 0}, "`importance_batches` must be an int >= 1"),
        ({"granularity": "blocks", "importance_batches": 1.5}, "`importance_batches` must be an int >= 1"),
        ({"importance_batches": 2}, r"`importance_batches` applies to granularity='blocks' only"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProgressivePruning(**kwargs)


def test_bf16_mixed(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.6, start=0, end=6, unit="step", frequency=3, verbose=False)
    checker = MaskChecker(cb)
    _, module = fit(tmp_path, cb, epochs=1, precision="bf16-mixed", extra=[checker])
    w = module.model.fc1.weight
    assert w.dtype == torch.float32 and int((w == 0).sum()) == round(0.6 * w.numel())
    assert checker.checked > 0


class _RankNoise(Callback):
    """Makes the weights differ per rank before pruning: masks must still agree (rank 0's are broadcast)."""

    def on_train_start(self, trainer, pl_module):
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1234 + trainer.global_rank)
            for p in pl_module.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)


class _SaveMasks(Callback):
    def __init__(self, cb, folder):
        self.cb, self.folder = cb, folder

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {n: m.clone() for n, m in self.cb.masks.items()},
            Path(self.folder) / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_masks_identical_on_every_rank(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.7, start=0, end=4, unit="step", frequency=2, verbose=False)
    module = ClassificationModule(small_mlp(), lr=1e-2)
    trainer = Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=1,
            devices=2,
            strategy="ddp_spawn",
            limit_train_batches=6,
            callbacks=[_RankNoise(), cb, _SaveMasks(cb, tmp_path)],
        )
    )
    trainer.fit(module, train_dataloaders=fixed_loader())
    m0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    m1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(m0) == set(m1) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for name in m0:
        assert torch.equal(m0[name], m1[name]), name
        assert int((~m0[name]).sum()) == round(0.7 * m0[name].numel())


def test_cli_yaml_round_trip(tmp_path):
    from lightning_optim.cli import main

    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"""
seed_everything: 0
trainer:
  max_epochs: 2
  limit_train_batches: 4
  limit_val_batches: 2
  limit_test_batches: 2
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path / "run1"}
  callbacks:
    - class_path: ProgressivePruning
      init_args:
        final_sparsity: 0.75
        start: 0
        end: 1
        unit: epoch
        schedule: lightning_optim.functional.pruning.schedules.linear_schedule
        include: ["fc*"]
        exclude: ["fc3"]
        layer_sparsity: {{"fc2": 0.5}}
model:
  class_path: ClassificationModule
  init_args:
    model:
      class_path: LeNet300100
      init_args: {{in_features: 64, hidden: [32, 16]}}
data:
  class_path: ImageClassificationDataModule
  init_args: {{dataset: digits, batch_size: 32}}
"""
    )
    # --print_config gives a complete config that parses back to the same callback arguments
    import contextlib

    import yaml

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(out.getvalue())
    (cb_cfg,) = [c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("ProgressivePruning")]
    assert cb_cfg["init_args"]["layer_sparsity"] == {"fc2": 0.5}
    assert cb_cfg["init_args"]["schedule"] == "lightning_optim.functional.pruning.schedules.linear_schedule"
    main(["fit", "--config", str(config)])
    saved = tmp_path / "run1" / "config.yaml"
    assert saved.is_file() and "ProgressivePruning" in saved.read_text()
    # reload the saved config and train again
    main(["fit", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "run2")])
    assert (tmp_path / "run2" / "config.yaml").is_file()


@pytest.mark.parametrize(
    "recipe", ["prune_lenet300.yaml", "prune_lenet5.yaml", "prune_convnet3_structured.yaml"]
)
def test_example_recipes_instantiate(recipe):
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI

    path = Path(__file__).resolve().parents[2] / "examples" / recipe
    cli = LightningOptimCLI(
        ClassificationModule,
        LightningDataModule,
        args=["--config", str(path)],
        run=False,
        auto_configure_optimizers=False,
    )
    pruning = [cb for cb in cli.trainer.callbacks if isinstance(cb, ProgressivePruning)]
    assert len(pruning) == 1 and pruning[0].phase_name == "pruning"
    assert pruning[0].select_modules(cli.model.model)


def test_structured_separable_cnn_global_l1_compacts(tmp_path):
    from lightning_optim.models import SeparableCNN

    seed_everything(0)
    net = SeparableCNN(channels=(8, 16, 16, 16), strides=(2, 2, 1))
    cb = ProgressivePruning(
        final_sparsity=0.4,
        start=0,
        end=4,
        unit="step",
        granularity="channel",
        scope="global",
        module_types=["Conv2d"],
        exclude=["*.conv_dw"],
        compact_at_end=True,
        verbose=False,
    )
    module = ClassificationModule(net, lr=1e-2)
    Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1, callbacks=[cb])).fit(
        module, train_dataloaders=fixed_loader()
    )
    units = [
        m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and "conv_dw" not in n
    ]
    kept = [
        m.out_channels
        for n, m in module.model.named_modules()
        if isinstance(m, nn.Conv2d) and "conv_dw" not in n
    ]
    assert sum(units) - sum(kept) == round(0.4 * sum(units))  # global: exactly 40% of all filters removed
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (net.eval()(x) - module.model.eval()(x)).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# channel groups: dependency-group pruning of any traceable network (3x16x16 images, 10 classes)
def image_loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class ImageData(LightningDataModule):
    """Four batches of 3x16x16 images; ``input_shape`` lets the callback trace the network at setup."""

    input_shape = (3, 16, 16)

    def train_dataloader(self):
        return image_loader()


def residual_cnn() -> nn.Module:
    return ResidualCNN(width=8, classes=10)


def se_cnn() -> nn.Module:
    net = SEDepthwiseCNN()
    net.head = nn.Linear(8, 10)
    return net


def group_fit(
    tmp_path, cb, net, epochs=3, datamodule=True, ckpt_path=None, extra=(), optimizer="momentum", **kw
):
    module = ClassificationModule(net, optimizer=optimizer, lr=0.05)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=[cb, *extra], **kw))
    data = {"datamodule": ImageData()} if datamodule else {"train_dataloaders": image_loader()}
    trainer.fit(module, ckpt_path=ckpt_path, **data)
    return trainer, module


class MetricRecorder(Logger):
    name, version = "rec", 0

    def __init__(self):
        super().__init__()
        self.metrics = []

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


@pytest.mark.parametrize("factory", [residual_cnn, se_cnn], ids=["ResidualCNN", "SEDepthwiseCNN"])
def test_channel_groups_ramp_then_compaction_equals_masked_model(tmp_path, factory):
    seed_everything(0)
    net = factory()
    dense_params = count_parameters(net)
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=2, unit="epoch", granularity="channel_groups", compact_at_end=True
    )
    checker, logger = MaskChecker(cb), MetricRecorder()
    trainer, module = group_fit(tmp_path, cb, net, extra=[checker], logger=logger)
    assert checker.checked > 0 and [h["step"] for h in cb.history] == [0, 4, 8]
    compact = module.model
    assert compact is cb.compacted_model and compact is not net
    # the masked network (still `net`) and the compacted one compute the same function
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masked_out, compact_out = net.eval()(x), compact.eval()(x)
    assert (masked_out - compact_out).abs().max() <= 1e-4 * masked_out.abs().max()
    assert count_parameters(compact) < 0.6 * dense_params
    # every masked channel is removed: requested == removed, reported and logged
    text, requested, removed, channels = cb.compaction_summary()
    assert removed == requested > 0 and "kept" in text and "**total**" in text
    (logged,) = [m for _, m in logger.metrics if "pruning/removed_fraction" in m]
    assert logged["pruning/removed_fraction"] == pytest.approx(removed / channels)
    assert all(s == pytest.approx(0.5, abs=0.07) for _, _, s in cb.layer_sparsities().values())
    # the compacted module is a plain module that trains on
    before = [p.detach().clone() for p in compact.parameters()]
    Trainer(**quiet_trainer_kwargs(tmp_path / "more", max_steps=1)).fit(module, datamodule=ImageData())
    assert any(not torch.equal(a, b) for a, b in zip(before, compact.parameters()))


def _said(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def test_structured_compaction_says_what_was_requested_removed_and_kept(tmp_path, caplog):
    """Issue 27: on a residual CNN, filter pruning cannot remove the channels of the residual stream; the
    user is told once, per layer, what was requested, what went and why the rest stayed, in 100 columns."""
    seed_everything(0)
    cb = ProgressivePruning(
        final_sparsity=0.5,
        start=0,
        end=1,
        unit="epoch",
        granularity="filter",
        module_types=["Conv2d"],
        compact_at_end=True,
        verbose=False,
    )
    logger = MetricRecorder()
    with caplog.at_level(logging.INFO):
        group_fit(tmp_path, cb, residual_cnn(), epochs=2, logger=logger)
    (text,) = _said(caplog, "ProgressivePruning: compaction")  # once
    assert text == cb.compaction_text and cb.compaction_summary()[0] in text
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, [line for line in lines if len(line) > 100]
    assert lines[0] == "ProgressivePruning: compaction removed 16 of the 28 units pruning asked for (57%)."
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[3:9]}
    # the convolutions inside the blocks lose what was asked; those writing the residual stream keep it
    assert rows["blocks.0.0"] == rows["blocks.1.0"] == ["16", "8", "8", ""]
    assert rows["stem.0"] == rows["blocks.0.3"] == rows["blocks.1.3"] == ["8", "4", "0", "(a)"]
    assert rows["total"] == ["56", "28", "16", ""]
    assert "(a) 12 kept: they reach an addition (a residual connection" in text
    assert "granularity='channel_groups'" in text and "Parameters: " in text
    (logged,) = [m for _, m in logger.metrics if "pruning/removed_fraction" in m]
    assert logged["pruning/removed_fraction"] == pytest.approx(16 / 56)
    assert logged["pruning/requested_fraction"] == pytest.approx(28 / 56)
    assert [m.out_channels for m in cb.compacted_model.modules() if isinstance(m, nn.Conv2d)] == [
        8,
        8,
        8,
        8,
        8,
    ]


def test_channel_groups_compaction_summary_is_said_once_in_100_columns(tmp_path, caplog):
    seed_everything(0)
    cb = ProgressivePruning(
        final_sparsity=0.5,
        start=0,
        end=1,
        unit="epoch",
        granularity="channel_groups",
        compact_at_end=True,
        verbose=False,
        exclude=["blocks.1.*"],
    )
    with caplog.at_level(logging.INFO):
        group_fit(tmp_path, cb, residual_cnn(), epochs=2)
    (text,) = _said(caplog, "ProgressivePruning: compaction")
    assert text == cb.compaction_text
    assert max(len(line) for line in text.splitlines()) <= 100, text
    _, requested, removed, _ = cb.compaction_summary()
    assert removed == requested > 0
    assert text.startswith(f"ProgressivePruning: compaction removed {removed} of the {requested} channels")
    # the stream's group is written by 3 layers; the logits are kept, and the excluded block's channels
    assert "| blocks.0.3 (+2) |" in text and "(a) 10 kept: the model's output" in text
    assert "kept 16: its producers are not selected" in text


def test_phase_is_described_in_plain_words(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.8, start=1, end=3, unit="epoch", verbose=False)
    assert cb.describe_phase(None) == "pending (first pruning step at epoch 1)"
    trainer, _ = fit(tmp_path, cb, epochs=2)  # 12 steps an epoch: events at steps 12, 24, 36
    assert cb.phase_state(trainer) == "active" and cb.phase_steps_done == 2
    assert cb.describe_phase(trainer) == f"running (pruning step 2 of 3, target {cb.current_sparsity:.0%})"
    assert cb.describe_phase(trainer, finished=True).startswith("stopped before its end (pruning step 2 of 3")
    cb = ProgressivePruning(final_sparsity=0.5, start=0, end=1, unit="epoch", verbose=False)
    trainer, _ = fit(tmp_path / "done", cb, epochs=2)
    assert cb.describe_phase(trainer) == cb.describe_phase(trainer, finished=True) == "done (target 50%)"


def test_channel_groups_resume_mid_ramp_continues_exactly(tmp_path):
    kwargs = dict(
        final_sparsity=0.6, start=0, end=8, unit="step", frequency=2, granularity="groups", verbose=False
    )
    seed_everything(0)
    straight = ProgressivePruning(**kwargs)
    _, module_a = group_fit(tmp_path / "a", straight, residual_cnn(), epochs=3, datamodule=False)

    seed_everything(0)
    first = ProgressivePruning(**kwargs)
    trainer_b, _ = group_fit(tmp_path / "b", first, residual_cnn(), epochs=1, datamodule=False)
    assert first.phase_state(trainer_b) == "active"
    ckpt = tmp_path / "mid.ckpt"
    trainer_b.save_checkpoint(ckpt)

    resumed = ProgressivePruning(**kwargs)  # traced again, at the first batch (plain dataloaders)
    _, module_c = group_fit(
        tmp_path / "c", resumed, residual_cnn(), epochs=3, datamodule=False, ckpt_path=ckpt
    )
    assert set(straight.masks) == set(resumed.masks) and straight.masks
    for name in straight.masks:
        assert torch.equal(straight.masks[name], resumed.masks[name]), name
    for (name, a), (_, c) in zip(module_a.model.state_dict().items(), module_c.model.state_dict().items()):
        assert torch.equal(a, c), name
    assert straight.history == resumed.history


def test_channel_groups_global_scope_override_and_exclude(tmp_path):
    seed_everything(0)
    cb = ProgressivePruning(
        final_sparsity=0.5,
        start=0,
        end=2,
        unit="step",
        granularity="channel_groups",
        scope="global",
        layer_sparsity={"blocks.0.0": 0.25},
        exclude=["blocks.1.*"],
        verbose=False,
    )
    _, module = group_fit(tmp_path, cb, residual_cnn(), epochs=1)
    stats = cb.layer_sparsities()
    # blocks.1.0's channels are kept (its only producer is excluded); the override group goes on its own
    assert set(stats) == {"blocks.0.3", "blocks.0.0"}
    assert stats["blocks.0.0"] == ((16,), 12, 0.25)
    assert stats["blocks.0.3"][:2] == ((8,), 4)  # the residual stream, the only globally ranked group
    assert (
        cb.graph.pinned[
            "its producers are not selected (module_types/include/exclude/keep_first_dense/keep_last_dense)"
        ]
        == 16
    )
    assert not any(n.startswith("blocks.1.0") for n in cb.masks)
    assert "| blocks.0.0 | 16 | 12 | 25.00% |" in cb.summary_table()
    # the masks are what the model holds: stem, both blocks' last convs and norms lose the same 4 channels
    zero = [
        (module.model.get_parameter(n).detach().flatten(1).abs().sum(1) == 0)
        for n in ("stem.0.weight", "blocks.0.3.weight", "blocks.1.3.weight")
    ]
    assert all(torch.equal(z, zero[0]) for z in zero) and int(zero[0].sum()) == 4


def test_channel_groups_bf16_mixed(tmp_path):
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=4, unit="step", frequency=2, granularity="groups", verbose=False
    )
    checker = MaskChecker(cb)
    _, module = group_fit(tmp_path, cb, se_cnn(), epochs=2, precision="bf16-mixed", extra=[checker])
    assert checker.checked > 0 and module.model.stem[0].weight.dtype == torch.float32
    assert cb.global_sparsity() == pytest.approx(0.5, abs=0.07)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.conv(x)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = h * 2
        return self.head(h.mean((2, 3)))


class _NoEpoch(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        raise AssertionError("an epoch started")


@pytest.mark.parametrize("datamodule", [True, False], ids=["input_shape", "no_input_shape"])
def test_channel_groups_refuse_an_untraceable_model_at_setup(tmp_path, datamodule):
    from lightning_optim.functional.pruning.dependency import DependencyError

    cb = ProgressivePruning(granularity="channel_groups", compact_at_end=True, verbose=False)
    with pytest.raises(DependencyError, match=r"could not trace _Untraceable.*granularity='structured'"):
        group_fit(tmp_path, cb, _Untraceable(), datamodule=datamodule, extra=[_NoEpoch()])


def test_channel_groups_without_an_example_input_is_refused(tmp_path):
    def collate(items):  # inputs that are not one tensor: nothing to trace with
        x = torch.stack([i[0] for i in items])
        return {"input": {"image": x}, "target": torch.stack([i[1] for i in items])}

    loader = DataLoader(image_loader().dataset, batch_size=16, collate_fn=collate)
    cb = ProgressivePruning(granularity="channel_groups", compact_at_end=True, verbose=False)
    module = ClassificationModule(residual_cnn())
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, callbacks=[cb]))
    with pytest.raises(ValueError, match=r"compact_at_end=True\) traces the network on an example input"):
        trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 0


@pytest.mark.slow
def test_channel_groups_ddp_masks_identical_on_every_rank(tmp_path):
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=2, unit="step", frequency=2, granularity="groups", verbose=False
    )
    module = ClassificationModule(residual_cnn(), lr=1e-2)
    trainer = Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=1,
            devices=2,
            strategy="ddp_spawn",
            limit_train_batches=3,
            callbacks=[_RankNoise(), cb, _SaveMasks(cb, tmp_path)],
        )
    )
    trainer.fit(module, train_dataloaders=image_loader())
    m0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    m1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(m0) == set(m1) and "blocks.0.0.weight" in m0
    for name in m0:
        assert torch.equal(m0[name], m1[name]), name
    assert int((~m0["blocks.0.0.weight"]).sum()) == 8


@pytest.mark.parametrize("granularity", ["channel_groups", "filter"])
def test_checkpoint_after_compaction_reloads_into_the_compacted_architecture(tmp_path, granularity):
    """A checkpoint saved after compaction loads into the unpruned architecture as given (the shapes come from
    the file), resumes training with ``ckpt_path`` without masking again, and rebuilds from its weights alone."""
    seed_everything(0)

    def pruning():
        return ProgressivePruning(
            final_sparsity=0.5,
            start=0,
            end=1,
            unit="epoch",
            granularity=granularity,
            module_types=["Conv2d"],
            compact_at_end=True,
            verbose=False,
        )

    cb = pruning()
    trainer, module = group_fit(tmp_path, cb, residual_cnn(), epochs=2)
    compact = module.model.eval()
    path = tmp_path / "compacted.ckpt"
    trainer.save_checkpoint(path)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = compact(x)
    # load_from_checkpoint: the unpruned architecture is resized to the saved shapes, weights_only
    loaded = ClassificationModule.load_from_checkpoint(path, model=residual_cnn(), weights_only=True)
    assert [m.out_channels for m in loaded.model.modules() if isinstance(m, nn.Conv2d)] == [
        m.out_channels for m in compact.modules() if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), expected)
    # resume: the pruning state says "compacted", no mask of the old shapes is applied, training goes on
    cb2 = pruning()
    trainer2, module2 = group_fit(tmp_path / "resumed", cb2, residual_cnn(), epochs=3, ckpt_path=str(path))
    assert cb2.compacted and trainer2.global_step > trainer.global_step
    assert count_parameters(module2.model) == count_parameters(compact)
    # the network's weights alone rebuild it (resize=True): no pickled module needed
    from lightning_optim.weights import load_weights

    torch.save(compact.state_dict(), tmp_path / "weights.pt")
    rebuilt = load_weights(residual_cnn(), tmp_path / "weights.pt", "weights", resize=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected)


def test_channel_groups_say_when_a_group_keeps_one_channel(tmp_path):
    seed_everything(0)
    cb = ProgressivePruning(final_sparsity=0.95, start=0, end=0, unit="epoch", granularity="channel_groups")
    with pytest.warns(
        UserWarning, match=r"would remove every channel of the coupling group\(s\) \['blocks.0.0'"
    ):
        group_fit(tmp_path, cb, ResidualCNN(width=4, classes=10), epochs=1)


def test_channel_groups_on_a_transformer_prune_mlp_neurons_and_keep_the_stream(tmp_path):
    from tests.nets import TokenClassifier

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    seed_everything(0)
    net = TokenClassifier()
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=1, unit="epoch", granularity="channel_groups", compact_at_end=True
    )
    module = ClassificationModule(net, optimizer="adam", lr=1e-2)
    Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2, callbacks=[cb])).fit(
        module, train_dataloaders=loader
    )
    compact = module.model.eval()
    for block in compact.blocks:
        assert block.fc1.out_features == block.fc2.in_features == 16  # half of the 32 hidden neurons
        assert block.fc2.out_features == 16 and block.norm.normalized_shape == (16,)  # the stream stays
    with torch.no_grad():
        masked, out = net.eval()(x[:8]), compact(x[:8])
    assert (masked - out).abs().max() <= 1e-4 * masked.abs().max()
    text, requested, removed, _ = cb.compaction_summary()
    # the stream's half is requested too, and the summary says why it was kept
    assert (removed, requested) == (32, 40) and "a layer norm across channels" in text


def convnext() -> nn.Module:
    from tests.nets import TinyConvNeXt

    return TinyConvNeXt(classes=10)


def masked_layer_norms(net: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: keep-mask}`` of the masked layer norms (forward hooks) on ``net``."""
    from lightning_optim.functional.pruning.groups import MaskedLayerNorm

    return {
        name: hook.keep
        for name, m in net.named_modules()
        for hook in m._forward_hooks.values()
        if isinstance(hook, MaskedLayerNorm)
    }


class LayerNormChecker(Callback):
    """After every training batch, the network's masked layer norms are those of the pruning masks."""

    def __init__(self, pruning: ProgressivePruning) -> None:
        self.pruning = pruning
        self.counts: list[int] = []

    def check(self, pl_module) -> None:
        from lightning_optim.functional.pruning.groups import layer_norm_masks, pruned_units

        graph = self.pruning.graph
        expected = layer_norm_masks(graph, pruned_units(graph, self.pruning.masks))
        found = masked_layer_norms(pl_module.model)
        assert set(found) == set(expected)
        assert all(torch.equal(found[n], keep) for n, (_, keep) in expected.items())
        self.counts.append(len(found))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.check(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.check(pl_module)


def convnext_fit(tmp_path, extra=()):
    seed_everything(0)
    net = convnext()
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=2, unit="epoch", granularity="channel_groups", compact_at_end=True
    )
    checkers = [checker(cb) for checker in extra]
    trainer, module = group_fit(tmp_path, cb, net, extra=checkers)
    return trainer, module, cb, net, checkers


def test_channel_groups_convnext_streams_shrink_through_their_layer_norms(tmp_path):
    """ConvNeXt's streams go through layer norms across channels: masked during the ramp (normalised over the
    kept channels), removed at the end, and the compacted network computes what the masked one does."""
    _, module, cb, net, (masks, layer_norms) = convnext_fit(tmp_path, extra=[MaskChecker, LayerNormChecker])
    assert masks.checked > 0 and layer_norms.counts[0] == 0 and layer_norms.counts[-1] == 6
    compact = module.model.eval()
    assert compact is cb.compacted_model and not masked_layer_norms(compact)
    assert compact.stem[0].out_channels == 4 and compact.stem[1].normalized_shape == (4,)
    assert compact.stage1[1].norm.normalized_shape == (4,) and compact.down[0].normalized_shape == (4,)
    assert compact.down[1].out_channels == 8 and compact.norm.normalized_shape == (8,)
    text, requested, removed, _ = cb.compaction_summary()
    assert removed == requested > 0, text
    # the masked network (still `net`, with its masked layer norms) and the compacted one agree
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert len(masked_layer_norms(net)) == 6
    with torch.no_grad():
        masked_out, compact_out = net.eval()(x), compact(x)
    assert (masked_out - compact_out).abs().max() <= 1e-4 * masked_out.abs().max()


def test_channel_groups_convnext_checkpoint_after_compaction_reloads(tmp_path):
    trainer, module, *_ = convnext_fit(tmp_path)
    compact = module.model.eval()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "convnext.ckpt"
    trainer.save_checkpoint(path)
    # the unpruned architecture takes the saved widths (layer norms' normalized_shape included)
    loaded = ClassificationModule.load_from_checkpoint(path, model=convnext(), weights_only=True)
    assert loaded.model.stage1[0].norm.normalized_shape == (4,) and loaded.model.norm.normalized_shape == (8,)
    assert loaded.model.stage1[0].layer_scale.shape == (4, 1, 1) and not masked_layer_norms(loaded.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), compact(x))


@pytest.mark.parametrize("datamodule", [True, False], ids=["traced_at_setup", "traced_at_first_batch"])
def test_channel_groups_convnext_resume_restores_the_masked_layer_norms(tmp_path, datamodule):
    import pickle

    kwargs = dict(
        final_sparsity=0.6, start=0, end=8, unit="step", frequency=2, granularity="groups", verbose=False
    )
    seed_everything(0)
    straight = ProgressivePruning(**kwargs)
    _, module_a = group_fit(tmp_path / "a", straight, convnext(), epochs=3, datamodule=datamodule)

    seed_everything(0)
    first = ProgressivePruning(**kwargs)
    trainer_b, module_b = group_fit(tmp_path / "b", first, convnext(), epochs=1, datamodule=datamodule)
    assert first.phase_state(trainer_b) == "active" and len(masked_layer_norms(module_b.model)) == 6
    ckpt = tmp_path / "mid.ckpt"
    trainer_b.save_checkpoint(ckpt)
    # the callback and the masked network pickle (ddp_spawn), the network with its masked layer norms
    copy.deepcopy(first)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    clone = pickle.loads(pickle.dumps(module_b.model))
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), module_b.model.eval()(x), rtol=0, atol=0)

    resumed = ProgressivePruning(**kwargs)
    checker = LayerNormChecker(resumed)
    _, module_c = group_fit(
        tmp_path / "c", resumed, convnext(), epochs=3, datamodule=datamodule, ckpt_path=ckpt, extra=[checker]
    )
    assert checker.counts[0] == 6  # back before the first step after the restart
    for name in straight.masks:
        assert torch.equal(straight.masks[name], resumed.masks[name]), name
    for (name, a), (_, c) in zip(module_a.model.state_dict().items(), module_c.model.state_dict().items()):
        assert torch.equal(a, c), name
    assert straight.history == resumed.history


def test_channel_groups_recipe_from_yaml_compacts_and_tests_the_compacted_model(tmp_path):
    from lightning_optim.cli import build_cli

    cli = build_cli(
        [
            "fit",
            "--config",
            str(Path(__file__).resolve().parents[2] / "examples" / "prune_convnet3_channel_groups.yaml"),
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks.init_args.end=1",
        ]
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ProgressivePruning)]
    assert cb.compacted and cli.model.model is cb.compacted_model
    _, requested, removed, _ = cb.compaction_summary()
    assert removed == requested > 0
    assert [m.out_channels for m in cli.model.model.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64]
    assert "test_acc" in cli.trainer.callback_metrics  # test_after_fit ran on the compacted network


# ---------------------------------------------------------------------------------------------------------
# blocks: whole residual blocks replaced by identity (a stem, 4 residual blocks in a Sequential, a head)
def block_net(seed: int = 0) -> nn.Module:
    from tests.nets import TinyResNet

    seed_everything(seed)
    return TinyResNet(width=8, depth=4, classes=10)


def block_pruning(**kwargs) -> ProgressivePruning:
    """Linear ramp over steps 0..8, every 2 steps, to 3 of the 4 blocks: removed counts 0, 1, 2, 2, 3."""
    settings = dict(
        final_sparsity=0.75,
        start=0,
        end=8,
        unit="step",
        frequency=2,
        schedule="linear",
        granularity="blocks",
        verbose=False,
    )
    settings.update(kwargs)
    return ProgressivePruning(**settings)


def skipped(net: nn.Module) -> list[str]:
    from lightning_optim.functional.pruning import SkippedBlock

    return [n for n, m in net.named_modules() if isinstance(m, SkippedBlock)]


def test_blocks_removed_along_the_ramp_and_training_goes_on(tmp_path, caplog):
    net = block_net()
    dense_params = count_parameters(net)
    block_params = count_parameters(net.blocks[0])
    kept_before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cb = block_pruning(verbose=True)
    logger = MetricRecorder()
    module = ClassificationModule(
        net,
        optimizer="momentum",
        lr=0.05,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=3, callbacks=[cb], logger=logger))
    with caplog.at_level(logging.INFO):
        trainer.fit(module, datamodule=ImageData())  # 4 batches an epoch: 12 steps; blocks found at setup
    assert cb.block_candidates == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    # the number removed follows the ramp: round(target x 4) at each event
    steps = [0, 2, 4, 6, 8]
    expected = [round(event_sparsity(s, 0, 8, 0.0, 0.75, "linear") * 4) for s in steps]
    assert expected == [0, 1, 2, 2, 3]
    assert [h["step"] for h in cb.history] == steps and [h["removed"] for h in cb.history] == expected
    logged = [m["pruning/removed_blocks"] for _, m in logger.metrics if "pruning/removed_blocks" in m]
    assert logged == expected
    # the removed blocks are gone from the network, with their parameters
    assert len(cb.removed_blocks) == 3 and sorted(skipped(module.model)) == sorted(cb.removed_blocks)
    assert count_parameters(module.model) == dense_params - 3 * block_params
    # the optimizer holds exactly the remaining parameters, with their momentum, and the schedule went on
    # (3 epochs of StepLR: 0.05 / 8; a restarted scheduler would be at 0.05 / 2 after the last removal)
    (optimizer,) = trainer.optimizers
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in module.model.parameters()}
    assert all("momentum_buffer" in optimizer.state[p] for p in module.model.parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 / 8)
    # the kept block trained after the last removal
    (kept,) = [b for b in cb.block_candidates if b not in cb.removed_blocks]
    assert not torch.equal(
        module.model.get_parameter(f"{kept}.conv1.weight"), kept_before[f"{kept}.conv1.weight"]
    )
    # each removal was announced, and the summary lists what was requested, removed and measured
    text, requested, removed, candidates = cb.block_summary()
    assert (requested, removed, candidates) == (3, 3, 4)
    assert f"| {kept} | ResBlock | {block_params} | kept |" in text
    assert (
        "3 of 4 removed, 3 requested (100%)" in text and f"{3 * block_params} of {4 * block_params}" in text
    )
    for b in cb.removed_blocks:
        record = cb.block_records[b]
        assert record["removed_at"] in steps and isinstance(record["loss_increase"], float)
        assert f"| {b} | ResBlock | {block_params} | {record['removed_at']} |" in text
    first = cb.removed_blocks[0]
    assert f"step 2, target 18.8% of 4 blocks: removed {first} (" in caplog.text
    assert text in caplog.text  # the summary at the end of fit


def test_blocks_the_cheapest_blocks_are_removed(tmp_path, monkeypatch):
    """The blocks whose removal costs least go: with scores given, exactly the lowest ones; measured on data, a
    block whose branch is zero costs exactly nothing."""
    import lightning_optim.callbacks.pruning as pruning_module

    fixed = {"blocks.0": 3.0, "blocks.1": -1.0, "blocks.2": 0.5, "blocks.3": 2.0}
    monkeypatch.setattr(
        pruning_module, "block_importance", lambda model, names, *a: {n: fixed[n] for n in names}
    )
    cb = block_pruning(final_sparsity=0.5, end=0)  # one-shot: 2 of 4 at step 0
    group_fit(tmp_path / "fixed", cb, block_net(), epochs=1)
    assert cb.removed_blocks == ["blocks.1", "blocks.2"]
    monkeypatch.undo()

    net = block_net()
    with torch.no_grad():
        net.blocks[2].bn2.weight.zero_()  # blocks.2 adds zero to the stream
        net.blocks[2].bn2.bias.zero_()
    cb = block_pruning(final_sparsity=0.25, end=0)
    group_fit(tmp_path / "measured", cb, net, epochs=1)
    increases = {b: r["loss_increase"] for b, r in cb.block_records.items()}
    assert increases["blocks.2"] == 0.0 and all(v != 0.0 for b, v in increases.items() if b != "blocks.2")
    assert cb.removed_blocks == [min(increases, key=increases.get)]


def test_blocks_importance_on_recent_batches(tmp_path, monkeypatch):
    import lightning_optim.callbacks.pruning as pruning_module

    seen = []

    def record(model, names, batches, loss_fn):
        seen.append([x for x, _ in batches])
        return {n: float(i) for i, n in enumerate(names)}

    monkeypatch.setattr(pruning_module, "block_importance", record)
    cb = block_pruning(importance_batches=3)
    group_fit(tmp_path, cb, block_net(), epochs=3, datamodule=False)
    inputs = [x for x, _ in image_loader()]  # the 4 batches of an epoch, in order
    # removals at steps 2 (after batch 1), 4 (after batch 3) and 8 (after batch 3 of epoch 2)
    assert [len(batches) for batches in seen] == [2, 3, 3]
    assert all(torch.equal(a, b) for a, b in zip(seen[0], inputs[:2]))
    assert all(torch.equal(a, b) for a, b in zip(seen[1], inputs[1:4]))


def test_blocks_resume_mid_ramp_continues_exactly(tmp_path):
    seed_everything(0)
    straight = block_pruning()
    _, module_a = group_fit(tmp_path / "a", straight, block_net(), epochs=3, datamodule=False)

    seed_everything(0)
    first = block_pruning()
    trainer_b, _ = group_fit(tmp_path / "b", first, block_net(), epochs=1, datamodule=False)
    assert first.phase_state(trainer_b) == "active" and len(first.removed_blocks) == 2
    ckpt = tmp_path / "mid.ckpt"
    trainer_b.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["lightning_optim"]["removed_blocks"] == [f"model.{b}" for b in first.removed_blocks]

    resumed = (
        block_pruning()
    )  # a fresh architecture: the checkpoint's removals are applied before its weights
    _, module_c = group_fit(tmp_path / "c", resumed, block_net(), epochs=3, datamodule=False, ckpt_path=ckpt)
    assert resumed.removed_blocks == straight.removed_blocks and len(resumed.removed_blocks) == 3
    assert resumed.removed_blocks[:2] == first.removed_blocks
    assert resumed.history == straight.history
    assert skipped(module_c.model) == skipped(module_a.model)
    state_a, state_c = module_a.model.state_dict(), module_c.model.state_dict()
    assert list(state_a) == list(state_c)
    for name in state_a:
        assert torch.equal(state_a[name], state_c[name]), name


def test_blocks_checkpoint_loads_into_the_unpruned_architecture(tmp_path):
    cb = block_pruning()
    trainer, module = group_fit(tmp_path, cb, block_net(), epochs=3)
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    loaded = ClassificationModule.load_from_checkpoint(path, model=block_net(seed=1), weights_only=True)
    assert skipped(loaded.model) == skipped(module.model) and len(cb.removed_blocks) == 3
    assert count_parameters(loaded.model) == count_parameters(module.model)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), module.model.eval()(x))
    # the callback state alone (weights_only) and a pickled copy hold the removed blocks
    buffer = io.BytesIO()
    torch.save(cb.state_dict(), buffer)
    buffer.seek(0)
    restored = block_pruning()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.removed_blocks == cb.removed_blocks and restored.block_records == cb.block_records
    assert copy.deepcopy(cb).removed_blocks == cb.removed_blocks


def test_blocks_keep_one_block_and_say_so(tmp_path):
    from tests.nets import TokenClassifier

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 5, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    seed_everything(0)
    cb = ProgressivePruning(
        final_sparsity=0.9, start=0, end=0, unit="step", granularity="blocks", verbose=False
    )
    module = ClassificationModule(TokenClassifier(), lr=1e-2)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1, callbacks=[cb]))
    with pytest.warns(UserWarning, match="would remove every one of the 2 candidate blocks; one is kept"):
        trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=16))
    assert len(cb.removed_blocks) == 1 and len(skipped(module.model)) == 1


class _NoStep(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        raise AssertionError("an optimizer step ran")


@pytest.mark.parametrize("datamodule", [True, False], ids=["at_setup", "at_first_batch"])
def test_blocks_a_network_without_blocks_is_refused(tmp_path, datamodule):
    """ResidualCNN adds its skip connections outside its blocks: nothing to replace by identity. Refused at
    setup where the input shape is known, else at the first batch, before any optimizer step."""
    cb = block_pruning()
    match = r"ProgressivePruning\(granularity='blocks'\) found no block to remove in ResidualCNN: .*channel_groups"
    extra = [_NoEpoch()] if datamodule else [_NoStep()]
    with pytest.raises(ValueError, match=match):
        group_fit(tmp_path, cb, residual_cnn(), datamodule=datamodule, extra=extra)
    with pytest.raises(ValueError, match=r"in TinyResNet \(\['blocks.0', .*\] before include=\['nothing'\]"):
        group_fit(tmp_path, block_pruning(include=["nothing"]), block_net(), extra=[_NoEpoch()])


class _SaveBlocks(Callback):
    def __init__(self, cb, folder):
        self.cb, self.folder = cb, folder

    def on_train_end(self, trainer, pl_module):
        names = [n for n, m in pl_module.model.named_modules() if type(m).__name__ == "SkippedBlock"]
        torch.save(
            {"removed": list(self.cb.removed_blocks), "skipped": names, "step": trainer.global_step},
            Path(self.folder) / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_blocks_ddp_every_rank_removes_the_same_blocks(tmp_path):
    cb = block_pruning(end=2, frequency=1)  # removals at steps 1 and 2, then 2 more steps under DDP
    module = ClassificationModule(block_net(), lr=1e-2)
    trainer = Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=1,
            devices=2,
            strategy="ddp_spawn",
            limit_train_batches=4,
            callbacks=[_RankNoise(), cb, _SaveBlocks(cb, tmp_path)],
        )
    )
    trainer.fit(module, train_dataloaders=image_loader(n=128))  # 4 batches per rank
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0 == r1 and len(r0["removed"]) == 3 and sorted(r0["skipped"]) == sorted(r0["removed"])
    assert r0["step"] == 4


def _token_fit(tmp_path, cb, net, epochs=2, ckpt_path=None):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    seed_everything(0)
    module = ClassificationModule(net, optimizer="adam", lr=1e-2)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=[cb]))
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=16), ckpt_path=ckpt_path)
    return trainer, module, x


@pytest.mark.parametrize(("kind", "granularity"), [("mha", "channel_groups"), ("packed", "heads")])
def test_attention_heads_are_pruned_compacted_and_reloaded(tmp_path, kind, granularity):
    from lightning_optim.layers.attention import PrunedMultiheadAttention
    from tests.nets import TinyViT

    def pruning():
        return ProgressivePruning(
            final_sparsity=0.5, start=0, end=1, unit="epoch", granularity=granularity, compact_at_end=True
        )

    cb = pruning()
    trainer, module, x = _token_fit(tmp_path, cb, TinyViT(kind=kind))
    compact = module.model.eval()
    attn = compact.blocks[0].attn
    assert attn.num_heads == 2
    if kind == "mha":
        assert isinstance(attn, PrunedMultiheadAttention)
        assert compact.blocks[0].mlp.fc1.out_features == 16  # neurons too, with channel groups
    else:
        assert attn.qkv.out_features == 24 and attn.attn_dim == 8
        assert compact.blocks[0].mlp.fc1.out_features == 32  # heads only: the MLP stays
    text, requested, removed, _ = cb.compaction_summary()
    # everything requested goes but the residual stream's half (kept behind its layer norms, and said)
    stream = 8 if granularity == "channel_groups" else 0
    assert removed == requested - stream > 0 and "a layer norm across channels" in text, text
    path = tmp_path / "heads.ckpt"
    trainer.save_checkpoint(path)
    loaded = ClassificationModule.load_from_checkpoint(path, model=TinyViT(kind=kind), weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x[:4]), compact(x[:4]))
    _, module2, _ = _token_fit(
        tmp_path / "resumed", pruning(), TinyViT(kind=kind), epochs=3, ckpt_path=str(path)
    )
    assert count_parameters(module2.model) == count_parameters(compact)


def test_heads_granularity_refuses_a_network_without_attention(tmp_path):
    from tests.nets import TokenClassifier

    cb = ProgressivePruning(final_sparsity=0.5, start=0, end=1, unit="epoch", granularity="heads")
    with pytest.raises(ValueError, match=r"granularity='heads'\) found no attention heads"):
        _token_fit(tmp_path, cb, TokenClassifier())


class _CompactAtEpoch(Callback):
    """Asks the pruning callback to compact at the start of an epoch (what QAT's ``compact_pruned`` does)."""

    def __init__(self, cb, epoch):
        self.cb, self.epoch, self.done = cb, epoch, False

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            self.done = self.cb.compact(trainer, pl_module)


class _SaveCompacted(Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        widths = [m.out_channels for m in pl_module.model.modules() if isinstance(m, nn.Conv2d)]
        total = float(sum(p.detach().double().sum() for p in pl_module.model.parameters()))
        torch.save(
            {"widths": widths, "sum": total, "step": trainer.global_step},
            self.folder / f"rank{trainer.global_rank}.pt",
        )


def test_compact_during_fit_then_training_goes_on(tmp_path):
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=1, unit="epoch", granularity="channel_groups", verbose=False
    )
    compact_at = _CompactAtEpoch(cb, epoch=1)
    trainer, module = group_fit(tmp_path, cb, residual_cnn(), epochs=2, extra=[compact_at])
    assert compact_at.done and cb.compacted and trainer.global_step == 8
    assert count_parameters(module.model) < 0.5 * count_parameters(residual_cnn())
    assert cb.compact(trainer, module) is False  # once


def test_compact_before_the_ramp_ends_is_refused_naming_the_steps_left(tmp_path):
    # the ramp's last pruning step (step 8) comes after the compaction asked at the second epoch's start (step 4):
    # it would prune the compacted network with the masks of the one before
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=2, unit="epoch", granularity="channel_groups", verbose=False
    )
    with pytest.raises(
        ValueError, match=r"compact\(\) at optimizer step 4: the ramp has 1 pruning steps left"
    ):
        group_fit(tmp_path, cb, residual_cnn(), epochs=3, extra=[_CompactAtEpoch(cb, epoch=1)])
    assert not cb.compacted


@pytest.mark.slow
def test_compact_during_fit_under_ddp(tmp_path):
    cb = ProgressivePruning(
        final_sparsity=0.5, start=0, end=1, unit="epoch", granularity="channel_groups", verbose=False
    )
    module = ClassificationModule(residual_cnn(), lr=1e-2)
    trainer = Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=2,
            devices=2,
            strategy="ddp_spawn",
            limit_train_batches=2,
            callbacks=[_RankNoise(), cb, _CompactAtEpoch(cb, epoch=1), _SaveCompacted(tmp_path)],
        )
    )
    trainer.fit(module, train_dataloaders=image_loader(n=64))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["widths"] == r1["widths"] and r0["step"] == r1["step"] == 4
    assert abs(r0["sum"] - r1["sum"]) < 1e-6 * max(1.0, abs(r0["sum"]))  # DDP kept the ranks in step
    assert max(r0["widths"][:-1]) <= 8  # compacted (16-wide inner layers halved)


@pytest.mark.parametrize(
    ("net", "shape", "granularity"),
    [
        ("packed", (5, 8), "channel_groups"),
        ("mha", (5, 8), "heads"),
        ("convnext", (3, 32, 32), "channel_groups"),
        ("resnet", (3, 16, 16), "blocks"),
    ],
)
def test_the_new_granularities_under_bf16_mixed(tmp_path, net, shape, granularity):
    from tests.nets import TinyConvNeXt, TinyResNet, TinyViT

    seed_everything(0)
    model = {
        "packed": lambda: TinyViT(kind="packed"),
        "mha": lambda: TinyViT(kind="mha"),
        "convnext": TinyConvNeXt,
        "resnet": TinyResNet,
    }[net]()
    before = count_parameters(model)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, *shape, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    cb = ProgressivePruning(
        final_sparsity=0.5,
        start=0,
        end=1,
        unit="epoch",
        granularity=granularity,
        compact_at_end=granularity != "blocks",
        verbose=False,
    )
    module = ClassificationModule(model, optimizer="adam", lr=1e-2)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2, precision="bf16-mixed", callbacks=[cb]))
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=16))
    assert count_parameters(module.model) < 0.9 * before
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    with torch.no_grad():
        assert torch.isfinite(module.model.eval()(x[:4])).all()


# ------------------------------------------------------------------------------------------------ masks through steps
class _GradientAndClipChecker(Callback):
    """Placed after the pruning callback: before each optimizer step (after the callback masked the gradients,
    before Lightning clips them) the pruned gradients are zero, and after it (after the re-mask) every surviving
    weight moved by exactly ``-lr x`` its gradient clipped by the norm of the *masked* gradients; a pruned
    gradient that counted in the norm would clip the survivors harder."""

    def __init__(self, pruning: ProgressivePruning, lr: float, clip: float) -> None:
        self.pruning, self.lr, self.clip = pruning, lr, clip
        self.expected: dict[str, torch.Tensor] = {}
        self.checked = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = dict(pl_module.model.named_parameters())
        for name, mask in self.pruning.masks.items():
            grad = params[name].grad
            assert torch.count_nonzero(grad * ~mask.expand_as(grad)) == 0, (
                f"{name}: pruned gradients not masked"
            )
        grads = [p.grad.detach() * self._keep(n, p) for n, p in params.items() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = min(1.0, self.clip / (float(norm) + 1e-6))
        self.expected = {
            n: (p.detach() - self.lr * scale * p.grad * self._keep(n, p)).clone()
            for n, p in params.items()
            if p.grad is not None
        }

    def _keep(self, name, p):
        mask = self.pruning.masks.get(name)
        return torch.ones_like(p) if mask is None else mask.expand_as(p).to(p.dtype)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.expected:
            return
        for name, p in pl_module.model.named_parameters():
            torch.testing.assert_close(p.detach(), self.expected[name], rtol=1e-5, atol=1e-7, msg=name)
        self.checked += 1


def test_pruned_gradients_are_masked_before_clipping(tmp_path):
    """Gradient clipping by norm sees only the gradients of kept weights: the surviving weights move as if the
    pruned ones did not exist. (Without the gradient masking the re-mask after the step hides the pruned
    weights' updates; the survivors' clipped step still gives it away.)"""
    lr, clip = 0.1, 1e-3  # a bound small enough that every step is clipped
    cb = ProgressivePruning(final_sparsity=0.7, start=0, end=0, unit="step", verbose=False)
    checker = _GradientAndClipChecker(cb, lr, clip)
    fit(
        tmp_path,
        cb,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        lr=None,
        extra=[checker],
        epochs=1,
        gradient_clip_val=clip,
        gradient_clip_algorithm="norm",
    )
    assert checker.checked == 12


class _NoisySGD(torch.optim.Optimizer):
    """SGD with Gaussian noise added to every weight at each step (Langevin dynamics): it moves weights whose
    gradient is zero, as decoupled weight decay towards a non-zero point or a restored momentum would."""

    def __init__(self, params, lr: float = 0.01, noise: float = 1e-2) -> None:
        super().__init__(params, {"lr": lr, "noise": noise})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"]).add_(torch.randn_like(p), alpha=group["noise"])
        return loss


def test_pruned_weights_are_masked_again_after_every_optimizer_step(tmp_path):
    """An optimizer that moves weights with a zero gradient: masked gradients alone do not keep the pruned
    weights at zero, the re-mask after each step does."""
    cb = ProgressivePruning(final_sparsity=0.6, start=0, end=4, unit="step", frequency=2, verbose=False)
    checker = MaskChecker(cb)
    _, module = fit(tmp_path, cb, optimizer=lambda p: _NoisySGD(p), lr=None, extra=[checker], epochs=1)
    assert checker.checked == 12 * 3
    w = module.model.fc1.weight
    assert int((w == 0).sum()) == round(0.6 * w.numel())


def test_steps_per_epoch_round_up_under_gradient_accumulation(tmp_path):
    """12 batches with accumulate_grad_batches=5 make 3 optimizer steps per epoch (after batches 5, 10 and the
    last one): pruning steps at epochs 1, 2, 3 are optimizer steps 3, 6, 9, each at the end of the epoch before."""
    cb = ProgressivePruning(final_sparsity=0.6, start=1, end=3, unit="epoch", verbose=False)
    seen = []

    class EventRecorder(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if len(cb.history) > len(seen):
                seen.append((trainer.current_epoch, batch_idx, trainer.global_step))

    trainer, _ = fit(tmp_path, cb, extra=[EventRecorder()], epochs=4, accumulate_grad_batches=5)
    assert [h["step"] for h in cb.history] == [3, 6, 9]
    assert seen == [(0, 11, 3), (1, 11, 6), (2, 11, 9)]
    assert cb.done_epoch(trainer) == 3


def test_a_layer_override_below_the_initial_sparsity_never_unprunes(tmp_path):
    """``initial_sparsity=0.5`` with ``layer_sparsity={"fc3": 0.2}``: fc3 is held at its own 20% from the first
    pruning step (its ramp starts at min(initial, 0.2)); no layer's pruned count ever goes down."""
    cb = ProgressivePruning(
        final_sparsity=0.8,
        initial_sparsity=0.5,
        start=0,
        end=8,
        unit="step",
        frequency=2,
        schedule="linear",
        layer_sparsity={"fc3": 0.2},
        verbose=False,
    )
    counts: list[dict[str, int]] = []

    class CountRecorder(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if len(cb.history) > len(counts):
                counts.append({n: int((~m).sum()) for n, m in cb.masks.items()})

    fit(tmp_path, cb, extra=[CountRecorder()], epochs=1)
    fc3 = 10 * 24
    assert [c["fc3.weight"] for c in counts] == [round(0.2 * fc3)] * len(counts)
    for before, after in zip(counts, counts[1:]):
        assert all(after[n] >= before[n] for n in before), (before, after)
    assert counts[-1]["fc1.weight"] == round(0.8 * 48 * 64)


# ------------------------------------------------------------------------------------------------ names that match nothing
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"layer_sparsity": {"fc_2": 0.5}},
            r"`layer_sparsity` key 'fc_2' matches no pruned module, so it would be ignored\. Close matches: \['fc2'",
        ),
        ({"include": ["fc1", "fc4"]}, r"`include` pattern 'fc4' matches no module of `module_types`"),
        ({"exclude": ["fc_3"]}, r"`exclude` pattern 'fc_3' matches no module of the network.*'fc3'"),
        (
            {"keep_last_dense": True, "layer_sparsity": {"fc3": 0.5}},
            r"`layer_sparsity` key 'fc3' matches no pruned module.*It matches \['fc3'\], which is not pruned.*"
            r"keep_last_dense=True",
        ),
        (
            {"attribute": "modle"},
            r"`attribute` 'modle' is not a network of ClassificationModule; close matches",
        ),
    ],
    ids=["layer_sparsity", "include", "exclude", "kept_dense", "attribute"],
)
def test_a_name_that_matches_nothing_is_refused_at_setup(tmp_path, kwargs, match):
    cb = ProgressivePruning(final_sparsity=0.5, start=0, end=2, unit="step", verbose=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, cb, epochs=1, extra=[_NoStepCheck()])


class _NoStepCheck(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        raise AssertionError("an optimizer step ran")


def test_a_name_that_matches_nothing_is_refused_for_channel_groups_and_blocks(tmp_path):
    cb = ProgressivePruning(granularity="channel_groups", layer_sparsity={"stem.conv": 0.3}, verbose=False)
    with pytest.raises(ValueError, match=r"`layer_sparsity` key 'stem.conv' matches no pruned module"):
        group_fit(tmp_path / "g", cb, residual_cnn(), extra=[_NoStepCheck()])
    with pytest.raises(
        ValueError, match=r"`include` pattern 'blocks.9' matches no candidate block.*'blocks.0'"
    ):
        group_fit(
            tmp_path / "b", block_pruning(include=["blocks.0", "blocks.9"]), block_net(), extra=[_NoEpoch()]
        )


# ------------------------------------------------------------------------------------------------ ramps that do not fit the run
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"start": 3, "end": 5, "unit": "epoch"},
            r"first pruning step is at optimizer step 36 \(epoch 3\), after the end of the run \(24 optimizer steps, "
            r"2 epochs of 12 steps\): no weights would be pruned \(0% of the `final_sparsity` 80% target\)\. "
            r"To prune in this run, set `end` <= 2 .* `max_epochs` >= 5",
        ),
        (
            {"start": 30, "end": 40, "unit": "step"},
            r"first pruning step is at optimizer step 30, after the end of the run \(24 optimizer steps\).*"
            r"`max_steps` >= 40",
        ),
    ],
    ids=["epochs", "steps"],
)
def test_a_ramp_after_the_end_of_the_run_is_refused_before_any_step(tmp_path, kwargs, match):
    cb = ProgressivePruning(final_sparsity=0.8, verbose=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, cb, epochs=2, extra=[_NoStepCheck()])


def test_a_ramp_cut_short_by_the_run_is_said_with_the_sparsity_it_reaches(tmp_path):
    cb = ProgressivePruning(final_sparsity=0.8, start=0, end=4, unit="epoch", verbose=False)
    with pytest.warns(UserWarning) as record:
        fit(tmp_path, cb, epochs=2)
    (message,) = [str(w.message) for w in record if "ProgressivePruning: the ramp ends" in str(w.message)]
    reached = event_sparsity(24, 0, 48, 0.0, 0.8)  # the cubic ramp half way: 70%
    assert f"the model ends at {reached:.1%} sparsity, short of the `final_sparsity` 80.0% target" in message
    assert "the ramp ends at optimizer step 48 (epoch 4) but the run has 24 optimizer steps" in message
    assert "set `end` <= 2 (and `start` <= `end`), or train for `max_epochs` >= 4" in message
    assert cb.current_sparsity == pytest.approx(reached)
