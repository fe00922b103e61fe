"""Behaviour of EarlyStopping: restore_best_weights (by value, memory and checkpoint, DDP), start_epoch,
min_epochs, relative min_delta, resume, hold-off during compression phases, messages, bad input."""

from __future__ import annotations

import copy
import logging

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks import EarlyStopping, LRScheduling
from lightning_optim.functional.lr_scheduling.schedules import OneCycle
from tests.conftest import gather_across_ranks, quiet_trainer_kwargs


class ScriptedModule(pl.LightningModule):
    """A small MLP on fixed random data whose validation logs ``score`` from a script, one value per epoch;
    the weights change every epoch, so each epoch's weights are distinct."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = list(scores)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log(
                "score", float(self.scores[min(self.current_epoch, len(self.scores) - 1)]), sync_dist=True
            )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=8)


class WeightRecorder(Callback):
    """A copy of the module's state at the end of every training epoch (when early stopping checks)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = copy.deepcopy(
            {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        )


class FakePhase(Callback):
    """A compression phase that is active until ``done_at`` epochs have started."""

    phase_name = "fake_pruning"

    def __init__(self, done_at: int) -> None:
        self.done_at = done_at

    def phase_state(self, trainer):
        if trainer.current_epoch == 0:
            return "pending"
        return "active" if trainer.current_epoch < self.done_at else "done"


def _fit(tmp_path, scores, callbacks, epochs=None, module=None, **kwargs):
    module = module or ScriptedModule(scores)
    recorder = WeightRecorder()
    trainer = pl.Trainer(
        callbacks=[recorder, *callbacks],
        **quiet_trainer_kwargs(tmp_path, max_epochs=epochs or len(scores), **kwargs),
    )
    trainer.fit(module)
    return trainer, module, recorder


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


def _differs(a, b):
    return any(not torch.equal(a[k].cpu(), b[k].cpu()) for k in a if a[k].is_floating_point())


# --------------------------------------------------------------------------------- restore_best_weights
@pytest.mark.parametrize(
    ("scores", "mode", "best_epoch", "stopped_epoch"),
    [
        ([0.5, 0.3, 0.4, 0.45, 0.5, 0.2], "min", 1, 4),
        ([0.1, 0.2, 0.9, 0.5, 0.6, 0.7, 0.95], "max", 2, 5),
    ],
)
def test_restore_best_weights_from_memory_by_value(scores, mode, best_epoch, stopped_epoch, tmp_path):
    es = EarlyStopping("score", mode=mode, patience=3, restore_best_weights=True)
    trainer, module, rec = _fit(tmp_path, scores, [es])
    assert es.best_epoch == best_epoch and es.stopped_epoch == stopped_epoch
    assert es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    final = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    _assert_same_state(final, rec.states[best_epoch])  # the best epoch's weights, BatchNorm buffers included
    assert _differs(rec.states[stopped_epoch], rec.states[best_epoch])
    assert es.restored_epoch == best_epoch


def test_restore_best_weights_from_the_best_checkpoint(tmp_path):
    scores = [0.5, 0.3, 0.4, 0.45, 0.5]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode="min")
    es = EarlyStopping("score", patience=2, restore_best_weights=True, best_weights_source="checkpoint")
    trainer, module, rec = _fit(tmp_path, scores, [es, ckpt], enable_checkpointing=True)
    assert es.best_weights is None and es.restored_epoch == 1 and es.stopped_epoch == 3
    _assert_same_state({k: v.detach().cpu() for k, v in module.state_dict().items()}, rec.states[1])


def test_checkpoint_source_without_a_matching_model_checkpoint_fails_at_setup(tmp_path):
    es = EarlyStopping("score", restore_best_weights=True, best_weights_source="checkpoint")
    with pytest.raises(ValueError, match=r"ModelCheckpoint with monitor='score'"):
        _fit(tmp_path, [1.0, 2.0], [es])


