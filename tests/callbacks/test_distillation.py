"""Behaviour of KnowledgeDistillation: loss, frozen teacher, hooks, adapters, offline cache, checkpoints, DDP, CLI."""

from __future__ import annotations

import copy
import os
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from lightning_optim.callbacks import KnowledgeDistillation
from lightning_optim.callbacks.phases import model_is_changing, phase_states, phase_status
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.distillation.teacher import load_teacher_weights
from lightning_optim.models import ConvNet3, LeNet300100
from lightning_optim.modules import ClassificationModule
from lightning_optim.modules.loss_terms import StepContext, combine_losses
from tests.conftest import gather_across_ranks, quiet_trainer_kwargs

PAIRS = {"features.block2": "features.block2", "classifier.fc1": "classifier.fc1"}


def _teacher(seed: int = 1) -> ConvNet3:
    torch.manual_seed(seed)
    return ConvNet3(image_size=8, channels=(16, 32, 64), hidden=64, dropout=0.3)


def _student(seed: int = 0) -> ClassificationModule:
    torch.manual_seed(seed)
    return ClassificationModule(
        ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32), optimizer="adam", lr=1e-2
    )


def _fit(tmp_path, callback, module=None, dm=None, extra=(), **kw):
    pl.seed_everything(0)
    module = module if module is not None else _student()
    dm = dm if dm is not None else ImageClassificationDataModule("digits", batch_size=32)
    kwargs = quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=1)
    kwargs.update(kw)
    trainer = pl.Trainer(callbacks=[callback, *extra], **kwargs)
    trainer.fit(module, datamodule=dm)
    return trainer, module


def _teacher_checkpoint(tmp_path, teacher: nn.Module) -> str:
    module = ClassificationModule(teacher)
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path / "teacher", max_epochs=1, limit_train_batches=2))
    trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=32))
    path = str(tmp_path / "teacher.ckpt")
    trainer.save_checkpoint(path)
    return path


# --------------------------------------------------------------------------------------------- the loss
def test_training_loss_equals_hinton_reference():
    """combine_losses with the callback gives alpha T^2 KL + (1 - alpha) CE, with parts reported."""
    teacher = _teacher()
    kd = KnowledgeDistillation(teacher, temperature=3.0, alpha=0.6)
    module = _student()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    logits = module(x)
    ce = module.task_loss(logits, y)
    trainer = SimpleNamespace(callbacks=[kd], current_epoch=0, num_training_batches=10, max_epochs=3)
    module._trainer = trainer  # combine_losses finds the providers through the trainer
    try:
        total, parts = combine_losses(module, StepContext("train", x, y, logits, ce))
    finally:
        module._trainer = None
    with torch.no_grad():
        t_logits = teacher.eval()(x)
    kl = F.kl_div(F.log_softmax(logits / 3.0, -1), F.softmax(t_logits / 3.0, -1), reduction="batchmean")
    expected = 0.6 * 9.0 * kl + 0.4 * F.cross_entropy(logits, y)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["kd"], (0.6 * 9.0 * kl).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["task"], ce.detach())


@pytest.mark.parametrize(("alpha", "kd_present"), [(0.0, True), (1.0, True)])
def test_alpha_extremes_through_the_callback(alpha, kd_present):
    kd = KnowledgeDistillation(_teacher(), temperature=2.0, alpha=alpha)
    module = _student()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    logits = module(x)
    ce = module.task_loss(logits, y)
    trainer = SimpleNamespace(callbacks=[kd], current_epoch=0, num_training_batches=10, max_epochs=3)
    ctx = StepContext("train", x, y, logits, ce)
    weight = kd.task_loss_weight(trainer, module, ctx)
    terms = kd.loss_terms(trainer, module, ctx)
    assert weight == 1.0 - alpha
    if alpha == 0.0:
        assert terms["kd"].item() == 0.0
    else:
        assert terms["kd"].item() > 0.0
    # outside training the callback adds nothing and leaves the task loss alone
    val = StepContext("val", x, y, logits, ce)
    assert kd.loss_terms(trainer, module, val) == {} and kd.task_loss_weight(trainer, module, val) == 1.0


