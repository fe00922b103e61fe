"""ProgressivePruning behaviour: exact sparsity, masks held through optimizer steps, schedule, resume,
structured compaction, phases, logging, mixed precision, DDP and the CLI."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import ProgressivePruning
from lightning_optim.functional.pruning.schedules import event_sparsity, scheduled_sparsity
from lightning_optim.models import ConvNet3, LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs


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
