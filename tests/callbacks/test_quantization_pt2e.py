"""The quantization callbacks on the PT2E stack (``backend="pt2e"``, and ``"auto"`` choosing it): residual nets the
eager stack refuses, the dry run at setup, deploy files with the preprocessing in the run's log folder, resume
mid-QAT, structured pruning then QAT. The eager stack's own tests are in test_quantization.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_optim.callbacks import PostTrainingQuantization, ProgressivePruning, QuantizationAwareTraining
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.quantization import Pt2eModule, QuantizationError, read_onnx_metadata
from lightning_optim.functional.quantization.pt2e import read_pt2_metadata
from lightning_optim.models import ConvNet3
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs
from tests.nets import Residual

QUIET = {"latency_batch_sizes": (), "verbose": False}


class ResidualDigits(nn.Module):
    """A conv-bn-relu stem, two residual blocks (conv-bn-relu-conv-bn + identity, relu), a flattened linear head:
    a residual CNN that learns the 1x8x8 digits in a few dozen steps."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width * 64, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(torch.flatten(x, 1))


def residual_cnn() -> nn.Module:
    return ResidualDigits()


def fit(root, callbacks, model, ckpt_path=None, **overrides):
    pl.seed_everything(0, workers=True)
    module = ClassificationModule(model, num_classes=10, optimizer="adam", lr=1e-2)
    dm = ImageClassificationDataModule("digits", batch_size=32)
    kwargs = quiet_trainer_kwargs(root, max_epochs=2, deterministic=True, limit_val_batches=2)
    kwargs.update(overrides)
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, dm


class StepCounter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args) -> None:
        self.steps += 1


# ----------------------------------------------------------------------------------------- choice of stack
def test_eager_refuses_a_residual_net_at_setup_and_auto_quantizes_it(tmp_path):
    counter = StepCounter()
    with pytest.raises(
        QuantizationError,
        match=r"(?s)dry run at setup .* failed with backend='eager'.*cannot run on int8 tensors",
    ):
        fit(
            tmp_path / "eager",
            [QuantizationAwareTraining(backend="eager", start_epoch=1, **QUIET), counter],
            Residual(),
        )
    assert counter.steps == 0  # refused before any epoch

    qat = QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=1, **QUIET)
    trainer, module, dm = fit(tmp_path / "auto", [qat], Residual(), limit_train_batches=6)
    assert qat.backend_name == "pt2e" and qat.backend_choice == "backend='auto' -> 'pt2e'"
    assert isinstance(module.model, Pt2eModule) and module.model.kind == "int8"
    assert qat.exported_path.suffix == ".pt2" and qat.exported_path.is_file()
    report = qat.quantization_report
    assert abs(report.int8_accuracy - report.fp32_accuracy) <= 0.05


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it, eager quantization runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if (
            float(h.detach().dequantize().mean()) > 1e6
        ):  # never true, but export must guard on it (eager: int8 h)
            h = h * 0
        return self.fc(torch.flatten(h, 1))


def test_auto_falls_back_to_eager_when_export_cannot_capture_the_model(tmp_path):
    ptq = PostTrainingQuantization(calibration_batches=2, **QUIET)
    fit(tmp_path, [ptq], DataDependent(), max_epochs=1, limit_train_batches=2)
    assert ptq.backend_name == "eager" and ptq.done
    assert ptq.backend_choice.startswith("backend='auto' -> 'eager' (after pt2e: ")
    assert ptq.exported_path.suffix == ".pt"  # the eager stack's own format


