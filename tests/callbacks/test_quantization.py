"""QuantizationAwareTraining and PostTrainingQuantization in real Trainer runs on the embedded digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_optim.callbacks import PostTrainingQuantization, QuantizationAwareTraining
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.quantization import QuantizationError
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs
from tests.nets import NoLayers, Residual

REPO_ROOT = Path(__file__).resolve().parents[2]
QUIET = {"latency_batch_sizes": (), "verbose": False}
#: the eager stack (these tests check its structures; the PT2E ones are in test_quantization_pt2e.py)
FAST = {"backend": "eager", **QUIET}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_convnet() -> ConvNet3:
    return ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)


def trainer_kwargs(root, **overrides) -> dict[str, Any]:
    kwargs = quiet_trainer_kwargs(root, max_epochs=2, deterministic=True)
    kwargs.update(overrides)
    return kwargs


def fit(root, callbacks, model=None, ckpt_path=None, **overrides):
    pl.seed_everything(0, workers=True)
    net = model if model is not None else tiny_convnet()
    module = ClassificationModule(net, num_classes=10, optimizer="adam", lr=1e-2)
    dm = ImageClassificationDataModule("digits", batch_size=32)
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(root, **overrides))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, dm


class Recorder(Callback):
    """Snapshots of the QAT state at the end of each training epoch."""

    def __init__(self, qat: QuantizationAwareTraining) -> None:
        self.qat = qat
        self.rows: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        model = pl_module.model
        row: dict[str, Any] = {
            "phase": self.qat.phase_state(trainer),
            "prepared": hasattr(model, "quant_stub"),
        }
        if row["prepared"]:
            conv = model.features.block1.conv
            row["running_mean"] = conv.bn.running_mean.clone()
            row["scale"] = conv.activation_post_process.scale.clone()
            row["observer_enabled"] = int(conv.activation_post_process.observer_enabled[0])
        self.rows.append(row)


# ----------------------------------------------------------------------------------------- schedule
def test_qat_starts_freezes_and_converts_at_the_chosen_epochs(tmp_path):
    qat = QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=2, freeze_observers_epoch=3, **FAST)
    recorder = Recorder(qat)
    trainer, module, dm = fit(
        tmp_path, [qat, recorder], max_epochs=4, limit_train_batches=4, limit_val_batches=2
    )
    rows = recorder.rows
    assert [r["prepared"] for r in rows] == [False, True, True, True]
    assert [r["phase"] for r in rows] == ["pending", "active", "active", "done"]
    assert qat.started_epoch == 1 and qat.bn_frozen and qat.observers_frozen
    # BN statistics move in epoch 1 only; quantization ranges move in epochs 1-2, not 3
    assert torch.equal(rows[1]["running_mean"], rows[2]["running_mean"])
    assert torch.equal(rows[2]["running_mean"], rows[3]["running_mean"])
    assert not torch.equal(rows[1]["scale"], rows[2]["scale"])
    assert torch.equal(rows[2]["scale"], rows[3]["scale"])
    assert [r["observer_enabled"] for r in rows[1:]] == [1, 1, 0]
    # int8 at the end: handed back, saved, and put in the module so that test() measures it
    assert qat.converted and qat.exported_path.is_file()
    assert module.model is qat.quantized_model
    weights = [m.weight() for m in qat.quantized_model.modules() if callable(getattr(m, "weight", None))]
    assert len(weights) == 5 and all(w.is_quantized and w.dtype == torch.qint8 for w in weights)
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert result["test_acc"] > 0.5


def test_validation_does_not_move_quantization_ranges(tmp_path):
    qat = QuantizationAwareTraining(start_epoch=0, convert_on_fit_end=False, **FAST)

    class Check(Callback):
        def on_validation_start(self, trainer, pl_module):
            self.before = pl_module.model.features.block1.conv.activation_post_process.scale.clone()
            self.flag = int(pl_module.model.features.block1.conv.activation_post_process.observer_enabled[0])

        def on_validation_end(self, trainer, pl_module):
            after = pl_module.model.features.block1.conv.activation_post_process.scale
            assert self.flag == 0 and torch.equal(self.before, after)
            self.checked = True

    check = Check()
    fit(tmp_path, [qat, check], max_epochs=1, limit_train_batches=3, limit_val_batches=3)
    assert check.checked and qat.quantized_model is None and not qat.converted


def test_start_after_a_named_phase(tmp_path):
    class FakePruning(Callback):
        phase_name = "pruning"

        def phase_state(self, trainer):
            return "done" if trainer.current_epoch >= 2 else "active"

    qat = QuantizationAwareTraining(start_after="pruning", **FAST)
    fit(tmp_path, [FakePruning(), qat], max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    assert qat.started_epoch == 2 and qat.converted

    with pytest.raises(ValueError, match="No callback with phase_name='pruning'"):
        fit(tmp_path, [QuantizationAwareTraining(start_after="pruning", **FAST)], limit_train_batches=1)


def test_convert_on_demand_keeps_training_possible(tmp_path):
    qat = QuantizationAwareTraining(
        backend="eager", convert_on_fit_end=False, export=False, report=False, verbose=False
    )
    trainer, module, _ = fit(tmp_path, [qat], max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    int8 = qat.convert(trainer, module)
    assert int8 is qat.quantized_model and module.model is not int8
    assert hasattr(module.model, "quant_stub") and not qat.converted


# ----------------------------------------------------------------------------------------- accuracy
def test_qat_int8_accuracy_close_to_float(tmp_path):
    qat = QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=3, freeze_observers_epoch=3, **FAST)
    fit(tmp_path, [qat], max_epochs=4)
    report = qat.quantization_report
    assert report.fp32_accuracy > 0.85
    assert abs(report.int8_accuracy - report.fp32_accuracy) <= 0.021  # 3 of the 144 validation digits
    assert report.int8_state_dict_bytes < 0.6 * report.fp32_state_dict_bytes  # tiny model: fixed overheads


def test_ptq_after_fit_and_on_validate(tmp_path):
    ptq = PostTrainingQuantization(calibration_batches=4, **FAST)
    trainer, module, dm = fit(tmp_path, [ptq], max_epochs=3)
    report = ptq.quantization_report
    assert ptq.calibrated_batches == 4 and ptq.exported_path.is_file()
    assert report.fp32_accuracy > 0.85
    assert abs(report.int8_accuracy - report.fp32_accuracy) <= 0.021
    assert module.model is ptq.quantized_model
    # quantize a float model without training it: trainer.validate
    float_module = ClassificationModule(tiny_convnet())
    ptq2 = PostTrainingQuantization(
        calibration_batches=2, calibration_split="val", replace_model=False, **FAST
    )
    pl.Trainer(callbacks=[ptq2], **trainer_kwargs(tmp_path / "v")).validate(
        float_module, datamodule=dm, verbose=False
    )
    assert ptq2.done and ptq2.quantized_model is not None and float_module.model is not ptq2.quantized_model


def test_bf16_mixed_keeps_fake_quantization_sound(tmp_path):
    qat = QuantizationAwareTraining(start_epoch=0, freeze_observers_epoch=2, replace_model=False, **FAST)
    trainer, module, _ = fit(tmp_path, [qat], max_epochs=3, precision="bf16-mixed")
    report = qat.quantization_report
    assert report.fp32_accuracy > 0.8 and report.int8_accuracy > 0.8
    assert report.int8_accuracy >= report.fp32_accuracy - 0.035
    grid = qat.backend.quantization_state(module.model)
    scales = [v for k, v in grid.items() if k.endswith("scale")]
    assert len(scales) >= 6
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() and (s > 0).all() for s in scales)
    for name, value in module.model.state_dict().items():
        assert torch.isfinite(value.float()).all(), name
    for name, value in qat.quantized_model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), name


# ----------------------------------------------------------------------------------------- resume
def _int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        values = value if isinstance(value, tuple) else (value,)
        for i, v in enumerate(values):
            if isinstance(v, torch.Tensor):
                out[f"{key}.{i}"] = v.dequantize() if v.is_quantized else v
    return out


def test_resume_mid_qat_equals_uninterrupted(tmp_path):
    def run(root, ckpt_path=None):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        qat = QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=2, **FAST)
        callbacks = [qat, ckpt] if ckpt_path is None else [qat]
        _, module, _ = fit(
            root,
            callbacks,
            ckpt_path=ckpt_path,
            max_epochs=3,
            limit_train_batches=4,
            limit_val_batches=1,
            enable_checkpointing=True,
        )
        return qat, module

    full_qat, full_module = run(tmp_path / "a")
    mid = tmp_path / "ckpt" / "epoch=1.ckpt"  # taken after QAT started: the prepared structure
    state = torch.load(mid, weights_only=True)["state_dict"]
    assert any(".quant_stub." in k for k in state)
    resumed_qat, resumed_module = run(tmp_path / "b", ckpt_path=str(mid))
    assert resumed_qat.started_epoch == 1 and resumed_qat.bn_frozen
    a, b = _int8_state(full_qat.quantized_model), _int8_state(resumed_qat.quantized_model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(full_qat.quantized_model(x), resumed_qat.quantized_model(x))


# ----------------------------------------------------------------------------------------- bad input
def test_bad_arguments_fail_at_construction():
    with pytest.raises(
        ValueError, match=r"Unknown quantization `backend` 'qnnpak'; allowed: \['eager', 'pt2e'\]"
    ):
        QuantizationAwareTraining(backend="qnnpak")
    with pytest.raises(
        ValueError, match=r"Unknown quantization `engine` 'qnnpak'; allowed: \['x86', 'fbgemm'\]\."
    ):
        PostTrainingQuantization(engine="qnnpak")
    with pytest.raises(ValueError, match="`start_epoch` must be an int >= 0"):
        QuantizationAwareTraining(start_epoch=-1)
    with pytest.raises(ValueError, match="`freeze_observers_epoch` must be > `start_epoch`"):
        QuantizationAwareTraining(start_epoch=3, freeze_observers_epoch=3)
    with pytest.raises(ValueError, match="`freeze_bn_epoch` must be >= `start_epoch`"):
        QuantizationAwareTraining(start_epoch=3, freeze_bn_epoch=2)
    with pytest.raises(ValueError, match="fp32_best_effort"):
        QuantizationAwareTraining(fp32_best_effort=("tensorrt",))
    with pytest.raises(
        ValueError, match=r"Unknown `calibration_split` 'holdout'; allowed: \['train', 'val', 'test'\]\."
    ):
        PostTrainingQuantization(calibration_split="holdout")
    with pytest.raises(ValueError, match="calibration_batches"):
        PostTrainingQuantization(calibration_batches=0)


def test_start_epoch_after_max_epochs(tmp_path):
    with pytest.raises(ValueError, match=r"`start_epoch`=5 is not before the Trainer's max_epochs=2"):
        fit(tmp_path, [QuantizationAwareTraining(start_epoch=5, **FAST)])


def test_model_without_quantizable_layers(tmp_path):
    with pytest.raises(QuantizationError, match="NoLayers has no quantizable layer"):
        fit(tmp_path, [QuantizationAwareTraining(**FAST)], model=NoLayers(), limit_train_batches=1)


def test_forward_that_cannot_be_quantized_fails_on_the_first_batch(tmp_path):
    with pytest.raises(
        QuantizationError, match=r"forward of Residual cannot run on int8 tensors.*QuantizedCPU"
    ):
        fit(tmp_path, [QuantizationAwareTraining(**FAST)], model=Residual(), limit_train_batches=2)


# ----------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("recipe", ["qat_lenet5.yaml", "qat_convnet3.yaml", "ptq_convnet3.yaml"])
def test_example_recipes_instantiate_from_yaml(recipe, tmp_path, monkeypatch):
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI

    monkeypatch.chdir(REPO_ROOT)
    cli = LightningOptimCLI(
        ClassificationModule,
        LightningDataModule,
        run=False,
        args=["--config", str(REPO_ROOT / "examples" / recipe), f"--trainer.default_root_dir={tmp_path}"],
    )
    expected = PostTrainingQuantization if recipe.startswith("ptq") else QuantizationAwareTraining
    found = [cb for cb in cli.trainer.callbacks if isinstance(cb, expected)]
    assert len(found) == 1
    # the compact artifact is an eager format: that recipe names the eager stack; the others take "auto"
    stack = "eager" if recipe == "qat_lenet5.yaml" else "pt2e"
    assert (found[0].backend_name, found[0].engine) == (stack, "x86")


# ----------------------------------------------------------------------------------------- backend/engine
@pytest.mark.parametrize("cls", [QuantizationAwareTraining, PostTrainingQuantization])
def test_backend_is_the_stack_and_engine_the_kernel_target(cls):
    cb = cls(engine="fbgemm", **FAST)
    assert (cb.backend_name, cb.engine) == ("eager", "fbgemm")
    assert (cb.backend.name, cb.backend.engine) == ("eager", "fbgemm")
    default = cls(**FAST)
    assert (default.backend_name, default.engine) == ("eager", "x86")


@pytest.mark.parametrize("cls", [QuantizationAwareTraining, PostTrainingQuantization])
@pytest.mark.parametrize("engine", ["x86", "fbgemm"])
def test_engine_passed_as_backend_still_works_for_one_release(cls, engine):
    """``backend="x86"`` (the old meaning: the engine) maps to ``engine`` with a warning naming ``engine``; the
    state key is the one of the old releases, so checkpoints resume."""
    with pytest.warns(
        DeprecationWarning, match=rf"`backend='{engine}'` names a quantized engine: pass `engine="
    ):
        old = cls(backend=engine, **QUIET)
    new = cls(backend="eager", engine=engine, **QUIET)
    assert (old.backend_name, old.engine) == ("eager", engine)
    assert old.state_key == new.state_key
    assert f"'backend': '{engine}'" in new.state_key  # the key argument keeps its old name and value


def test_state_keys_are_the_old_strings():
    assert QuantizationAwareTraining(**FAST).state_key == (
        "QuantizationAwareTraining{'backend': 'x86', 'start_epoch': 0, 'start_after': None, 'attribute': 'model'}"
    )
    assert PostTrainingQuantization(**FAST).state_key == (
        "PostTrainingQuantization{'backend': 'x86', 'attribute': 'model'}"
    )


def test_callbacks_offer_the_int8_model(tmp_path):
    """The OffersModel contract: ``compressed_model`` is ``quantized_model`` (read-only)."""
    from lightning_optim.callbacks.phases import OffersModel, offered_model

    ptq = PostTrainingQuantization(calibration_batches=2, export=False, report=False, **FAST)
    assert isinstance(ptq, OffersModel) and ptq.compressed_model is None
    with pytest.raises(AttributeError):
        ptq.compressed_model = nn.Identity()
    trainer, _, _ = fit(tmp_path, [ptq], max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    assert ptq.compressed_model is ptq.quantized_model is not None
    assert offered_model(trainer) is ptq.quantized_model


# ----------------------------------------------------------------------------------------- DDP
class SaveRankResult(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        qat = next(cb for cb in trainer.callbacks if isinstance(cb, QuantizationAwareTraining))
        torch.manual_seed(123)
        x = torch.randn(8, 1, 8, 8)
        torch.save(
            {
                "state": _int8_state(qat.quantized_model),
                "y": qat.quantized_model(x),
                "world": trainer.world_size,
            },
            Path(self.out) / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_int8_model_identical_on_every_rank(tmp_path):
    qat = QuantizationAwareTraining(start_epoch=1, replace_model=False, **FAST)
    fit(
        tmp_path,
        [qat, SaveRankResult(str(tmp_path))],
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        devices=2,
        strategy="ddp_spawn",
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert torch.equal(r0["y"], r1["y"])


# ----------------------------------------------------------------------------------------- pipeline
def test_qat_after_progressive_pruning_keeps_the_pruned_zeros_in_int8(tmp_path):
    from lightning_optim.callbacks import ProgressivePruning

    pruning = ProgressivePruning(final_sparsity=0.6, start=0, end=4, unit="step", frequency=2, verbose=False)
    qat = QuantizationAwareTraining(start_after="pruning", freeze_observers_epoch=2, **FAST)
    fit(tmp_path, [pruning, qat], max_epochs=3, limit_train_batches=6, limit_val_batches=1)
    assert qat.started_epoch == 1  # pruning's ramp ends within epoch 0
    int8 = {
        n: m.weight() for n, m in qat.quantized_model.named_modules() if callable(getattr(m, "weight", None))
    }
    checked = 0
    for name, mask in pruning.masks.items():  # "features.block1.conv.weight" -> int8 layer
        weight = int8[f"module.{name.rsplit('.', 1)[0]}"].int_repr()
        assert weight.shape == mask.shape
        assert (weight[~mask.bool()] == 0).all(), name
        checked += int((~mask.bool()).sum())
    assert checked > 0


def test_artifact_export_format_writes_the_compact_artifact(tmp_path):
    """export_format="artifact": the callback writes a .lopt (export_quantized; its loading is tested in
    tests/functional/quantization/test_export.py) that load_artifact reads back as the same int8 model."""
    from lightning_optim.functional.artifact import load_artifact

    ptq = PostTrainingQuantization(calibration_batches=2, export_format="artifact", **FAST)
    fit(tmp_path, [ptq], max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    path = ptq.exported_path
    assert path == tmp_path / "quantization" / "model_int8_ptq.lopt" and path.is_file()
    x = torch.randn(3, 1, 8, 8)
    with ptq.backend.int8_context():  # the Trainer ran with deterministic=True
        assert torch.equal(load_artifact(path)(x), ptq.quantized_model(x))
    with pytest.raises(
        ValueError,
        match=r"Unknown `export_format` 'onnx'; allowed: \['torchscript', 'artifact'\] \(what backend='eager'",
    ):
        QuantizationAwareTraining(backend="eager", export_format="onnx")


# ----------------------------------------------------------------------------------------- after pruning
@pytest.mark.parametrize("compact", [True, False], ids=["compacted", "unfused"])
def test_structured_pruning_then_qat_trains_and_converts(tmp_path, compact):
    """Issue 24's nine-line crash: structured pruning zeroes batch-norm scales, and fused QAT conv-BN divides by
    them (NaN loss, then `zero_point must be between quant_min and quant_max`). By default the pruning phase
    compacts the network before QAT starts; without that, the zero-scale pairs train unfused."""
    from lightning_optim.callbacks import ProgressivePruning
    from lightning_optim.functional.quantization.fusion import ZERO_SCALE

    class LossRecorder(Callback):
        losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    pruning = ProgressivePruning(
        final_sparsity=0.5, start=0, end=1, granularity="filter", module_types=["Conv2d"], verbose=False
    )
    qat = QuantizationAwareTraining(start_after="pruning", compact_pruned=compact, **FAST)
    recorder = LossRecorder()
    _, module, _ = fit(tmp_path, [pruning, qat, recorder], model=ConvNet3(image_size=8), max_epochs=4)
    assert qat.prepared and qat.converted
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    report = qat.quantization_report
    assert report.fp32_accuracy > 0.85 and report.int8_accuracy > 0.85
    unfused = [name for name, reason in qat.fusion_plan.not_fused if reason == ZERO_SCALE]
    assert pruning.compacted is compact
    if compact:  # half the filters gone before QAT, every conv-bn pair fused
        assert not unfused and qat.fusion_plan.groups
        convs = [m for m in qat._float_reference.modules() if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == [
            c.out_channels // 2 for c in ConvNet3(image_size=8).modules() if isinstance(c, nn.Conv2d)
        ]
    else:
        assert unfused


# ----------------------------------------------------------------------------------------- what a user sees
def test_qat_report_labels_its_columns_and_says_why_int8_beats_fp32(tmp_path, monkeypatch):
    """Issue 27: a short QAT run printed fp32 32% against int8 56% without a word. The columns say what they
    measure, and a gap of more than a few points gets one line on what the two accuracies are."""
    from lightning_optim.callbacks import quantization

    measured = iter([0.32, 0.56])  # fp32 (fake quantization off), then int8: the run's two evaluations
    monkeypatch.setattr(quantization, "accuracy", lambda model, batches: (list(batches), next(measured))[1])
    qat = QuantizationAwareTraining(start_epoch=1, export=False, **FAST)
    fit(tmp_path, [qat], max_epochs=3, limit_train_batches=2)
    report = qat.quantization_report
    assert (report.fp32_label, report.int8_label) == ("fp32 after QAT", "int8 after QAT")
    assert report.accuracy_samples == 144  # the digits' validation split
    lines = qat.report_table.splitlines()
    assert lines[2] == "| | fp32 after QAT | int8 after QAT | ratio |"
    assert "| accuracy (%) | 32.00 | 56.00 | +24.00 pt |" in lines
    (note,) = [line for line in lines if line.startswith("Note:")]
    assert note.startswith(
        "Note: int8 is 24.0 points above fp32 on 144 validation samples: both are the weights after 2 epochs "
        "of QAT, fp32 with fake quantization off;"
    )
    assert "short run that has not converged" in note


def test_ptq_close_accuracies_need_no_note_and_columns_say_ptq(tmp_path):
    ptq = PostTrainingQuantization(calibration_batches=3, export=False, **FAST)
    fit(tmp_path, [ptq], max_epochs=2)
    report = ptq.quantization_report
    assert abs(report.int8_accuracy - report.fp32_accuracy) <= 0.021
    assert (report.fp32_label, report.int8_label) == ("fp32", "int8 (PTQ, 3 calibration batches)")
    assert "| | fp32 | int8 (PTQ, 3 calibration batches) | ratio |" in ptq.report_table
    assert "Note:" not in ptq.report_table


class _Bars:
    """A spy on ``work_progress``: every bar's label, total and how far it went (the real bars run)."""

    def __init__(self, real):
        self.real = real
        self.bars: list[Any] = []

    def __call__(self, trainer, iterable=None, *, desc, total=None):
        bar = self.real(trainer, iterable, desc=desc, total=total)
        bar.shown = not bar.disable  # closing a bar disables it
        self.bars.append(bar)
        return bar

    def get(self, start: str) -> Any:
        (bar,) = [b for b in self.bars if b.desc.startswith(start)]
        return bar


