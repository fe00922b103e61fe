"""Behaviour of LRScheduling: closed forms in a real fit, warm-up, per-group LRs, momentum cycling,
reduce-on-plateau from a scripted metric, exact resume, logging, finders, bf16, CLI round trip, bad input."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import BatchSizeFinder, Callback, LearningRateFinder, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import EarlyStopping, LRScheduling
from lightning_optim.functional.lr_scheduling import formulas as F
from lightning_optim.functional.lr_scheduling.schedules import (
    Constant,
    CosineAnnealing,
    Cyclic,
    ExponentialDecay,
    MultiStep,
    OneCycle,
    Polynomial,
    ReduceOnPlateau,
    StepDecay,
    create_schedule,
    lr_and_momentum_at,
)
from tests.conftest import quiet_trainer_kwargs

STEPS_PER_EPOCH = 8
BASE = 0.05


class TinyModule(pl.LightningModule):
    """A linear classifier on random data with two parameter groups (bias at 1/10 of the LR) and a
    ``score`` metric scripted per epoch."""

    def __init__(self, optimizer: str = "sgd", lr: float = BASE, scores: list[float] | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.optimizer_name = optimizer
        self.lr = lr
        self.scores = scores
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(STEPS_PER_EPOCH * 4, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.layer(x), y))

    def on_validation_epoch_end(self):
        if self.scores is not None and not self.trainer.sanity_checking:
            self.log("score", self.scores[min(self.current_epoch, len(self.scores) - 1)])

    def configure_optimizers(self):
        groups = [
            {"params": [self.layer.weight], "lr": self.lr},
            {"params": [self.layer.bias], "lr": self.lr * 0.1},
        ]
        if self.optimizer_name == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        return torch.optim.SGD(groups, lr=self.lr, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=8)


class LRRecorder(Callback):
    """Records, at each optimizer step, the global step, every group's LR and the first group's momentum."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[list[float]] = []
        self.momenta: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(trainer.global_step)
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        group = optimizer.param_groups[0]
        self.momenta.append(group["betas"][0] if "betas" in group else group["momentum"])