def test_export_formats_are_checked_against_the_stack():
    with pytest.raises(
        ValueError, match=r"Unknown `export_format` 'torchscript'; allowed: \['pt2', 'onnx'\]"
    ):
        QuantizationAwareTraining(backend="pt2e", export_format="torchscript")
    assert PostTrainingQuantization(export_format="artifact").backend_name == "eager"  # only eager writes it
    with pytest.raises(ValueError, match="no quantization stack writes all of"):
        PostTrainingQuantization(export_format=["pt2", "artifact"])
    with pytest.raises(
        ValueError, match=r"Unknown quantization `engine` 'arm'; allowed: \['x86', 'fbgemm'\]"
    ):
        PostTrainingQuantization(engine="arm")
    assert PostTrainingQuantization(engine="fbgemm").backend_name == "eager"  # PT2E converts for x86 only


# ----------------------------------------------------------------------------------------- deploy files
FRESH_PROCESS = r"""
import json, sys, zipfile
import torch
folder = sys.argv[1]
meta = json.loads(zipfile.ZipFile(folder + "/model_int8_ptq.pt2").read(
    [n for n in zipfile.ZipFile(folder + "/model_int8_ptq.pt2").namelist() if n.endswith("lightning_optim.json")][0]))
raw = torch.load(folder + "/raw.pt", weights_only=True)  # uint8 images as stored
view = (1, -1, 1, 1)
x = (raw.float() / meta["pixel_scale"] - torch.tensor(meta["mean"]).view(view)) / torch.tensor(meta["std"]).view(view)
model = torch.export.load(folder + "/model_int8_ptq.pt2").module()
import onnxruntime
session = onnxruntime.InferenceSession(folder + "/model_int8_ptq.onnx", providers=["CPUExecutionProvider"])
onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
torch.save({"pt2": model(x), "onnx": torch.from_numpy(onnx_out), "classes": meta["class_names"]}, folder + "/out.pt")
assert not any(m.startswith("lightning_optim") for m in sys.modules), "lightning_optim was imported"
"""