def test_calibration_export_and_evaluation_show_progress(tmp_path, monkeypatch, capsys):
    """Calibration, the export of each deploy file and the end-of-fit evaluation run outside the Trainer's
    loops: each has a progress bar, shown (on rank 0) when the Trainer shows its own."""
    from lightning_optim.callbacks import _trainer, quantization

    bars = _Bars(_trainer.work_progress)
    monkeypatch.setattr(quantization, "work_progress", bars)
    ptq = PostTrainingQuantization(
        calibration_batches=3, export_format=["torchscript", "artifact"], eval_batches=2, **FAST
    )
    fit(tmp_path, [ptq], max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=True)
    calibration = bars.get("Calibrating on train")
    assert calibration.total == 3 and calibration.n == ptq.calibrated_batches == 3
    export = bars.get("Exporting the int8 model")
    assert export.total == export.n == 2 and len(ptq.exported_paths) == 2
    evaluation = bars.get("Evaluating fp32 and int8")
    assert evaluation.total == evaluation.n == 4  # 2 validation batches, each model
    assert all(b.shown for b in bars.bars)
    err = capsys.readouterr().err
    assert "Calibrating on train" in err and "Exporting the int8 model" in err
    # no progress bar on the Trainer: none of ours either
    bars.bars.clear()
    fit(
        tmp_path / "quiet",
        [PostTrainingQuantization(calibration_batches=2, export=False, **FAST)],
        max_epochs=1,
    )
    assert bars.bars and not any(b.shown for b in bars.bars)