def _fit(tmp_path, callback, module=None, epochs=3, ckpt_path=None, extra=(), **kwargs):
    module = module or TinyModule()
    recorder = LRRecorder()
    trainer = pl.Trainer(
        callbacks=[callback, recorder, *extra], **quiet_trainer_kwargs(tmp_path, max_epochs=epochs, **kwargs)
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, recorder


# --------------------------------------------------------------------------------- closed forms in a fit
TOTAL = 3 * STEPS_PER_EPOCH
CLOSED_FORMS = {
    "constant": (Constant(), lambda t: BASE),
    "step": (StepDecay(step_size=5, gamma=0.5), lambda t: F.step_lr(t, BASE, 5, 0.5)),
    "multistep": (MultiStep([4, 10, 20], gamma=0.3), lambda t: F.multistep_lr(t, BASE, [4, 10, 20], 0.3)),
    "exponential": (ExponentialDecay(0.9), lambda t: BASE * 0.9**t),
    "cosine": (
        CosineAnnealing(min_lr=1e-3),
        lambda t: 1e-3 + (BASE - 1e-3) * (1 + math.cos(math.pi * t / TOTAL)) / 2,
    ),
    "sgdr": (
        CosineAnnealing(period=5, restarts=True, period_mult=2),
        lambda t: F.cosine_lr(t, BASE, 5, 0.0, True, 2.0),
    ),
    "polynomial": (Polynomial(power=2.0), lambda t: BASE * (1 - t / TOTAL) ** 2),
    "triangular": (Cyclic(max_lr=0.2, step_size_up=3), lambda t: F.cyclic_lr(t, BASE, 0.2, 3)),
    "triangular2": (
        Cyclic(max_lr=0.2, min_lr=0.01, step_size_up=3, step_size_down=2, mode="triangular2"),
        lambda t: F.cyclic_lr(t, 0.01, 0.2, 3, 2, "triangular2"),
    ),
    "exp_range": (
        Cyclic(max_lr=0.2, step_size_up=4, mode="exp_range", gamma=0.95),
        lambda t: F.cyclic_lr(t, BASE, 0.2, 4, None, "exp_range", 0.95),
    ),
    "one_cycle": (OneCycle(pct_start=0.25), lambda t: F.one_cycle_lr(t, TOTAL, BASE, 0.25)),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_each_schedule_follows_its_closed_form_in_a_fit(name, tmp_path):
    schedule, expected = CLOSED_FORMS[name]
    callback = LRScheduling(schedule, interval="step")
    trainer, rec = _fit(tmp_path, callback)
    assert callback.total == TOTAL == trainer.estimated_stepping_batches
    assert rec.steps == list(range(TOTAL))
    for t, lrs in zip(rec.steps, rec.lrs):
        assert lrs[0] == pytest.approx(expected(t), rel=1e-9), f"{name} at step {t}"
        assert lrs[1] == pytest.approx(0.1 * expected(t), rel=1e-9), f"{name} group 1 at step {t}"


@pytest.mark.parametrize(("mode", "start"), [("linear", 0.1), ("exponential", 0.01)])
def test_warmup_boundaries_then_schedule(mode, start, tmp_path):
    callback = LRScheduling(
        CosineAnnealing(), interval="step", warmup=6, warmup_mode=mode, warmup_start_factor=start
    )
    _, rec = _fit(tmp_path, callback)
    lr = [row[0] for row in rec.lrs]
    assert lr[0] == pytest.approx(start * BASE)
    assert lr[5] == pytest.approx(F.warmup_factor(5, 6, mode, start) * BASE)
    assert lr[5] < BASE
    assert lr[6] == pytest.approx(BASE)  # first step after warm-up: the cosine's start
    assert lr[7] == pytest.approx(BASE * (1 + math.cos(math.pi * 1 / (TOTAL - 6))) / 2)
    assert all(b > a for a, b in zip(lr[:6], lr[1:7]))  # rises monotonically through the warm-up


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_fit_sets_exactly_the_functional_lr_and_momentum(optimizer, tmp_path):
    """Every group's LR and the momentum at each step are ``lr_and_momentum_at``'s, bit for bit; ``lr_at`` too."""
    schedule = OneCycle(pct_start=0.3, base_momentum=0.8, max_momentum=0.95)
    callback = LRScheduling(schedule, interval="step", warmup=5, warmup_mode="exponential")
    _, rec = _fit(tmp_path, callback, module=TinyModule(optimizer))
    base_lrs = callback.base_lrs[0]
    for t, lrs, momentum in zip(rec.steps, rec.lrs, rec.momenta):
        expected = lr_and_momentum_at(schedule, t, TOTAL, base_lrs, 5, "exponential", 0.01)
        assert lrs == expected.lrs and momentum == expected.momentum, t
        assert [callback.lr_at(t, base, base_lrs[0]) for base in base_lrs] == lrs, t


def test_warmup_fraction_with_constant(tmp_path):
    callback = LRScheduling("constant", warmup=0.25)
    _, rec = _fit(tmp_path, callback)
    assert callback.warmup_steps == 6
    assert [row[0] for row in rec.lrs][6:] == pytest.approx([BASE] * (TOTAL - 6))


def test_per_group_base_lrs_and_base_lr_override(tmp_path):
    callback = LRScheduling(ExponentialDecay(0.8), base_lr=0.2)
    _, rec = _fit(tmp_path, callback)
    assert callback.base_lrs == [[pytest.approx(0.2), pytest.approx(0.02)]]
    for t, (lr0, lr1) in enumerate(rec.lrs):
        assert lr0 == pytest.approx(0.2 * 0.8**t)
        assert lr1 / lr0 == pytest.approx(0.1)


def test_epoch_interval_holds_within_an_epoch(tmp_path):
    callback = LRScheduling(StepDecay(step_size=1, gamma=0.5), interval="epoch")
    _, rec = _fit(tmp_path, callback)
    assert callback.total == 3
    per_epoch = [rec.lrs[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH] for e in range(3)]
    for epoch, rows in enumerate(per_epoch):
        assert [row[0] for row in rows] == pytest.approx([BASE * 0.5**epoch] * STEPS_PER_EPOCH)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_cycle_momentum_cycling(optimizer, tmp_path):
    callback = LRScheduling(OneCycle(pct_start=0.3, base_momentum=0.8, max_momentum=0.95))
    _, rec = _fit(tmp_path, callback, module=TinyModule(optimizer))
    expected = [F.one_cycle_momentum(t, TOTAL, 0.8, 0.95, 0.3) for t in range(TOTAL)]
    assert rec.momenta == pytest.approx(expected)
    assert rec.momenta[0] == pytest.approx(0.95) and min(rec.momenta) == pytest.approx(0.8, abs=0.01)


def test_cyclic_momentum_cycling_sgd(tmp_path):
    callback = LRScheduling(Cyclic(max_lr=0.2, step_size_up=4, cycle_momentum=True))
    _, rec = _fit(tmp_path, callback)
    assert rec.momenta == pytest.approx([F.cyclic_momentum(t, 0.8, 0.9, 4) for t in range(TOTAL)])


# --------------------------------------------------------------------------------- plateau
SCRIPTED = [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86, 0.87]


def test_plateau_reduces_on_scripted_metric(tmp_path):
    schedule = ReduceOnPlateau(monitor="score", patience=1, factor=0.5, threshold=0.0, threshold_mode="abs")
    callback = LRScheduling(schedule, interval="epoch")
    _, rec = _fit(tmp_path, callback, module=TinyModule(scores=SCRIPTED), epochs=len(SCRIPTED))
    per_epoch = [rec.lrs[e * STEPS_PER_EPOCH][0] for e in range(len(SCRIPTED))]
    # bad checks at epochs 2, 3 -> reduce for epoch 4; bad at 5, 6 -> reduce for epoch 7
    assert per_epoch == pytest.approx([BASE] * 4 + [BASE / 2] * 3 + [BASE / 4])
    assert schedule.reductions == 2


def test_plateau_per_step_interval_with_val_check(tmp_path):
    schedule = ReduceOnPlateau(monitor="score", patience=0, factor=0.5, threshold=0.0, threshold_mode="abs")
    callback = LRScheduling(schedule, interval="step")
    _, rec = _fit(tmp_path, callback, module=TinyModule(scores=[1.0, 2.0, 3.0, 4.0]), epochs=4)
    # the first check sets the best; each later (worse) one reduces at once (patience 0), mid-training
    assert rec.lrs[2 * STEPS_PER_EPOCH - 1][0] == pytest.approx(BASE)
    assert rec.lrs[2 * STEPS_PER_EPOCH][0] == pytest.approx(BASE / 2)
    assert rec.lrs[3 * STEPS_PER_EPOCH][0] == pytest.approx(BASE / 4)


def test_plateau_unknown_metric_names_it_and_the_available_ones(tmp_path):
    callback = LRScheduling(ReduceOnPlateau(monitor="val_acc"), interval="epoch")
    with pytest.raises(RuntimeError, match=r"`val_acc`.*val_loss"):
        _fit(tmp_path, callback, epochs=2)


# --------------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    ("make", "interval", "every"),
    [
        (lambda: OneCycle(pct_start=0.3), "step", {"every_n_train_steps": 5}),
        (lambda: CosineAnnealing(min_lr=1e-4), "step", {"every_n_train_steps": 11}),
        (
            lambda: ReduceOnPlateau(
                monitor="score", patience=0, factor=0.5, threshold=0.0, threshold_mode="abs"
            ),
            "epoch",
            {"every_n_epochs": 1},
        ),
    ],
    ids=["one_cycle_mid_epoch", "cosine_warmup_mid_epoch", "plateau_epoch"],
)
def test_resume_mid_schedule_gives_the_uninterrupted_lr_sequence(make, interval, every, tmp_path):
    scores = [1.0, 0.9, 0.95, 0.97, 0.98]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}-{step}", **every)
    full = LRScheduling(make(), interval=interval, warmup=3)
    _, rec_full = _fit(
        tmp_path / "a",
        full,
        module=TinyModule(scores=scores),
        epochs=5,
        extra=[ckpt],
        enable_checkpointing=True,
    )
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
    mid = files[len(files) // 2]
    step = int(mid.stem.split("step=")[1])
    assert 0 < step < 5 * STEPS_PER_EPOCH
    resumed = LRScheduling(make(), interval=interval, warmup=3)
    # the optimizer in the checkpoint holds a mid-schedule LR: the base LRs must come from the callback state
    _, rec_res = _fit(tmp_path / "b", resumed, module=TinyModule(scores=scores), epochs=5, ckpt_path=str(mid))
    assert rec_res.steps == rec_full.steps[step:]
    assert [x for row in rec_res.lrs for x in row] == pytest.approx(
        [x for row in rec_full.lrs[step:] for x in row], rel=1e-12
    )
    assert rec_res.momenta == pytest.approx(rec_full.momenta[step:], rel=1e-12)
    assert resumed.state_dict() == full.state_dict()


def test_state_dict_round_trip_and_pickling(tmp_path):
    callback = LRScheduling(ReduceOnPlateau(monitor="score", patience=0, threshold=0.0), interval="epoch")
    _fit(tmp_path, callback, module=TinyModule(scores=[1.0, 2.0, 3.0]))
    clone = pickle.loads(pickle.dumps(callback))
    assert clone.state_dict() == callback.state_dict()
    fresh = LRScheduling(ReduceOnPlateau(monitor="score", patience=0, threshold=0.0), interval="epoch")
    fresh.load_state_dict(callback.state_dict())
    assert fresh.schedule.reductions == callback.schedule.reductions == 2
    assert (
        fresh.state_key
        == callback.state_key
        == "LRScheduling{'schedule': 'ReduceOnPlateau', 'interval': 'epoch'}"
    )


# --------------------------------------------------------------------------------- logging
def test_lr_and_momentum_are_logged(tmp_path):
    logger = CSVLogger(tmp_path, name="logs")
    callback = LRScheduling(OneCycle(), interval="step")
    _fit(tmp_path, callback, logger=logger, log_every_n_steps=2)
    text = (Path(logger.log_dir) / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert {"lr-SGD/pg0", "lr-SGD/pg1", "momentum-SGD"} <= set(header), header
    assert (
        len([line for line in text.splitlines()[1:] if line.split(",")[header.index("lr-SGD/pg0")]])
        == TOTAL // 2
    )


# --------------------------------------------------------------------------------- composition
def test_lr_finder_and_batch_size_finder_feed_the_schedule(tmp_path):
    from lightning_optim.data import ImageClassificationDataModule
    from lightning_optim.models import LeNet300100
    from lightning_optim.modules import ClassificationModule

    pl.seed_everything(0)
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(32, 16)), optimizer="sgd", lr=1e-4)
    dm = ImageClassificationDataModule("digits", batch_size=16)
    callback = LRScheduling(OneCycle(pct_start=0.3))
    finders = [
        BatchSizeFinder(mode="power", steps_per_trial=1, init_val=16, max_trials=2),
        LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=15),
    ]
    trainer = pl.Trainer(callbacks=[callback, *finders], **quiet_trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(module, datamodule=dm)
    assert module.lr != 1e-4  # the finder's suggestion landed in the module's `lr` attribute
    assert callback.base_lrs[0][0] == pytest.approx(module.lr)  # ... and is the one-cycle peak
    assert dm.batch_size > 16  # the batch size finder grew it
    n_train = len(dm.train_split)
    assert callback.total == 2 * math.ceil(n_train / dm.batch_size) == trainer.estimated_stepping_batches
    final = trainer.optimizers[0].param_groups[0]["lr"]
    assert final == pytest.approx(F.one_cycle_lr(callback.total - 1, callback.total, module.lr, 0.3))


def test_bf16_mixed_fit_with_both_callbacks(tmp_path):
    from lightning_optim.data import ImageClassificationDataModule
    from lightning_optim.models import ConvNet3
    from lightning_optim.modules import ClassificationModule

    pl.seed_everything(0)
    module = ClassificationModule(
        ConvNet3(image_size=8, channels=(8, 16, 16), hidden=16), optimizer="adam", lr=3e-3
    )
    dm = ImageClassificationDataModule("digits", batch_size=64)
    lr_cb = LRScheduling(OneCycle(), interval="step")
    es = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    trainer = pl.Trainer(
        callbacks=[lr_cb, es],
        **quiet_trainer_kwargs(tmp_path, max_epochs=2, precision="bf16-mixed", limit_train_batches=8),
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.precision == "bf16-mixed"
    assert lr_cb.total == 16 and es.best_epoch is not None
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(F.one_cycle_lr(15, 16, 3e-3))
    assert all(torch.isfinite(p).all() for p in module.parameters())


# --------------------------------------------------------------------------------- CLI round trip
RECIPE = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 2
  limit_train_batches: 5
  limit_val_batches: 2
  limit_test_batches: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: LRScheduling
      init_args:
        interval: step
        warmup: 2
        schedule:
          class_path: OneCycle
          init_args: {pct_start: 0.4, base_momentum: 0.8}
    - class_path: LRScheduling
      init_args:
        interval: epoch
        schedule:
          class_path: ReduceOnPlateau
          init_args: {monitor: val_loss, patience: 0, factor: 0.5}
    - class_path: lightning_optim.callbacks.EarlyStopping
      init_args: {monitor: val_acc, mode: max, patience: 3, restore_best_weights: true, min_delta: 0.01, min_delta_mode: rel}
model:
  class_path: ClassificationModule
  init_args:
    model: {class_path: LeNet300100, init_args: {in_features: 64, hidden: [32, 16]}}
    optimizer: momentum
    lr: 0.05
data:
  class_path: ImageClassificationDataModule
  init_args: {dataset: digits, batch_size: 32}
"""


def _run_cli(args):
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI
    from lightning_optim.modules import ClassificationModule

    return LightningOptimCLI(
        ClassificationModule, LightningDataModule, args=args, auto_configure_optimizers=False
    )


def _check_cli_callbacks(trainer):
    lr_cbs = [cb for cb in trainer.callbacks if isinstance(cb, LRScheduling)]
    es = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
    assert [type(cb.schedule).__name__ for cb in lr_cbs] == ["OneCycle", "ReduceOnPlateau"]
    assert lr_cbs[0].interval == "step" and lr_cbs[0].warmup == 2 and lr_cbs[0].schedule.base_momentum == 0.8
    assert lr_cbs[1].schedule.monitor == "val_loss" and lr_cbs[1].interval == "epoch"
    assert len(es) == 1 and es[0].restore_best_weights and es[0].min_delta_mode == "rel"


def test_cli_round_trip_print_config_reload_and_train_again(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-optim"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        _run_cli(["fit", "--config", str(recipe), "--print_config"])
    printed = yaml.safe_load(out.getvalue())
    callbacks = printed["trainer"]["callbacks"]
    assert callbacks[0]["class_path"].endswith("LRScheduling")
    assert callbacks[0]["init_args"]["schedule"]["class_path"].endswith("OneCycle")
    assert callbacks[2]["class_path"] == "lightning_optim.callbacks.EarlyStopping"

    printed["trainer"]["default_root_dir"] = str(tmp_path / "run1")
    first = tmp_path / "printed.yaml"
    first.write_text(yaml.safe_dump(printed))
    cli = _run_cli(["fit", "--config", str(first)])
    _check_cli_callbacks(cli.trainer)
    assert cli.trainer.state.finished
    saved = tmp_path / "run1" / "config.yaml"
    assert saved.is_file()

    again = yaml.safe_load(saved.read_text())
    again["trainer"]["default_root_dir"] = str(tmp_path / "run2")
    second = tmp_path / "again.yaml"
    second.write_text(yaml.safe_dump(again))
    cli2 = _run_cli(["fit", "--config", str(second)])
    _check_cli_callbacks(cli2.trainer)
    assert cli2.trainer.state.finished and cli2.trainer.global_step == 10


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: LRScheduling("cosinee"),
            r"Unknown `schedule` 'cosinee'; allowed: \['constant'.*\] \(or a schedule instance\)\.",
        ),
        (lambda: create_schedule("linear"), r"Unknown `schedule`"),
        (lambda: LRScheduling("constant", interval="batch"), r"`interval`.*'step', 'epoch'"),
        (lambda: LRScheduling("constant", warmup_mode="cubic"), r"`warmup_mode`"),
        (
            lambda: LRScheduling("constant", warmup=10, total_steps=10),
            r"`warmup` \(10 steps\) must be shorter",
        ),
        (lambda: LRScheduling("constant", warmup=-1), r"`warmup` must be >= 0"),
        (lambda: LRScheduling("constant", base_lr=0.0), r"`base_lr` must be > 0"),
        (
            lambda: LRScheduling("constant", base_lr=float("nan")),
            r"`base_lr` must be > 0 and finite.*got nan",
        ),
        (lambda: OneCycle(max_lr=float("inf")), r"`max_lr` must be > 0 and finite, got inf"),
        (lambda: LRScheduling("constant", base_lr=-1e-3), r"`base_lr` must be > 0"),
        (lambda: Cyclic(max_lr=-0.1), r"`max_lr` must be > 0"),
        (
            lambda: Cyclic(max_lr=0.01, min_lr=0.1),
            r"Cycle bounds reversed: `min_lr` \(0.1\) must be below `max_lr`",
        ),
        (lambda: OneCycle(base_momentum=0.95, max_momentum=0.85), r"Cycle bounds reversed"),
        (lambda: OneCycle(max_lr=0.0), r"`max_lr` must be > 0"),
        (lambda: OneCycle(pct_start=1.5), r"`pct_start`"),
        (lambda: CosineAnnealing(min_lr=-1.0), r"`min_lr` must be >= 0"),
        (lambda: CosineAnnealing(restarts=True), r"`period`"),
        (lambda: MultiStep([5, 3]), r"`milestones`"),
        (lambda: ReduceOnPlateau(mode="lowest"), r"`mode` 'lowest'; allowed: \['min', 'max'\]"),
        (lambda: ReduceOnPlateau(factor=1.5), r"`factor`"),
    ],
)
def test_bad_input_is_rejected_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_warmup_longer_than_training_is_rejected_at_fit(tmp_path):
    with pytest.raises(
        ValueError, match=r"`warmup` \(30 steps\) must be shorter than the training \(24 steps"
    ):
        _fit(tmp_path, LRScheduling("cosine", warmup=30))


def test_non_positive_optimizer_lr_is_rejected_at_fit(tmp_path):
    with pytest.raises(ValueError, match=r"learning rate > 0"):
        _fit(tmp_path, LRScheduling("cosine"), module=TinyModule(lr=0.0))


def test_cycle_bounds_reversed_against_the_base_lr(tmp_path):
    # min_lr defaults to the base LR (0.05), above max_lr
    with pytest.raises(ValueError, match="Cycle bounds reversed"):
        _fit(tmp_path, LRScheduling(Cyclic(max_lr=0.01)))


# --------------------------------------------------------------------------------- the run's length
def test_steps_round_up_under_gradient_accumulation_that_does_not_divide_the_batches(tmp_path):
    """8 batches per epoch with accumulate_grad_batches=3: 3 optimizer steps per epoch (after batches 3, 6 and
    the last one), 9 in all; the cosine runs over those 9 and is at its last value at the last step."""
    callback = LRScheduling(CosineAnnealing(min_lr=1e-3), interval="step")
    trainer, rec = _fit(tmp_path, callback, accumulate_grad_batches=3)
    assert callback.total == 9 == trainer.global_step
    assert rec.steps == list(range(9))
    for t, lrs in zip(rec.steps, rec.lrs):
        assert lrs[0] == pytest.approx(1e-3 + (BASE - 1e-3) * (1 + math.cos(math.pi * t / 9)) / 2), t


@pytest.mark.parametrize(
    ("total_steps", "match"),
    [
        (48, r"`total_steps`=48 steps, but the run has 24 steps .*: the run stops at 50% of the schedule"),
        (
            12,
            r"`total_steps`=12 steps, but the run has 24 steps .*: its last 12 steps run past the schedule's end",
        ),
    ],
    ids=["longer", "shorter"],
)
def test_a_total_steps_that_does_not_fit_the_run_is_said(tmp_path, total_steps, match):
    with pytest.warns(UserWarning, match=match):
        _fit(tmp_path, LRScheduling(CosineAnnealing(), interval="step", total_steps=total_steps))