def test_schedule_and_phase_states():
    kd = KnowledgeDistillation(
        _teacher(),
        temperature=8.0,
        final_temperature=2.0,
        alpha=0.2,
        final_alpha=1.0,
        start_epoch=1,
        end_epoch=5,
    )
    t = SimpleNamespace(current_epoch=0, num_training_batches=4, max_epochs=10, callbacks=[kd])
    assert kd.phase_state(t) == "pending" and not kd.is_distilling(0)
    t.current_epoch = 1
    assert kd.current_values(t, 0) == (8.0, 0.2)
    t.current_epoch = 3
    temperature, alpha = kd.current_values(t, 0)  # half way through a 4-epoch ramp
    assert temperature == pytest.approx(5.0) and alpha == pytest.approx(0.6)
    assert kd.phase_state(t) == "active" and model_is_changing(t)
    t.current_epoch = 5
    assert kd.phase_state(t) == "done" and not kd.is_distilling(5) and not model_is_changing(t)
    # without end epoch nor ramp: a plain loss that never holds off early stopping
    plain = KnowledgeDistillation(_teacher())
    t.callbacks, t.current_epoch = [plain], 0
    assert plain.phase_state(t) == "done" and plain.is_distilling(100)


def test_messages_say_what_runs_not_the_contracts_word():
    """Without an end epoch distillation is "done" for the phase contract from its first epoch (it never holds
    off early stopping), yet it distills to the end of training: what is printed says it runs."""
    kd = KnowledgeDistillation(_teacher(), start_epoch=2)
    t = SimpleNamespace(current_epoch=1, num_training_batches=4, max_epochs=7, callbacks=[kd])
    assert phase_status(kd, t) == "pending (starts at epoch 2)"
    t.current_epoch = 4
    assert kd.phase_state(t) == "done" and kd.is_distilling(4)
    assert phase_status(kd, t) == "running (epoch 3 of 5)"
    states = phase_states(t)
    assert states == {"distillation": "done"}  # the contract, unchanged
    assert f"{states}" == "distillation: running (epoch 3 of 5)" and "{" not in str(states)
    t.current_epoch = 7  # training ended: the epochs completed
    assert phase_status(kd, t, finished=True) == "done"
    # with an end epoch: done once it no longer distills; a run that ends before says so
    bounded = KnowledgeDistillation(_teacher(), start_epoch=1, end_epoch=3)
    t.callbacks, t.current_epoch = [bounded], 2
    assert phase_status(bounded, t) == "running (epoch 2 of 2)"
    t.current_epoch = 3
    assert phase_status(bounded, t) == "done" and bounded.phase_state(t) == "done"
    t.current_epoch = 2
    assert phase_status(bounded, t, finished=True) == "stopped before its end (epoch 1 of 2)"
    t.current_epoch = 1
    assert phase_status(bounded, t, finished=True) == "never started"
    t.max_epochs = -1  # no known end of training: no total
    assert phase_status(kd, SimpleNamespace(current_epoch=3, max_epochs=-1)) == "running (epoch 2)"


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "`temperature` must be a finite number > 0"),
        ({"temperature": -2.0}, "`temperature` must be a finite number > 0"),
        ({"final_temperature": 0.0}, "`final_temperature`"),
        ({"alpha": -0.1}, r"`alpha` must be in \[0, 1\]"),
        ({"alpha": 1.5}, r"`alpha` must be in \[0, 1\]"),
        ({"final_alpha": 2.0}, "`final_alpha`"),
        ({"schedule": "step"}, r"Unknown `schedule` 'step'; allowed: \['linear', 'cosine'\]"),
        ({"feature_loss": "l1"}, r"Unknown `feature_loss` 'l1'; allowed: \['mse', 'cosine'\]"),
        ({"feature_weight": -1.0}, "`feature_weight`"),
        ({"feature_weight": float("nan")}, "`feature_weight` must be >= 0 and finite, got nan"),
        ({"adapter_lr": float("inf")}, "`adapter_lr` must be > 0 and finite, or None, got inf"),
        ({"start_epoch": 3, "end_epoch": 2}, "`end_epoch` must be > `start_epoch`"),
        ({"feature_pairs": {"fc1": "no.such.layer"}}, "teacher has no layer named 'no.such.layer'"),
        ({"cache_teacher_logits": True, "feature_pairs": {"fc1": "classifier.fc1"}}, "cannot be combined"),
        ({"cache_max_mb": 0}, "`cache_max_mb`"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KnowledgeDistillation(_teacher(), **kwargs)


def test_teacher_must_be_a_module():
    with pytest.raises(TypeError, match="`teacher` must be an nn.Module"):
        KnowledgeDistillation("runs/teacher.ckpt")  # type: ignore[arg-type]


def test_missing_and_incompatible_teacher_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="`teacher_checkpoint`.*does not exist"):
        KnowledgeDistillation(_teacher(), teacher_checkpoint=str(tmp_path / "missing.ckpt"))
    path = _teacher_checkpoint(tmp_path, _teacher())
    with pytest.raises(ValueError, match="does not fit the architecture LeNet300100.*missing keys"):
        KnowledgeDistillation(LeNet300100(in_features=64), teacher_checkpoint=path)
    with pytest.raises(ValueError, match="shape mismatches.*features.block1.conv.weight"):
        KnowledgeDistillation(
            ConvNet3(image_size=8, channels=(8, 32, 64), hidden=64), teacher_checkpoint=path
        )
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        KnowledgeDistillation(_teacher(), teacher_checkpoint=str(garbage))


