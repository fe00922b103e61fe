"""CompressionReport: rows at phase boundaries, the int8 row, files, skip message, validation."""

from __future__ import annotations

import copy
import json
import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim.callbacks.compression_report import NO_TEST_LOADER, CompressionReport
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs

FAST = dict(latency_batch_sizes=(1, 4), latency_repeats=1, latency_warmup=0, verbose=False)


class FakePhase(Callback):
    """Pending in epoch 0, active in epochs 1-2 (zeroes half of fc1 at epoch 2), done from epoch 3."""

    phase_name = "fake"

    def phase_state(self, trainer):
        epoch = trainer.current_epoch + (1 if trainer.training and _epoch_ended(trainer) else 0)
        return "pending" if epoch < 1 else "active" if epoch < 3 else "done"

    def on_train_epoch_start(self, trainer, pl_module):
        trainer._fake_epoch_ended = False
        if trainer.current_epoch == 2:
            with torch.no_grad():
                pl_module.model.fc1.weight[:, ::2] = 0

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.current_epoch >= 2:
            with torch.no_grad():
                pl_module.model.fc1.weight[:, ::2] = 0

    def on_train_epoch_end(self, trainer, pl_module):
        trainer._fake_epoch_ended = True


def _epoch_ended(trainer) -> bool:
    return getattr(trainer, "_fake_epoch_ended", False)


class FakeQuantizer(Callback):
    """Converts the network to int8 at train end and offers it as ``compressed_model`` (phases.OffersModel)."""

    def __init__(self):
        self.compressed_model = None

    def on_train_end(self, trainer, pl_module):
        import torch.ao.quantization as tq

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = tq.QuantWrapper(copy.deepcopy(pl_module.model).cpu()).eval()
            q.qconfig = tq.get_default_qconfig("x86")
            tq.prepare(q, inplace=True)
            q(torch.randn(64, 1, 8, 8))
            self.compressed_model = tq.convert(q)


def _module():
    torch.manual_seed(0)
    return ClassificationModule(LeNet300100(in_features=64, hidden=(64, 32)), lr=1e-2)


def test_rows_at_phase_boundaries_int8_row_and_files(tmp_path):
    report = CompressionReport(dirpath=str(tmp_path / "report"), **FAST)
    trainer = pl.Trainer(
        callbacks=[FakePhase(), FakeQuantizer(), report],
        **quiet_trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=4, limit_val_batches=2),
    )
    # the eager int8 model cannot be exported: its artifact holds the state dict, and the user is told why
    with pytest.warns(UserWarning, match="needs the model's code"):
        trainer.fit(_module(), datamodule=ImageClassificationDataModule("digits", batch_size=32))
    stages = [r["stage"] for r in report.rows]
    assert stages == ["fit start", "after the first epoch of fake", "fake done", "fit end", "int8"], stages
    assert [r["epoch"] for r in report.rows] == [0, 1, 3, 4, 4]
    rows = {r["stage"]: r for r in report.rows}
    assert rows["fit start"]["phases"] == {"fake": "pending"} and rows["fake done"]["phases"] == {
        "fake": "done"
    }
    assert rows["after the first epoch of fake"]["weight_sparsity"] == 0.0
    assert rows["fake done"]["weight_sparsity"] == pytest.approx(
        0.5 * 64 * 64 / (64 * 64 + 64 * 32 + 32 * 10)
    )
    assert rows["int8"]["precision"] == "int8" and rows["fit end"]["precision"] == "fp32"
    assert (
        rows["int8"]["artifact_bytes"]
        < rows["fit end"]["artifact_bytes"]
        < rows["fit start"]["artifact_bytes"]
    )
    assert rows["int8"]["compression_ratio"] > 4
    assert all(r["test_samples"] == 359 for r in report.rows)  # the digits test split, every row
    assert rows["fit end"]["test_acc"] > 0.5
    assert len(report.history) == 4 and report.history[-1]["lr"] == pytest.approx(1e-2)
    assert [h["phases"]["fake"] for h in report.history] == ["active", "active", "done", "done"]
    for kind in ("markdown", "json", "png", "artifact"):
        assert (tmp_path / "report").joinpath(report.paths[kind]).is_file(), kind
    table = open(report.paths["markdown"]).read()
    assert "| fake done |" in table and "| int8 |" in table
    assert [r["artifact_format"] for r in report.rows] == ["exported_program"] * 4 + ["state_dict"]
    assert report.artifact_written == "state_dict" and "torch.export could not capture QuantWrapper" in table
    assert "| fit start | 0 | fp32 (dense) |" in table and "| int8 | 4 | int8 (" in table
    assert json.load(open(report.paths["json"]))["rows"][-1]["stage"] == "int8"
    from lightning_optim.functional.artifact import load_artifact

    assert set(load_artifact(report.paths["artifact"])) == set(report_quantized_keys(trainer))