def test_without_restore_the_final_weights_stay(tmp_path):
    es = EarlyStopping("score", patience=1)
    trainer, module, rec = _fit(tmp_path, [0.5, 0.3, 0.4], [es])
    _assert_same_state({k: v.detach().cpu() for k, v in module.state_dict().items()}, rec.states[2])


# --------------------------------------------------------------------------------- start epoch and min_epochs
def test_start_epoch_blocks_stopping_and_patience_counts_from_it(tmp_path):
    scores = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]  # only gets worse
    es = EarlyStopping("score", patience=2, start_epoch=4)
    trainer, _, _ = _fit(tmp_path, scores, [es])
    # epochs 0-3 cannot stop and do not count; waits at epochs 4 and 5 -> stops after epoch 5
    assert es.stopped_epoch == 5 and trainer.current_epoch == 6
    assert es.best_epoch == 0


def test_no_conflict_with_min_epochs(tmp_path):
    scores = [1.0, 2.0, 3.0, 0.5, 0.4, 0.3]  # bad start, then steady improvement
    theirs = LightningEarlyStopping("score", patience=1)
    t1, _, _ = _fit(tmp_path / "lightning", scores, [theirs], min_epochs=4)
    # Lightning's flag stays set from epoch 1, so it stops as soon as min_epochs allows, although improving
    assert t1.current_epoch == 4
    ours = EarlyStopping("score", patience=1)
    t2, _, _ = _fit(tmp_path / "ours", scores, [ours], min_epochs=4)
    assert t2.current_epoch == len(scores) and ours.stopped_epoch == 0  # no stop: the metric recovered
    assert ours.best_epoch == 5


def test_stops_at_first_allowed_check_when_still_no_improvement(tmp_path):
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    es = EarlyStopping("score", patience=1)
    trainer, _, _ = _fit(tmp_path, scores, [es], min_epochs=4)
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4


# --------------------------------------------------------------------------------- min_delta
@pytest.mark.parametrize(
    ("min_delta", "mode", "best_epoch", "stopped_epoch"),
    [
        (0.01, "rel", 0, 2),  # 0.995 and 0.99 are not 1% better than 1.0
        (0.001, "abs", 2, 4),  # they are 0.001 better
    ],
)
def test_min_delta_relative_or_absolute(min_delta, mode, best_epoch, stopped_epoch, tmp_path):
    scores = [1.0, 0.995, 0.99, 0.9895, 0.989, 0.5]
    es = EarlyStopping("score", patience=2, min_delta=min_delta, min_delta_mode=mode)
    _fit(tmp_path, scores, [es])
    assert (es.best_epoch, es.stopped_epoch) == (best_epoch, stopped_epoch)


def test_relative_min_delta_in_max_mode(tmp_path):
    es = EarlyStopping("score", mode="max", patience=1, min_delta=0.1, min_delta_mode="rel")
    _fit(tmp_path, [1.0, 1.2, 1.25, 1.3], [es])  # 1.2 is 20% better; 1.25 is not 10% better than 1.2
    assert (es.best_epoch, es.stopped_epoch) == (1, 2)