def test_teacher_checkpoint_weights_are_loaded(tmp_path):
    trained = _teacher(seed=5)
    path = _teacher_checkpoint(tmp_path, trained)
    kd = KnowledgeDistillation(_teacher(seed=9), teacher_checkpoint=path)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(kd.teacher.module.state_dict()[key], value)
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)
    other = load_teacher_weights(_teacher(seed=11), plain)
    torch.testing.assert_close(other.classifier.fc2.weight, trained.classifier.fc2.weight)


def test_unknown_student_layer_and_output_mismatch_fail_at_setup(tmp_path):
    kd = KnowledgeDistillation(_teacher(), feature_pairs={"features.block9": "features.block2"})
    with pytest.raises(ValueError, match="student has no layer named 'features.block9'"):
        _fit(tmp_path, kd)
    torch.manual_seed(0)
    five_classes = ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32, num_classes=5)
    with pytest.raises(ValueError, match=r"teacher gives \(2, 5\), student gives \(2, 10\)"):
        _fit(tmp_path, KnowledgeDistillation(five_classes))


def test_offline_mode_needs_indices_and_unaugmented_data(tmp_path):
    kd = KnowledgeDistillation(_teacher(), cache_teacher_logits=True)
    with pytest.raises(ValueError, match="return_index=True"):
        _fit(tmp_path, kd)
    dm = ImageClassificationDataModule("digits", batch_size=32, return_index=True, augmentation="light")
    with pytest.raises(ValueError, match="not augmented"):
        _fit(tmp_path, KnowledgeDistillation(_teacher(), cache_teacher_logits=True), dm=dm)


