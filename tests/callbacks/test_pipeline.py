"""The pipeline on a tiny task: stage order and hand-offs, early stopping held, warm start, bad recipes."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim.callbacks import (
    CompressionReport,
    EarlyStopping,
    KnowledgeDistillation,
    ProgressivePruning,
    QuantizationAwareTraining,
)
from lightning_optim.callbacks.pipeline import CompressionPipeline, WarmStart
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from lightning_optim.weights import load_weights
from tests.conftest import quiet_trainer_kwargs


def net() -> LeNet300100:
    return LeNet300100(in_features=64, hidden=(32, 16))


def qat(**kw) -> QuantizationAwareTraining:
    return QuantizationAwareTraining(export=False, report=False, verbose=False, **kw)


def test_stage_order_handoffs_and_early_stopping_held(tmp_path):
    pl.seed_everything(0)
    pipeline = CompressionPipeline()
    # patience 0 and an impossible min_delta: without the hold-off this stops after the second epoch
    stopper = EarlyStopping(monitor="val_loss", mode="min", patience=0, min_delta=10.0)
    report = CompressionReport(
        latency_batch_sizes=(1,), latency_repeats=1, latency_warmup=0, plot=False, verbose=False
    )
    callbacks = [
        ProgressivePruning(final_sparsity=0.8, start=0, end=2, unit="epoch", verbose=False),
        KnowledgeDistillation(teacher=net(), start_epoch=2),
        qat(start_after="pruning", freeze_observers_epoch=4),
        stopper,
        pipeline,
        report,
    ]
    trainer = pl.Trainer(
        callbacks=callbacks,
        **quiet_trainer_kwargs(tmp_path, max_epochs=8, limit_train_batches=3, limit_val_batches=2),
    )
    trainer.fit(
        ClassificationModule(net(), lr=1e-2),
        datamodule=ImageClassificationDataModule("digits", batch_size=32),
    )
    events = [(h["phase"], h["state"], h["epoch"]) for h in pipeline.handoffs if h["when"] == "epoch start"]
    assert ("pruning", "active", 0) in events and ("pruning", "done", 2) in events
    assert ("quantization", "active", 2) in events and ("quantization", "done", 4) in events
    first = {(p, s): e for p, s, e in reversed(events)}
    assert first[("pruning", "done")] <= first[("quantization", "active")] < first[("quantization", "done")]
    # early stopping waited for the schedule, then stopped (before max_epochs)
    assert 5 <= trainer.current_epoch < 8, trainer.current_epoch
    stages = [r["stage"] for r in report.rows]
    assert stages[0] == "fit start" and "pruning done" in stages
    assert "quantization schedule done" in stages  # ranges frozen while QAT still trains: not "done"
    assert report.rows[-1]["precision"] == "int8" and report.rows[-1]["weight_sparsity"] >= 0.75


def test_printed_states_say_what_runs(tmp_path, caplog):
    """Issue 27: distillation without an end epoch is "done" for the phase contract from its first epoch, but
    it distills to the end: what is printed says "running (epoch k of n)", "done" only once training ended,
    in plain text (never a raw dict, also in EarlyStopping's hold-off message)."""
    pl.seed_everything(0)
    pipeline = CompressionPipeline()
    callbacks = [
        ProgressivePruning(final_sparsity=0.5, start=0, end=2, unit="epoch", verbose=False),
        KnowledgeDistillation(teacher=net(), start_epoch=2),
        qat(start_after="pruning"),
        EarlyStopping(monitor="val_loss", mode="min", patience=5),
        pipeline,
    ]
    trainer = pl.Trainer(
        callbacks=callbacks,
        **quiet_trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=2, limit_val_batches=1),
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(
            ClassificationModule(net(), lr=1e-2),
            datamodule=ImageClassificationDataModule("digits", batch_size=32),
        )
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CompressionPipeline:")]
    assert said[0].splitlines() == [
        "CompressionPipeline: start of epoch 0:",
        "  pruning: running (pruning step 1 of 3, target 0%)",
        "  distillation: pending (starts at epoch 2)",
        "  quantization: pending (starts after pruning)",
    ], said
    assert (
        "CompressionPipeline: start of epoch 2:\n  pruning: done (target 50%)\n"
        "  distillation: running (epoch 1 of 2)\n  quantization: running (QAT epoch 1 of 2)"
    ) in said, said
    assert (
        said[-1] == "CompressionPipeline: end of training:\n  distillation: done\n  quantization: done (int8)"
    )
    assert sum("distillation: done" in m for m in said) == 1  # said once, when it is
    held = [r.getMessage() for r in caplog.records if "holds off" in r.getMessage()]
    assert held and "pruning: running (pruning step" in held[0] and "{" not in held[0], held
    # the hand-offs keep the contract's states, with what was said
    kd = [h for h in pipeline.handoffs if h["phase"] == "distillation"]
    assert [(h["state"], h["status"]) for h in kd] == [
        ("pending", "pending (starts at epoch 2)"),
        ("done", "running (epoch 1 of 2)"),
    ]


def test_warm_start_loads_checkpoint_weights(tmp_path):
    teacher = ClassificationModule(net())
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": teacher.state_dict()}, path)
    student = net()
    load_weights(student, str(path), "checkpoint")
    assert all(
        torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.model.state_dict().values())
    )
    module = ClassificationModule(net())
    WarmStart(str(path)).setup(None, module, "fit")
    assert torch.equal(module.model.fc1.weight, teacher.model.fc1.weight)
    with pytest.raises(FileNotFoundError):
        WarmStart(str(tmp_path / "missing.ckpt")).setup(None, module, "fit")
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(LeNet300100(in_features=64), str(path), "checkpoint")