# --------------------------------------------------------------------------------- resume
def test_best_score_wait_count_and_best_weights_survive_a_resume(tmp_path):
    scores = [0.5, 0.3, 0.4, 0.45, 0.5, 0.6]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = EarlyStopping("score", patience=3, restore_best_weights=True)
    _, full_module, rec = _fit(tmp_path / "a", scores, [full, ckpt], enable_checkpointing=True)
    assert full.stopped_epoch == 4

    resumed = EarlyStopping("score", patience=3, restore_best_weights=True)
    module = ScriptedModule(scores)
    trainer = pl.Trainer(callbacks=[resumed], **quiet_trainer_kwargs(tmp_path / "b", max_epochs=len(scores)))
    trainer.fit(module, ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"))  # after one bad check
    assert resumed.stopped_epoch == 4  # 2 more bad checks, not 3: the wait count was restored
    assert resumed.best_epoch == 1 and float(resumed.best_score) == pytest.approx(0.3)
    _assert_same_state({k: v.detach().cpu() for k, v in module.state_dict().items()}, rec.states[1])


def test_state_dict_round_trip(tmp_path):
    es = EarlyStopping("score", patience=5, restore_best_weights=True)
    _fit(tmp_path, [0.5, 0.3, 0.4], [es])
    fresh = EarlyStopping("score", patience=5, restore_best_weights=True)
    fresh.load_state_dict(es.state_dict())
    assert (fresh.best_epoch, fresh.wait_count, float(fresh.best_score)) == (1, 1, pytest.approx(0.3))
    _assert_same_state(fresh.best_weights, es.best_weights)
    assert fresh.state_key == es.state_key


# --------------------------------------------------------------------------------- hold-off
def test_holds_off_while_a_compression_phase_is_not_done(tmp_path):
    scores = [0.1, 0.5, 0.6, 0.7, 0.8, 0.75, 0.9, 1.0, 1.1]
    es = EarlyStopping("score", patience=1, restore_best_weights=True)
    trainer, module, rec = _fit(tmp_path, scores, [FakePhase(done_at=4), es])
    # epochs 0-3: pending/active -> no stop although the metric worsens; tracking restarts at epoch 4
    assert es.best_epoch == 5 and es.stopped_epoch == 6
    _assert_same_state({k: v.detach().cpu() for k, v in module.state_dict().items()}, rec.states[5])


def test_ignored_phase_does_not_hold_off(tmp_path):
    es = EarlyStopping("score", patience=1, ignore_phases=("fake_pruning",))
    _fit(tmp_path, [0.1, 0.5, 0.6, 0.7], [FakePhase(done_at=10), es])
    assert es.stopped_epoch == 1


def test_hold_off_can_be_disabled(tmp_path):
    es = EarlyStopping("score", patience=1, hold_off_while_compressing=False)
    _fit(tmp_path, [0.1, 0.5, 0.6, 0.7], [FakePhase(done_at=10), es])
    assert es.stopped_epoch == 1


# --------------------------------------------------------------------------------- messages and bad input
def test_stop_message_names_metric_best_value_and_epoch(tmp_path, caplog):
    es = EarlyStopping("score", patience=2)
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, [0.5, 0.25, 0.4, 0.45, 0.3], [es])
    message = es.stopping_reason_message
    assert "stopped training at epoch 3" in message
    assert "best score=0.25 at epoch 1" in message
    assert message in caplog.text