# --------------------------------------------------------------------------------------------- teacher and hooks
class _Probe(Callback):
    """Records what the teacher, student, adapters and hooks look like during training."""

    def __init__(self, kd: KnowledgeDistillation) -> None:
        self.kd = kd
        self.grads: dict[str, bool] = {}
        self.hooks_during_fit = 0
        self.teacher_training: list[bool] = []
        self.teacher_dtypes: set[torch.dtype] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.hooks_during_fit = max(
            self.hooks_during_fit, _hook_count(pl_module.model, self.kd.teacher.module)
        )
        self.kd.teacher.train()  # as Lightning's mode switching would; the teacher must stay in eval
        self.teacher_training.append(any(m.training for m in self.kd.teacher.modules()))

    def on_after_backward(self, trainer, pl_module):
        for name, p in pl_module.named_parameters():
            self.grads.setdefault(f"student.{name}", False)
            self.grads[f"student.{name}"] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        for name, p in self.kd.adapters.named_parameters():
            self.grads.setdefault(f"adapter.{name}", False)
            self.grads[f"adapter.{name}"] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        for name, p in self.kd.teacher.named_parameters():
            self.grads[f"teacher.{name}"] = p.grad is not None or p.requires_grad


def _hook_count(*modules: nn.Module) -> int:
    return sum(len(m._forward_hooks) for root in modules for m in root.modules())


def test_gradients_reach_only_student_and_adapters_teacher_unchanged_hooks_removed(tmp_path):
    teacher = _teacher()
    before = copy.deepcopy(teacher.state_dict())
    kd = KnowledgeDistillation(teacher, feature_pairs=PAIRS, temperature=4.0, alpha=0.8)
    probe = _Probe(kd)
    trainer, module = _fit(tmp_path, kd, extra=[probe], max_epochs=2)
    student_grads = {k: v for k, v in probe.grads.items() if k.startswith("student.model.")}
    adapter_grads = {k: v for k, v in probe.grads.items() if k.startswith("adapter.")}
    teacher_grads = {k: v for k, v in probe.grads.items() if k.startswith("teacher.")}
    assert student_grads and all(student_grads.values()), student_grads
    assert adapter_grads and all(adapter_grads.values()), adapter_grads
    assert teacher_grads and not any(teacher_grads.values()), teacher_grads
    # the teacher is untouched (weights and batch-norm statistics) and stayed in eval mode
    after = teacher.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert probe.teacher_training and not any(probe.teacher_training)
    # hooks: 2 pairs -> 2 student + 2 teacher hooks during fit, none after
    assert probe.hooks_during_fit == 4
    assert _hook_count(module.model, teacher) == 0
    # the adapters trained in the optimizer's extra parameter group
    groups = trainer.optimizers[0].param_groups
    assert {id(p) for p in groups[-1]["params"]} == {id(p) for p in kd.adapters.parameters()}
    assert "train_loss_feature" in trainer.callback_metrics and "train_loss_kd" in trainer.callback_metrics
    assert trainer.callback_metrics["distill/teacher_ms_per_step"] >= 0  # measured (no bound on time)
    assert trainer.callback_metrics["distill/alpha"] == pytest.approx(0.8)


def test_student_checkpoint_holds_no_teacher_nor_adapters(tmp_path):
    kd = KnowledgeDistillation(_teacher(), feature_pairs=PAIRS)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    _fit(tmp_path, kd, extra=[ckpt], enable_checkpointing=True)
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys == {f"model.{k}" for k in _student().model.state_dict()}, sorted(keys)
    # the exported student loads strictly into a bare module; adapters live in the callback's state
    fresh = _student()
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert any(state.get("adapters") for state in checkpoint["callbacks"].values())


class _UnshuffledDigits(ImageClassificationDataModule):
    """Digits in a fixed order, so a resumed run sees the same batches as the uninterrupted one."""

    def train_dataloader(self):
        loader = super().train_dataloader()
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn
        )