def report_quantized_keys(trainer):
    return next(cb.compressed_model for cb in trainer.callbacks if isinstance(cb, FakeQuantizer)).state_dict()


def test_skip_message_without_test_loader(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))
    report = CompressionReport(dirpath=str(tmp_path), plot=False, **FAST)
    trainer = pl.Trainer(callbacks=[report], **quiet_trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.warns(UserWarning, match="no test data"):
        trainer.fit(_module(), train_dataloaders=DataLoader(data, batch_size=16))
    assert [r["stage"] for r in report.rows] == ["fit start", "fit end"]
    assert all("test_acc" not in r for r in report.rows)
    assert report.rows[0]["parameters"] > 0 and report.rows[0]["flops"] > 0
    assert NO_TEST_LOADER in open(report.paths["markdown"]).read()


def test_resume_keeps_fit_start_row(tmp_path):
    report = CompressionReport(dirpath=str(tmp_path), plot=False, save_artifact=False, **FAST)
    report.load_state_dict(
        {"rows": [{"stage": "fit start", "parameters": 1, "state_dict_bytes": 100}], "history": []}
    )
    trainer = pl.Trainer(
        callbacks=[report], **quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2)
    )
    trainer.fit(_module(), datamodule=ImageClassificationDataModule("digits", batch_size=32))
    assert [r["stage"] for r in report.rows] == ["fit start", "fit end"] and report.rows[0]["parameters"] == 1
    assert report.rows[1]["baseline_bytes"] == 100


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latency_batch_sizes": ()}, "latency_batch_sizes"),
        ({"latency_batch_sizes": (1, 0)}, "latency_batch_sizes"),
        ({"latency_repeats": 0}, "latency_repeats"),
        ({"latency_warmup": -1}, "latency_warmup"),
        ({"latency_threads": 0}, "latency_threads"),
        ({"limit_test_batches": 0}, "limit_test_batches"),
        ({"filename": ""}, "filename"),
        ({"input_shape": (1, 0)}, "input_shape"),
        (
            {"artifact_format": "onnx"},
            r"Unknown `artifact_format` 'onnx'; allowed: \['exported_program', 'state_dict', 'torchscript'\]",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressionReport(**kwargs)


def test_artifact_torchscript_is_a_deprecated_alias_of_artifact_format():
    assert CompressionReport().artifact_format == "exported_program"
    with pytest.warns(FutureWarning, match="artifact_format='torchscript'"):
        assert CompressionReport(artifact_torchscript=True).artifact_format == "torchscript"
    with pytest.warns(FutureWarning, match="artifact_format='state_dict'"):
        assert CompressionReport(artifact_torchscript=False).artifact_format == "state_dict"
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="contradicts"):
        CompressionReport(artifact_format="state_dict", artifact_torchscript=True)


def test_fit_end_shows_progress_prints_paths_and_saves_a_runnable_program(
    tmp_path, monkeypatch, caplog, capfd
):
    """What a user sees at fit end: a progress bar (one step per model measured, the files, the artifact), the
    files one per line relative to the current directory, and a .lopt that torch alone runs."""
    from lightning_optim.callbacks import compression_report as module
    from lightning_optim.functional.artifact import load_artifact

    bars = []
    real = module.work_progress

    def recording(trainer, iterable=None, *, desc, total=None):
        bar = real(trainer, iterable, desc=desc, total=total)
        bars.append((bar, bar.disable))  # tqdm sets ``disable`` when it closes
        return bar

    monkeypatch.setattr(module, "work_progress", recording)
    monkeypatch.chdir(tmp_path)
    report = CompressionReport(dirpath="report", **{**FAST, "verbose": True})
    trainer = pl.Trainer(
        callbacks=[report],
        **quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2, enable_progress_bar=True),
    )
    module_ = _module()
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a float network exports: no fallback warning
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module_, datamodule=ImageClassificationDataModule("digits", batch_size=32))
    # the bars: fit start (one measurement), fit end (one measurement, the artifact, the files), all completed
    assert [(b.desc, b.total, b.n) for b, _ in bars] == [
        ("Compression report (fit start)", 1, 1),
        ("Compression report (fit end)", 3, 3),
    ]
    assert not any(disabled for _, disabled in bars)  # shown: the Trainer shows its progress bar
    assert "Compression report (fit end)" in capfd.readouterr().err
    # the printed files: one per line, relative to the current directory, every one exists
    printed = "\n".join(r.getMessage() for r in caplog.records)
    assert "Report written to {" not in printed
    lines = [line.strip() for line in printed.splitlines()]
    first = next(line for line in lines if line.startswith("Compression report: "))
    assert first == f"Compression report: {os.path.join('report', 'compression_report.md')}"
    files = {
        line.split(": ", 1)[0]: line.split(": ", 1)[1]
        for line in lines
        if line.split(": ", 1)[0] in ("data", "plot", "artifact")
    }
    assert set(files) == {"data", "plot", "artifact"}
    assert files["artifact"].startswith(
        os.path.join("report", "compression_report.lopt") + " (exported program"
    )
    for path in (first.split(": ", 1)[1], files["data"], files["plot"], files["artifact"].split(" (")[0]):
        assert not os.path.isabs(path) and (tmp_path / path).is_file(), path
    # the artifact: the exported program, runnable without the model's code
    assert report.artifact_written == "exported_program"
    assert all(r["artifact_format"] == "exported_program" for r in report.rows)
    loaded = load_artifact(tmp_path / "report" / "compression_report.lopt")
    x = torch.randn(5, 1, 8, 8)
    network = module_.model.cpu().eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), network(x))