def test_staged_variant_chains_checkpoints(tmp_path):
    """Stage 1 (pruning, its own fit, ModelCheckpoint) hands its checkpoint to stage 2 (WarmStart + QAT)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_optim.functional.compression_report.measure import count_nonzero

    dm = ImageClassificationDataModule("digits", batch_size=32)
    pl.seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="pruned", enable_version_counter=False)
    stage1 = pl.Trainer(
        callbacks=[
            ProgressivePruning(final_sparsity=0.9, start=0, end=2, unit="epoch", verbose=False),
            checkpoint,
        ],
        **{
            **quiet_trainer_kwargs(tmp_path / "s1", max_epochs=3, limit_train_batches=3, limit_val_batches=1),
            "enable_checkpointing": True,
        },
    )
    stage1.fit(ClassificationModule(net(), lr=1e-2), datamodule=dm)
    pruned_ckpt = tmp_path / "pruned.ckpt"
    assert pruned_ckpt.is_file()
    pruned = load_weights(net(), str(pruned_ckpt), "checkpoint")
    zeros = {n: p == 0 for n, p in pruned.named_parameters() if p.dim() > 1}
    assert sum(int(z.sum()) for z in zeros.values()) >= 0.89 * sum(z.numel() for z in zeros.values())

    quantize = qat(start_epoch=0, freeze_observers_epoch=1)
    stage2 = pl.Trainer(
        callbacks=[WarmStart(str(pruned_ckpt)), quantize],
        **quiet_trainer_kwargs(tmp_path / "s2", max_epochs=2, limit_train_batches=3, limit_val_batches=1),
    )
    stage2.fit(ClassificationModule(net(), lr=1e-2), datamodule=dm)
    int8 = quantize.quantized_model
    assert int8 is not None
    # the pruned zeros survived QAT and conversion: the int8 model has no more non-zeros than the pruned one
    assert count_nonzero(int8) <= count_nonzero(pruned)
    x = dm.to_model_input(next(iter(dm.val_dataloader()))[0], train=False)
    assert int8(x).shape == (x.shape[0], 10)


def _fit_recipe(tmp_path, callbacks):
    trainer = pl.Trainer(
        callbacks=callbacks, **quiet_trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=1)
    )
    trainer.fit(
        ClassificationModule(net()), datamodule=ImageClassificationDataModule("digits", batch_size=32)
    )


def test_qat_before_pruning_ends_is_refused(tmp_path):
    callbacks = [
        ProgressivePruning(final_sparsity=0.5, start=0, end=3, unit="epoch", verbose=False),
        qat(start_epoch=1),
        CompressionPipeline(distill=False),
    ]
    with pytest.raises(ValueError, match="quantization starts at epoch 1, before pruning ends at epoch 3"):
        _fit_recipe(tmp_path, callbacks)


def test_distillation_without_teacher_is_refused(tmp_path):
    callbacks = [
        ProgressivePruning(final_sparsity=0.5, start=0, end=2, unit="epoch", verbose=False),
        qat(start_after="pruning"),
        CompressionPipeline(distill=True),
    ]
    with pytest.raises(ValueError, match="no distillation callback with a teacher"):
        _fit_recipe(tmp_path, callbacks)


def test_distillation_during_the_ramp_is_refused(tmp_path):
    callbacks = [
        ProgressivePruning(final_sparsity=0.5, start=0, end=2, unit="epoch", verbose=False),
        KnowledgeDistillation(teacher=net(), start_epoch=1),
        qat(start_after="pruning"),
        CompressionPipeline(distill=True, distill_from="pruning"),
    ]
    with pytest.raises(ValueError, match="distillation starts at epoch 1, during pruning"):
        _fit_recipe(tmp_path, callbacks)


def test_missing_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no callback for \\['quantization'\\]"):
        _fit_recipe(
            tmp_path,
            [
                ProgressivePruning(final_sparsity=0.5, start=0, end=2, verbose=False),
                CompressionPipeline(distill=False),
            ],
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"order": ["quantization", "distill"]}, "order"),
        ({"order": ["pruning", "pruning"]}, "twice"),
        ({"distill_from": "qat"}, "distill_from"),
    ],
)
def test_bad_pipeline_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressionPipeline(**kwargs)


def test_digits_demo_prints_the_table(tmp_path, capsys):
    from lightning_optim.demo import run_digits_pipeline

    result = run_digits_pipeline(
        str(tmp_path),
        teacher_epochs=1,
        prune_epochs=1,
        finetune_epochs=1,
        qat_epochs=1,
        latency_threads=1,
        latency_batch_sizes=(1,),
    )
    out = capsys.readouterr().out
    assert "| Stage |" in out and "| fit start |" in out and "int8" in out
    assert result["rows"][-1]["precision"] == "int8" and result["rows"][-1]["compression_ratio"] > 1


@pytest.mark.parametrize(
    "recipe",
    [
        "compress_lenet300.yaml",
        "compress_lenet300_teacher.yaml",
        "compress_lenet5.yaml",
        "compress_lenet5_teacher.yaml",
        "staged/lenet300_1_prune.yaml",
        "staged/lenet300_2_quantize.yaml",
    ],
)
def test_recipes_parse(recipe, monkeypatch, capsys):
    from lightning_optim.cli import main
    from tests.conftest import REPO_ROOT

    monkeypatch.setattr("sys.argv", ["lightning-optim"])
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", f"examples/{recipe}", "--print_config"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    assert any(name in out for name in ("ProgressivePruning", "ModelCheckpoint", "QuantizationAwareTraining"))