def _fit_resumable(root, ckpt_path=None, extra=()):
    pl.seed_everything(0)
    kd = KnowledgeDistillation(_teacher(), feature_pairs=PAIRS, alpha=0.5)
    module = _student()
    dm = _UnshuffledDigits("digits", batch_size=32)
    kwargs = quiet_trainer_kwargs(
        root, max_epochs=2, limit_train_batches=4, limit_val_batches=1, enable_checkpointing=True
    )
    trainer = pl.Trainer(callbacks=[kd, *extra], **kwargs)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, kd


def test_resume_restores_adapters_and_their_optimizer_state(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full_trainer, full_module, full_kd = _fit_resumable(tmp_path / "a", extra=[ckpt])
    mid = str(tmp_path / "ckpt" / "epoch=0.ckpt")
    resumed_trainer, resumed_module, resumed_kd = _fit_resumable(tmp_path / "b", ckpt_path=mid)
    full_adapters, resumed_adapters = full_kd.state_dict()["adapters"], resumed_kd.state_dict()["adapters"]
    assert full_adapters and full_adapters.keys() == resumed_adapters.keys()
    for key, value in full_adapters.items():
        torch.testing.assert_close(resumed_adapters[key], value, rtol=0, atol=1e-6)
    for key, value in full_module.state_dict().items():
        torch.testing.assert_close(resumed_module.state_dict()[key], value, rtol=0, atol=1e-6)
    full_state = full_trainer.optimizers[0].state_dict()
    resumed_state = resumed_trainer.optimizers[0].state_dict()
    adapter_ids = full_state["param_groups"][-1]["params"]
    assert adapter_ids == resumed_state["param_groups"][-1]["params"]
    for pid in adapter_ids:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                resumed_state["state"][pid][key], full_state["state"][pid][key], atol=1e-6, rtol=0
            )