def test_qat_is_described_in_plain_words(tmp_path):
    qat = QuantizationAwareTraining(start_after="pruning", **FAST)
    assert qat.describe_phase(None) == "pending (starts after pruning)"
    assert (
        QuantizationAwareTraining(start_epoch=2, **FAST).describe_phase(None) == "pending (starts at epoch 2)"
    )
    assert qat.describe_phase(None, finished=True) == "never started"
    qat = QuantizationAwareTraining(
        start_epoch=1, freeze_observers_epoch=2, export=False, report=False, **QUIET
    )
    recorded = []

    class Words(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            recorded.append(qat.describe_phase(trainer))

    fit(tmp_path, [qat, Words()], max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    assert recorded == [
        "pending (starts at epoch 1)",
        "running (QAT epoch 1 of 2)",
        "running (QAT epoch 2 of 2, ranges frozen)",
    ]
    assert qat.describe_phase(None) == qat.describe_phase(None, finished=True) == "done (int8)"


def test_ranges_are_not_observed_before_the_first_training_batch(tmp_path):
    """QAT from epoch 0 prepares the network at setup; what runs before training (the LightningModule's dry run
    at setup, on zeros) must not be observed: a first observation of zeros set the ranges near 0, and a
    bf16-mixed run then learned nothing (10% accuracy)."""
    seen = {}

    class BeforeTraining(Callback):
        def on_train_start(self, trainer, pl_module):
            observer = pl_module.model.features.block1.conv.activation_post_process.activation_post_process
            seen["min"], seen["max"] = float(observer.min_val), float(observer.max_val)

    qat = QuantizationAwareTraining(start_epoch=0, export=False, report=False, **FAST)
    fit(tmp_path, [qat, BeforeTraining()], max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    assert seen == {"min": float("inf"), "max": float("-inf")}  # nothing observed yet