def test_the_report_gives_the_weight_sharing_artifact_and_its_bytes_per_layer(tmp_path):
    from lightning_optim.callbacks import WeightSharing

    pl.seed_everything(0)
    sharing = WeightSharing(bits=3, start_epoch=1, verbose=False)
    report = CompressionReport(dirpath=str(tmp_path / "report"), latency_repeats=1, plot=False, verbose=False)
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(32, 16)), lr=1e-2)
    trainer = pl.Trainer(
        callbacks=[sharing, report],
        **quiet_trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1),
    )
    trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=16))
    text = (tmp_path / "report" / "compression_report.md").read_text()
    line = next(line for line in text.splitlines() if "Weight-sharing artifact" in line)
    assert f"{sharing.size_breakdown.total:,} bytes" in line and sharing.exported_path.name in line
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        entry = next(e for e in sharing.size_breakdown.entries if e.name == name)
        assert f"{name} {entry.total:,} B" in line


def test_the_report_gives_the_weight_sharing_size_accuracy_curve_in_one_line(tmp_path):
    from lightning_optim.callbacks import WeightSharing

    pl.seed_everything(0)
    sharing = WeightSharing(bits=3, start_epoch=1, curve_budgets=[500, 4000], verbose=False)
    report = CompressionReport(dirpath=str(tmp_path / "report"), latency_repeats=1, plot=False, verbose=False)
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(32, 16)), lr=1e-2)
    trainer = pl.Trainer(
        callbacks=[sharing, report],
        **quiet_trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1),
    )
    trainer.fit(module, datamodule=ImageClassificationDataModule("digits", batch_size=16))
    text = (tmp_path / "report" / "compression_report.md").read_text()
    lines = [line for line in text.splitlines() if "Size-accuracy curve" in line]
    assert len(lines) == 1
    refused, met = sharing.curve
    assert refused["bytes"] is None and met["bytes"] is not None
    assert "500 B: below the smallest size" in lines[0]
    assert f"4,000 B: {100 * met['metric']:.1f}% ({met['bytes']:,} B)" in lines[0]


def test_an_eager_int8_model_is_verified_under_a_deterministic_trainer(tmp_path):
    """Trainer(deterministic=True) turns torch's deterministic check on for the process, and eager int8 CPU
    kernels have no deterministic implementation: verifying the int8 artifact at fit end raised; now the check
    is off only while the artifact is verified, and on again after."""
    from lightning_optim.callbacks import PostTrainingQuantization

    pl.seed_everything(0)
    dm = ImageClassificationDataModule("digits", batch_size=32)
    module = ClassificationModule(LeNet300100(in_features=64, hidden=(32, 16)))
    ptq = PostTrainingQuantization(backend="eager", report=False, export=False, verbose=False)
    report = CompressionReport(
        artifact_format="torchscript",
        plot=False,
        verbose=False,
        latency_batch_sizes=(1,),
        latency_repeats=1,
        dirpath=str(tmp_path / "report"),
    )
    kwargs = quiet_trainer_kwargs(
        tmp_path, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1, deterministic=True
    )
    pl.Trainer(callbacks=[ptq, report], **kwargs).fit(module, datamodule=dm)
    assert report.rows[-1]["precision"] == "int8" and report.artifact_written == "torchscript"
    assert torch.are_deterministic_algorithms_enabled()