# --------------------------------------------------------------------------------------------- offline cache
def test_cached_logits_equal_online_logits_and_training_is_identical(tmp_path):
    dm = ImageClassificationDataModule("digits", batch_size=32, return_index=True, limit_train_samples=192)
    cached = KnowledgeDistillation(_teacher(), cache_teacher_logits=True)
    cached_trainer, cached_module = _fit(
        tmp_path / "c", cached, dm=dm, max_epochs=2, limit_train_batches=None
    )
    assert cached_trainer.callback_metrics["distill/cache_hit_rate"] == 1.0  # epoch 2: all from the cache
    assert cached_trainer.callback_metrics["distill/teacher_ms_per_step"] == 0.0
    n_train = len(dm.train_split)
    # every sample was computed once, then served from the cache in epoch 2
    assert len(cached.cache) == n_train
    assert cached.stats["teacher_samples"] == n_train
    assert cached.stats["cache_hit_samples"] == n_train
    assert cached.stats["estimated_saved_seconds"] >= 0  # an estimate (no bound on time)
    # cached rows equal what the teacher computes online for those samples
    index = torch.arange(n_train)
    with torch.no_grad():
        online = cached.teacher(dm.to_model_input(dm.train_split.images[index]))
    hit, rows = cached.cache.lookup(index)
    assert bool(hit.all())
    torch.testing.assert_close(rows, online.float(), rtol=0, atol=1e-6)
    # and training with the cache equals training with the teacher online
    online_kd = KnowledgeDistillation(_teacher())
    dm2 = ImageClassificationDataModule("digits", batch_size=32, return_index=True, limit_train_samples=192)
    _, online_module = _fit(tmp_path / "o", online_kd, dm=dm2, max_epochs=2, limit_train_batches=None)
    assert online_kd.stats["teacher_samples"] == 2 * n_train
    for key, value in online_module.state_dict().items():
        torch.testing.assert_close(cached_module.state_dict()[key], value, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- precision, DDP, CLI
def test_bf16_mixed_runs_the_teacher_under_the_same_autocast(tmp_path):
    kd = KnowledgeDistillation(_teacher(), feature_pairs={"features.block2": "features.block2"})
    dtypes: list[torch.dtype] = []
    kd.teacher.module.classifier.fc2.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    trainer, module = _fit(tmp_path, kd, precision="bf16-mixed")
    # the first call is the float32 dry run at setup that sizes the adapters; training steps run in bf16
    assert len(dtypes) > 1 and set(dtypes[1:]) == {torch.bfloat16}
    for key in ("train_loss", "train_loss_kd", "train_loss_feature"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert all(torch.isfinite(p).all() for p in module.parameters())


class _DDPProbe(Callback):
    """Inside each DDP process: the teacher is not part of the DDP model, adapters and student agree across ranks."""

    def __init__(self, kd: KnowledgeDistillation) -> None:
        self.kd = kd

    def on_train_end(self, trainer, pl_module):
        from torch.nn.parallel import DistributedDataParallel

        wrapped = trainer.strategy.model
        assert isinstance(wrapped, DistributedDataParallel), type(wrapped)
        ddp_params = {id(p) for p in wrapped.parameters()}
        assert not ddp_params & {id(p) for p in self.kd.teacher.parameters()}, "teacher wrapped by DDP"
        assert not ddp_params & {id(p) for p in self.kd.adapters.parameters()}
        assert not any(m.training for m in self.kd.teacher.modules())
        flat = torch.cat(
            [p.detach().flatten() for p in [*pl_module.parameters(), *self.kd.adapters.parameters()]]
        )
        gathered = gather_across_ranks(flat)
        assert torch.equal(gathered[0], gathered[1]), "student/adapters differ across ranks"
        assert self.kd.stats["distilled_steps"] > 0


class _SyncDistWarnings(Callback):
    """Inside each DDP process: records the warnings from setup to the end of training; on rank 0 (where
    Lightning warns) none of its "use sync_dist=True" warnings may come (our ``distill/*`` logs and the module's
    ``train_loss*`` epoch means are synced)."""

    def setup(self, trainer, pl_module, stage):
        self._catching = warnings.catch_warnings(record=True)
        self.caught = self._catching.__enter__()
        warnings.simplefilter("always")

    def on_train_end(self, trainer, pl_module):
        self._catching.__exit__(None, None, None)
        if trainer.global_rank != 0:
            return
        sync = [str(w.message) for w in self.caught if "sync_dist" in str(w.message)]
        assert not sync, sync  # distill/* and the module's own train_loss* epoch means
        assert (
            "distill/teacher_ms_per_step" in trainer.callback_metrics
        )  # logged, and averaged over the ranks


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    kd = KnowledgeDistillation(_teacher(), feature_pairs=PAIRS)
    _fit(
        tmp_path,
        kd,
        extra=[_DDPProbe(kd), _SyncDistWarnings()],
        strategy="ddp_spawn",
        devices=2,
        max_epochs=1,
    )


def test_epoch_logs_are_synced_across_ranks(tmp_path, monkeypatch):
    """The ``distill/*`` epoch values are each rank's own (teacher time, cache hits): logged with
    ``sync_dist=True``, the mean over the ranks, so Lightning has no reason to warn under DDP."""
    module = _student()
    calls = []
    log_dict = module.log_dict

    def spy(dictionary, *args, **kwargs):
        if any(k.startswith("distill/") for k in dictionary):
            calls.append(kwargs)
        return log_dict(dictionary, *args, **kwargs)

    monkeypatch.setattr(module, "log_dict", spy)
    trainer, _ = _fit(tmp_path, KnowledgeDistillation(_teacher(), alpha=0.7), module=module, max_epochs=2)
    assert len(calls) == 2  # once per epoch
    assert all(c.get("sync_dist") is True and c.get("on_epoch") and not c.get("on_step") for c in calls)
    assert trainer.callback_metrics["distill/alpha"] == pytest.approx(0.7)


def test_cli_yaml_teacher_from_class_path_and_checkpoint(tmp_path):
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI

    trained = _teacher(seed=3)
    path = _teacher_checkpoint(tmp_path, trained)
    config = tmp_path / "student.yaml"
    config.write_text(
        f"""
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: KnowledgeDistillation
      init_args:
        teacher:
          class_path: ConvNet3
          init_args: {{image_size: 8, channels: [16, 32, 64], hidden: 64, dropout: 0.3}}
        teacher_checkpoint: {path}
        temperature: 5.0
        alpha: 0.75
        final_alpha: 0.9
        feature_pairs: {{fc1: classifier.fc1}}
model:
  class_path: ClassificationModule
  init_args:
    model: {{class_path: LeNet300100, init_args: {{in_features: 64, hidden: [32, 16]}}}}
data:
  class_path: ImageClassificationDataModule
  init_args: {{dataset: digits, batch_size: 32}}
"""
    )
    cli = LightningOptimCLI(
        ClassificationModule,
        LightningDataModule,
        args=["fit", "--config", str(config), "--test_after_fit", "false"],
        auto_configure_optimizers=False,
    )
    kd = next(cb for cb in cli.trainer.callbacks if isinstance(cb, KnowledgeDistillation))
    assert kd.temperature == 5.0 and kd.teacher_checkpoint == path
    torch.testing.assert_close(kd.teacher.module.classifier.fc2.weight.cpu(), trained.classifier.fc2.weight)
    assert cli.trainer.state.finished and kd.stats["distilled_steps"] == 3
    assert "train_loss_kd" in cli.trainer.callback_metrics
    assert os.path.isfile(path)


def _save_random_weights(init_args: dict, path) -> str:
    """A checkpoint (Lightning layout) of a randomly initialized LeNet300100 with ``init_args``."""
    teacher = LeNet300100(**init_args)
    torch.save({"state_dict": {f"model.{k}": v for k, v in teacher.state_dict().items()}}, path)
    return str(path)


@pytest.mark.parametrize(
    "recipe",
    ["distill_mnist_teacher.yaml", "distill_mnist_student.yaml", "distill_mnist_ensemble_student.yaml"],
)
def test_example_recipes_instantiate(recipe, tmp_path):
    import yaml
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI
    from tests.conftest import REPO_ROOT, SHARED_DATA_DIR

    config = yaml.safe_load((REPO_ROOT / "examples" / recipe).read_text())
    config["data"]["init_args"]["data_dir"] = str(SHARED_DATA_DIR)
    config["trainer"]["default_root_dir"] = str(tmp_path)
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"] == "KnowledgeDistillation":  # teacher checkpoints of the recipe's architecture
            teacher = cb["init_args"]["teacher"]
            if teacher["class_path"] == "LogitEnsemble":
                members = teacher["init_args"]["members"]
                assert len(teacher["init_args"]["checkpoints"]) == len(members)
                teacher["init_args"]["checkpoints"] = [
                    _save_random_weights(m["init_args"], tmp_path / f"m{i}.ckpt")
                    for i, m in enumerate(members)
                ]
            else:
                path = _save_random_weights(teacher["init_args"], tmp_path / "teacher.ckpt")
                cb["init_args"]["teacher_checkpoint"] = path
        if "ModelCheckpoint" in cb["class_path"]:
            cb["init_args"]["dirpath"] = str(tmp_path / "ckpt")
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(config))
    cli = LightningOptimCLI(
        ClassificationModule, LightningDataModule, run=False, args=["--config", str(path)]
    )
    assert cli.datamodule.dataset == "mnist"
    kd = [cb for cb in cli.trainer.callbacks if isinstance(cb, KnowledgeDistillation)]
    if recipe != "distill_mnist_teacher.yaml":
        assert len(kd) == 1 and kd[0].cache_teacher_logits and cli.datamodule.return_index
        student, teacher = cli.model.model, kd[0].teacher.module
        assert sum(p.numel() for p in teacher.parameters()) >= 10 * sum(
            p.numel() for p in student.parameters()
        )
