"""CompressionReport: rows at phase boundaries, the int8 row, files, skip message, validation."""

from __future__ import annotations

import copy
import json
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
    trainer.fit(_module(), datamodule=ImageClassificationDataModule("digits", batch_size=32))
    stages = [r["stage"] for r in report.rows]
    assert stages == ["fit start", "fake starts", "fake done", "fit end", "int8"], stages
    assert [r["epoch"] for r in report.rows] == [0, 1, 3, 4, 4]
    rows = {r["stage"]: r for r in report.rows}
    assert rows["fit start"]["phases"] == {"fake": "pending"} and rows["fake done"]["phases"] == {
        "fake": "done"
    }
    assert rows["fake starts"]["weight_sparsity"] == 0.0
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
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressionReport(**kwargs)
