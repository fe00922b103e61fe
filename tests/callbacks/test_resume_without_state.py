"""A resume from a checkpoint that holds no state of a compression callback (saved by a run without it, or with
other settings that make its state key): pruning and quantization keep the model's zeros and say so;
distillation with feature adapters refuses, without them goes on and says so. And the zeros of an ordinary QAT
resume are those of the restored weights."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn

from lightning_optim.callbacks import KnowledgeDistillation, ProgressivePruning, QuantizationAwareTraining
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.callbacks.test_pruning import fixed_loader, group_fit, residual_cnn
from tests.conftest import quiet_trainer_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_mlp() -> nn.Module:
    return LeNet300100(in_features=64, hidden=(48, 24))


def run(root, callbacks, epochs, ckpt_path=None, module=None):
    """A fit on 12 fixed batches per epoch; returns the trainer and the module."""
    pl.seed_everything(0)
    module = (
        module if module is not None else ClassificationModule(small_mlp(), optimizer="momentum", lr=0.05)
    )
    trainer = Trainer(**quiet_trainer_kwargs(root, max_epochs=epochs, callbacks=list(callbacks)))
    trainer.fit(module, train_dataloaders=fixed_loader(), ckpt_path=ckpt_path)
    return trainer, module


def zeros_of(module) -> dict[str, torch.Tensor]:
    return {n: (p.detach() == 0).clone() for n, p in module.model.named_parameters() if n.endswith("weight")}


class ZeroKeeper(Callback):
    """After every training batch: every weight that was zero in the checkpoint still is."""

    def __init__(self, zeros: dict[str, torch.Tensor]) -> None:
        self.zeros, self.checked = zeros, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.model.named_parameters())
        for name, zero in self.zeros.items():
            w = params[name].detach()
            assert torch.count_nonzero(w[zero]) == 0, f"{name}: a weight zero in the checkpoint was revived"
        self.checked += 1


class ZeroOut(Callback):
    """At the end of training, zero the given share of each layer's rows (a checkpoint holding pruned units)."""

    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            for layer in (pl_module.model.fc1, pl_module.model.fc2):
                layer.weight[: layer.weight.shape[0] // 2] = 0
                layer.bias[: layer.bias.shape[0] // 2] = 0


def test_pruning_with_other_settings_keeps_the_checkpoints_zeros_and_says_so(tmp_path):
    """Run A prunes to 80%; run B resumes its checkpoint with `final_sparsity=0.5` (another state key): its ramp,
    laid out from its settings, is already past, and pruning to 50% would revive 30% of the weights."""
    trainer, module = run(
        tmp_path / "a",
        [ProgressivePruning(final_sparsity=0.8, start=0, end=4, unit="step", frequency=2, verbose=False)],
        epochs=1,
    )
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    zeros = zeros_of(module)
    assert int(zeros["fc1.weight"].sum()) == round(0.8 * 48 * 64)

    resumed = ProgressivePruning(final_sparsity=0.5, start=0, end=4, unit="step", frequency=2, verbose=False)
    keeper = ZeroKeeper(zeros)
    with pytest.warns(UserWarning) as record:
        _, module_b = run(tmp_path / "b", [resumed, keeper], epochs=2, ckpt_path=str(ckpt))
    (message,) = [str(w.message) for w in record if "ProgressivePruning: resuming from" in str(w.message)]
    assert "which holds no state of this callback (its state key" in message
    assert "are kept at zero as masks: no pruning step revives them" in message
    assert keeper.checked == 12
    assert resumed.global_sparsity() >= 0.8 - 1e-3
    for name, zero in zeros.items():
        assert torch.count_nonzero(module_b.model.get_parameter(name).detach()[zero]) == 0, name


@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_pruning_added_on_resume_keeps_the_zeros_before_its_ramp_starts(tmp_path, granularity):
    """Run A (no pruning callback) ends with half the units of fc1/fc2 zero; run B resumes it with a ramp that
    starts two epochs later: while the phase is pending, the zeros stay zero (they would train back)."""
    trainer, module = run(tmp_path / "a", [ZeroOut()], epochs=1)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    zeros = {n: z for n, z in zeros_of(module).items() if n in ("fc1.weight", "fc2.weight")}
    cb = ProgressivePruning(final_sparsity=0.6, start=3, end=4, granularity=granularity, verbose=False)
    keeper = ZeroKeeper(zeros)
    with pytest.warns(
        UserWarning, match=r"ProgressivePruning: resuming from .* which holds no state .*kept at zero"
    ):
        _, module_b = run(tmp_path / "b", [cb, keeper], epochs=5, ckpt_path=str(ckpt))
    assert keeper.checked == 4 * 12
    assert set(cb.kept_zeros) == {"fc1.weight", "fc2.weight"}
    fc1 = module_b.model.fc1.weight
    assert int((fc1 == 0).sum()) >= round(0.6 * fc1.numel())
    if granularity == "structured":  # the zero units' biases stay zero too
        assert torch.count_nonzero(module_b.model.fc1.bias[:24]) == 0


def test_pruning_resumed_from_its_own_checkpoint_says_nothing(tmp_path):
    kwargs = dict(final_sparsity=0.8, start=0, end=20, unit="step", frequency=4, verbose=False)
    trainer, _ = run(tmp_path / "a", [ProgressivePruning(**kwargs)], epochs=1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    resumed = ProgressivePruning(**kwargs)
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(tmp_path / "b", [resumed], epochs=2, ckpt_path=str(tmp_path / "a.ckpt"))
    assert not [w for w in record if "resuming from" in str(w.message)]
    assert resumed.kept_zeros == {} and resumed.phase_state(None) == "done"


def test_channel_groups_keep_the_checkpoints_zero_channels(tmp_path):
    seed = dict(start=0, end=1, unit="epoch", granularity="channel_groups", verbose=False)
    pl.seed_everything(0)
    trainer, module = group_fit(
        tmp_path / "a", ProgressivePruning(final_sparsity=0.5, **seed), residual_cnn(), epochs=2
    )
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    zeros = zeros_of(module)
    resumed = ProgressivePruning(final_sparsity=0.25, **seed)
    pl.seed_everything(0)
    with pytest.warns(
        UserWarning, match=r"channels that are zero in the checkpoint .* are kept at zero as masks"
    ):
        _, module_b = group_fit(
            tmp_path / "b", resumed, residual_cnn(), epochs=3, ckpt_path=str(ckpt), extra=[ZeroKeeper(zeros)]
        )
    for name, zero in zeros.items():
        assert torch.count_nonzero(module_b.model.get_parameter(name).detach()[zero]) == 0, name


# ------------------------------------------------------------------------------------------------ quantization
QAT = dict(
    backend="eager", latency_batch_sizes=(), verbose=False, report=False, export=False, dry_run=False,
    convert_on_fit_end=False,
)  # fmt: skip


@pytest.mark.parametrize("with_state", [True, False], ids=["own_checkpoint", "checkpoint_without_qat"])
def test_qat_resumed_keeps_the_zeros_of_the_restored_weights(tmp_path, with_state):
    """QAT from epoch 0 prepares the network at setup and used to take its zero masks from the initial weights,
    before the checkpoint was restored: the checkpoint's (pruned) zeros then trained back."""
    first = [QuantizationAwareTraining(**QAT)] if with_state else []
    trainer, module = run(tmp_path / "a", [*first, ZeroOut()], epochs=1)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    zeros = {n: z for n, z in zeros_of(module).items() if n.startswith(("fc1", "fc2")) and bool(z.any())}
    assert zeros
    qat = QuantizationAwareTraining(**QAT)
    keeper = ZeroKeeper(zeros)
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(tmp_path / "b", [qat, keeper], epochs=2, ckpt_path=str(ckpt))
    assert keeper.checked == 12
    said = [str(w.message) for w in record if "QuantizationAwareTraining: resuming from" in str(w.message)]
    if with_state:
        assert not said
    else:
        assert len(said) == 1 and "holds no state of this callback" in said[0]
        assert "weights that are exactly zero in the checkpoint (pruned) are kept at zero" in said[0]


# ------------------------------------------------------------------------------------------------ distillation
class _NoStep(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        raise AssertionError("an optimizer step ran")


def test_distillation_with_adapters_refuses_a_checkpoint_without_them(tmp_path):
    trainer, _ = run(tmp_path / "a", [], epochs=1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    kd = KnowledgeDistillation(
        teacher=LeNet300100(in_features=64, hidden=(32, 16)),
        feature_pairs={"fc1": "fc1"},
        input_shape=(1, 8, 8),
    )
    with pytest.raises(ValueError, match=r"holds no state of this callback .*feature adapters .* refused"):
        run(tmp_path / "b", [kd, _NoStep()], epochs=2, ckpt_path=str(tmp_path / "a.ckpt"))


def test_distillation_without_adapters_goes_on_and_says_so(tmp_path):
    trainer, _ = run(tmp_path / "a", [], epochs=1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    kd = KnowledgeDistillation(teacher=LeNet300100(in_features=64, hidden=(32, 16)))
    with pytest.warns(
        UserWarning, match=r"KnowledgeDistillation: resuming from .* Distillation goes on by its"
    ):
        trainer_b, _ = run(tmp_path / "b", [kd], epochs=2, ckpt_path=str(tmp_path / "a.ckpt"))
    assert trainer_b.global_step == 24 and kd.stats["distilled_steps"] == 12