def assert_every_conv_has_int8_weights(path) -> None:
    """ONNX Runtime's quantizer wrote the file: every Conv/Gemm takes a dequantized int8 weight (QDQ), so ONNX
    Runtime runs each of them as an int8 kernel."""
    import onnx

    graph = onnx.load(str(path)).graph
    assert read_onnx_metadata(path)["format"] == "qdq (onnxruntime quantize_static)"
    producers = {out: node for node in graph.node for out in node.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert layers
    for node in layers:
        for name in node.input[:2]:
            assert producers[name].op_type == "DequantizeLinear", (node.name, name)


def test_deploy_files_carry_the_preprocessing_run_alone_and_never_overwrite(tmp_path):
    pytest.importorskip("onnxruntime")
    ptq = PostTrainingQuantization(calibration_batches=2, export_format=["pt2", "onnx"], **QUIET)
    _, module, dm = fit(tmp_path, [ptq], ConvNet3(image_size=8), max_epochs=1, limit_train_batches=4)
    folder = tmp_path / "quantization"
    assert ptq.exported_paths == {
        "pt2": folder / "model_int8_ptq.pt2",
        "onnx": folder / "model_int8_ptq.onnx",
    }
    expected_meta = dm.deploy_metadata()
    assert expected_meta["pixel_scale"] == 255.0 and expected_meta["class_names"] == [
        str(i) for i in range(10)
    ]
    stats = dm.norm_stats
    assert torch.allclose(torch.tensor(expected_meta["mean"]), stats["mean"] / 255, atol=1e-6)
    assert torch.allclose(torch.tensor(expected_meta["std"]), stats["std"] / 255, atol=1e-6)
    for info in (
        read_pt2_metadata(ptq.exported_paths["pt2"]),
        read_onnx_metadata(ptq.exported_paths["onnx"]),
    ):
        assert {k: info[k] for k in expected_meta} == expected_meta
    assert_every_conv_has_int8_weights(ptq.exported_paths["onnx"])

    raw = dm.test_split.images[:7]
    torch.save(raw, folder / "raw.pt")
    with torch.no_grad():
        expected = ptq.quantized_model(dm.to_model_input(raw))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(folder / "out.pt", weights_only=True)
    assert torch.allclose(out["pt2"], expected, atol=1e-4)
    assert (out["onnx"].argmax(1) == expected.argmax(1)).float().mean() >= 6 / 7
    assert out["classes"] == [str(i) for i in range(10)]

    # a second run into the same folder keeps the first files
    first = {k: p.read_bytes() for k, p in ptq.exported_paths.items()}
    again = PostTrainingQuantization(calibration_batches=2, export_format=["pt2", "onnx"], **QUIET)
    fit(tmp_path, [again], ConvNet3(image_size=8), max_epochs=1, limit_train_batches=4)
    assert again.exported_paths == {
        "pt2": folder / "model_int8_ptq-v1.pt2",
        "onnx": folder / "model_int8_ptq-v1.onnx",
    }
    assert all(ptq.exported_paths[k].read_bytes() == first[k] for k in first)


def test_exports_go_to_the_loggers_versioned_folder(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    qat = QuantizationAwareTraining(start_epoch=1, **QUIET)
    trainer, _, _ = fit(
        tmp_path, [qat], ConvNet3(image_size=8), limit_train_batches=3, logger=CSVLogger(tmp_path, name="run")
    )
    assert qat.exported_path == Path(trainer.log_dir) / "quantization" / "model_int8.pt2"
    assert Path(trainer.log_dir).name == "version_0" and qat.exported_path.is_file()


# ----------------------------------------------------------------------------------------- resume
def test_resume_mid_qat_rebuilds_the_pt2e_capture_and_continues_exactly(tmp_path):
    def run(root, ckpt_path=None, checkpoint=None):
        qat = QuantizationAwareTraining(start_epoch=1, freeze_observers_epoch=2, **QUIET)
        extra = [checkpoint] if checkpoint is not None else []
        _, module, _ = fit(
            root,
            [qat, *extra],
            residual_cnn(),
            ckpt_path=ckpt_path,
            max_epochs=3,
            limit_train_batches=4,
            enable_checkpointing=True,
        )
        return qat, module

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full, full_module = run(tmp_path / "a", checkpoint=ckpt)
    mid = tmp_path / "ckpt" / "epoch=1.ckpt"  # taken during QAT: the checkpoint holds the PT2E-prepared model
    state = torch.load(mid, weights_only=True)
    assert any(".pt2e_graph.activation_post_process_" in k for k in state["state_dict"])
    resumed, resumed_module = run(tmp_path / "b", ckpt_path=str(mid))
    assert resumed.backend_name == "pt2e" and resumed.converted
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(full.quantized_model(x), resumed.quantized_model(x))


# ----------------------------------------------------------------------------------------- after pruning
def test_structured_pruning_then_pt2e_qat_on_a_residual_net(tmp_path):
    pruning = ProgressivePruning(
        final_sparsity=0.5, start=0, end=1, granularity="channel_groups", verbose=False
    )
    qat = QuantizationAwareTraining(
        backend="pt2e", start_after="pruning", export_format=["pt2", "onnx"], **QUIET
    )
    _, module, _ = fit(tmp_path, [pruning, qat], residual_cnn(), max_epochs=4, limit_train_batches=6)
    # the ONNX file of QAT: the PT2E int8 graph itself (the trained ranges; checked in ONNX Runtime at export),
    # its residual adds calibrated on training batches so that ONNX Runtime runs them int8
    assert read_onnx_metadata(qat.exported_paths["onnx"])["format"].startswith("qdq (PT2E int8 graph; ")
    assert pruning.compacted and qat.converted and qat.backend_name == "pt2e"
    widths = [m.out_channels for m in qat._float_reference.modules() if isinstance(m, nn.Conv2d)]
    full = [m.out_channels for m in residual_cnn().modules() if isinstance(m, nn.Conv2d)]
    assert sum(widths) < 0.75 * sum(full), (widths, full)
    with torch.no_grad():
        assert torch.isfinite(module.model(torch.randn(3, 1, 8, 8))).all()
    report = qat.quantization_report
    assert abs(report.int8_accuracy - report.fp32_accuracy) <= 0.05


def test_bf16_mixed_runs_pt2e_fake_quantization_in_float32(tmp_path):
    """Under bf16-mixed the prepared network (fake quantization and the float ops around it) runs in float32
    (its forward is bit-equal with and without autocast, tests/functional/quantization/test_pt2e.py); the fit
    learns as a 32-bit one does (8 steps from scratch: the accuracies differ by up to ~0.1)."""
    results = {}
    for precision in ("bf16-mixed", "32-true"):
        qat = QuantizationAwareTraining(backend="pt2e", start_epoch=0, freeze_observers_epoch=1, **QUIET)
        _, module, _ = fit(
            tmp_path / precision, [qat], residual_cnn(), precision=precision, limit_train_batches=4
        )
        assert qat.converted and isinstance(module.model, Pt2eModule)
        results[precision] = qat.quantization_report.int8_accuracy
    assert results["bf16-mixed"] >= 0.5 and abs(results["bf16-mixed"] - results["32-true"]) <= 0.15, results
    assert json.dumps(read_pt2_metadata(qat.exported_path)["input_shape"]) == "[1, 8, 8]"


def test_the_default_path_prints_no_quantization_deprecation(tmp_path):
    """backend='auto' on a model PT2E quantizes: none of torch's eager-quantization/TorchScript deprecation
    notices, nor ours about the eager stack (that one is said once when eager is used)."""
    import re
    import warnings

    from lightning_optim.functional.quantization._quiet import QUANTIZATION_DEPRECATION_MESSAGES
    from lightning_optim.functional.quantization.eager import EAGER_DEPRECATION

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = QuantizationAwareTraining(start_epoch=1, **QUIET)
        fit(tmp_path, [qat], ConvNet3(image_size=8), limit_train_batches=3)
    assert qat.backend_name == "pt2e" and qat.converted
    texts = [str(w.message) for w in caught]
    bad = [
        t
        for t in texts
        if t == EAGER_DEPRECATION or any(re.match(m, t) for m in QUANTIZATION_DEPRECATION_MESSAGES)
    ]
    assert not bad, bad
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        QuantizationAwareTraining(backend="eager", **QUIET)
    assert any(str(w.message) == EAGER_DEPRECATION and w.category is FutureWarning for w in caught)


def test_rank0_ranges_load_on_the_other_ranks_with_the_observers_versions(monkeypatch):
    """Under DDP and FSDP2 every rank loads rank 0's calibrated state (identical int8 models). The observers'
    versions must travel with it: loaded as a plain dict, torchao's observers take it as version 1 and reset their
    ``eps`` (2**-12 in the x86 configuration) to float32's, so the ranks clamped a pruned channel's range
    differently (found with MobileNetV3 under FSDP2: the int8 weights differed between the ranks)."""
    import pickle

    from lightning_optim.callbacks import quantization as callbacks_quantization
    from lightning_optim.functional.quantization.pt2e import Pt2eBackend

    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)  # the digits' shape
    backend = Pt2eBackend(example_input=x)
    observed, _ = backend.prepare_ptq(residual_cnn().eval())
    backend.calibrate(observed, [x])
    eps = {k: v.clone() for k, v in observed.state_dict().items() if k.endswith(".eps")}
    assert eps and all(float(v) == 2**-12 for v in eps.values()), eps
    # rank 0's state as another rank receives it (pickled through the process group), loaded over its own
    monkeypatch.setattr(
        callbacks_quantization, "broadcast_from_rank0", lambda trainer, obj: pickle.loads(pickle.dumps(obj))
    )
    PostTrainingQuantization()._broadcast_state(None, observed)
    for key, value in observed.state_dict().items():
        if key.endswith(".eps"):
            assert torch.equal(value, eps[key]), f"{key} became {float(value)} on loading"