def test_unknown_monitored_metric_names_the_available_ones(tmp_path):
    es = EarlyStopping("val_acc", patience=2)
    with pytest.raises(RuntimeError, match=r"`val_acc`.*`val_loss`.*`score`|`val_acc`.*`score`.*`val_loss`"):
        _fit(tmp_path, [0.5, 0.3], [es])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "lowest"}, r"`mode` 'lowest'; allowed: \['min', 'max'\]"),
        ({"min_delta_mode": "pct"}, r"`min_delta_mode` 'pct'; allowed: \['abs', 'rel'\]"),
        ({"best_weights_source": "disk"}, r"`best_weights_source` 'disk'"),
        ({"min_delta": -0.1}, r"`min_delta` must be >= 0"),
        ({"min_delta": float("nan")}, r"`min_delta` must be >= 0 and finite, got nan"),
        ({"patience": -1}, r"`patience` must be >= 0"),
        ({"start_epoch": -2}, r"`start_epoch` must be >= 0"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping("val_loss", **kwargs)


# --------------------------------------------------------------------------------- DDP
class RankCheck(Callback):
    """After EarlyStopping restored the weights: every rank holds the same weights, equal to its own copy of
    the best epoch's (recorded by the WeightRecorder); raises inside the worker otherwise."""

    def __init__(self, es: EarlyStopping, recorder: WeightRecorder) -> None:
        self.es = es
        self.recorder = recorder

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([v.detach().float().flatten() for v in pl_module.state_dict().values()])
        gathered = gather_across_ranks(flat)
        assert gathered.shape[0] == 2 and torch.equal(gathered[0], gathered[1]), "ranks differ after restore"
        best = self.recorder.states[self.es.best_epoch]
        assert self.es.best_epoch == 1 and self.es.stopped_epoch == 3
        for k, v in pl_module.state_dict().items():
            assert torch.equal(v.cpu(), best[k]), f"rank {trainer.global_rank}: {k} is not the best epoch's"


@pytest.mark.slow
def test_ddp_two_processes_restore_identical_best_weights(tmp_path):
    scores = [0.5, 0.3, 0.4, 0.45, 0.5]
    es = EarlyStopping("score", patience=2, restore_best_weights=True)
    recorder = WeightRecorder()
    lr = LRScheduling(OneCycle(), interval="step")
    trainer = pl.Trainer(
        callbacks=[recorder, lr, es, RankCheck(es, recorder)],
        **quiet_trainer_kwargs(tmp_path, max_epochs=len(scores), devices=2, strategy="ddp_spawn"),
    )
    trainer.fit(ScriptedModule(scores))
    assert trainer.state.finished


# --------------------------------------------------------------------------------- hold-off resets the wait count
class WindowPhase(Callback):
    """A compression phase that is done, then active for epochs ``[begin, end)``, then done again (a stage that
    starts after some checks already counted, e.g. one resumed into a run)."""

    phase_name = "window"

    def __init__(self, begin: int, end: int) -> None:
        self.begin, self.end = begin, end

    def phase_state(self, trainer):
        return "active" if self.begin <= trainer.current_epoch < self.end else "done"


class WaitRecorder(Callback):
    """After EarlyStopping's check of each epoch: its wait count, and what its checkpoint state would hold."""

    def __init__(self, es: EarlyStopping) -> None:
        self.es = es
        self.rows: list[tuple[int, int, int, bool]] = []

    def _record(self, epoch: int) -> None:
        state = self.es.state_dict()
        self.rows.append((epoch, self.es.wait_count, state["wait_count"], self.es._holding_off))

    # Lightning runs EarlyStopping's epoch-end check after the other callbacks: read it at the next epoch start
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self._record(trainer.current_epoch - 1)

    def on_train_end(self, trainer, pl_module):
        self._record(trainer.current_epoch - 1)


def test_the_wait_count_is_reset_while_held_off(tmp_path):
    """Two checks without improvement count (wait 1, 2), then a phase holds early stopping off: from the first
    held-off check the wait count is 0 (in the callback and in its checkpoint state), so patience counts from
    scratch once the phase is done."""
    scores = [0.1, 0.5, 0.6, 0.7, 0.8, 0.2, 0.3, 0.4]
    es = EarlyStopping("score", patience=5)
    recorder = WaitRecorder(es)
    _fit(tmp_path, scores, [WindowPhase(begin=3, end=5), es, recorder])
    rows = {epoch: (wait, saved, held) for epoch, wait, saved, held in recorder.rows}
    assert rows[1][:2] == (1, 1) and rows[2][:2] == (2, 2)
    assert rows[3] == (0, 0, True) and rows[4] == (0, 0, True)
    assert rows[5] == (0, 0, False) and rows[6][0] == 1 and rows[7][0] == 2  # counted again from 5's best
    assert es.best_epoch == 5 and es.stopped_epoch == 0


def test_an_ignored_phase_that_is_not_on_the_trainer_is_refused_at_setup(tmp_path):
    es = EarlyStopping("score", patience=1, ignore_phases=("fake_prunig",))
    with pytest.raises(
        ValueError,
        match=r"`ignore_phases` names 'fake_prunig', which is no compression phase on the Trainer, so it would be "
        r"ignored; close matches: \['fake_pruning'\]\. Phases present: \['fake_pruning'\]",
    ):
        _fit(tmp_path, [0.1, 0.5, 0.6], [FakePhase(done_at=10), es])


def test_a_start_epoch_the_run_never_reaches_is_said(tmp_path):
    es = EarlyStopping("score", patience=1, start_epoch=5)
    with pytest.warns(
        UserWarning, match=r"`start_epoch`=5 is not before the Trainer's max_epochs=3: it can never stop"
    ):
        _fit(tmp_path, [0.1, 0.5, 0.6], [es])
