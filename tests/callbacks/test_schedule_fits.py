"""Schedules that do not fit the run, said before the first epoch: a stage that would never run is refused, one
cut short by ``max_epochs`` is said with what the run reaches (quantization and distillation; pruning's own
ramp and LR schedules are in their callbacks' tests)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from lightning.pytorch import Callback, Trainer

from lightning_optim.callbacks import KnowledgeDistillation, ProgressivePruning, QuantizationAwareTraining
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.callbacks.test_pruning import fixed_loader
from tests.conftest import quiet_trainer_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

QAT = dict(backend="eager", latency_batch_sizes=(), verbose=False, report=False, export=False, dry_run=False)


class _NoStep(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        raise AssertionError("an optimizer step ran")


def run(root, callbacks, epochs):
    pl.seed_everything(0)
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(32, 16)), lr=1e-2)
    trainer = Trainer(**quiet_trainer_kwargs(root, max_epochs=epochs, callbacks=list(callbacks)))
    trainer.fit(module, train_dataloaders=fixed_loader())
    return trainer


@pytest.mark.parametrize(
    ("pruning", "done"),
    [({"start": 0, "end": 3, "unit": "epoch"}, 3), ({"start": 0, "end": 30, "unit": "step"}, 3)],
    ids=["epochs", "steps"],
)
def test_qat_after_a_pruning_ramp_that_ends_with_the_run_is_refused(tmp_path, pruning, done):
    """The ramp is done at the start of epoch 3 (optimizer step 30 of 12 per epoch: epoch 3), the run has 3
    epochs: QAT with `start_after: pruning` would never start."""
    callbacks = [
        ProgressivePruning(final_sparsity=0.5, verbose=False, **pruning),
        QuantizationAwareTraining(start_after="pruning", **QAT),
        _NoStep(),
    ]
    with pytest.raises(
        ValueError,
        match=rf"starts after the 'pruning' phase \(`start_after`\), which by its settings is done at epoch {done} "
        r"\(and QAT's `start_epoch` is 0\): the Trainer's max_epochs=3 ends the run before epoch 3, so QAT would "
        r"never start\. End pruning by epoch 2 or train for max_epochs >= 4",
    ):
        run(tmp_path, callbacks, epochs=3)


def test_qat_freezing_epochs_the_run_never_reaches_are_said(tmp_path):
    qat = QuantizationAwareTraining(start_epoch=1, freeze_observers_epoch=4, freeze_bn_epoch=5, **QAT)
    with pytest.warns(UserWarning) as record:
        run(tmp_path, [qat], epochs=2)
    (message,) = [str(w.message) for w in record if "QuantizationAwareTraining: `freeze" in str(w.message)]
    assert "`freeze_observers_epoch` (ranges frozen at epoch 4) and `freeze_bn_epoch` (5)" in message
    assert "max_epochs=2: it never happens in this run (QAT starts at epoch 1)" in message
    assert "EarlyStopping holds off to the end" in message
    assert qat.phase_state(None) == "done"  # converted at the end of fit


def test_distillation_that_would_never_start_is_refused_at_setup(tmp_path):
    kd = KnowledgeDistillation(teacher=LeNet300100(in_features=64), start_epoch=3)
    with pytest.raises(
        ValueError, match=r"`start_epoch`=3 is not before the Trainer's max_epochs=2: the student"
    ):
        run(tmp_path, [kd, _NoStep()], epochs=2)


def test_a_distillation_ramp_or_end_after_the_run_is_said_with_what_it_reaches(tmp_path):
    kd = KnowledgeDistillation(
        teacher=LeNet300100(in_features=64),
        temperature=4.0,
        final_temperature=1.0,
        alpha=0.9,
        final_alpha=0.5,
        schedule_epochs=4,
        end_epoch=5,
    )
    with pytest.warns(UserWarning) as record:
        run(tmp_path, [kd], epochs=2)
    (message,) = [str(w.message) for w in record if "KnowledgeDistillation: `end_epoch`" in str(w.message)]
    assert "`end_epoch`=5 is after the run's 2 epochs: the distillation phase is never done" in message
    assert (
        "the temperature/alpha ramp of 4 epochs from epoch 0 ends after the run's 2 epochs: it reaches 50% of"
        in message
    )
    assert "(temperature 2.5, alpha 0.7)" in message
