"""The PT2E backend (functional/quantization/pt2e.py): torch.export + torchao PT2E on unmodified models, QAT,
lowering with torch.compile, the ``.pt2`` deploy file."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_optim.functional.quantization import (
    BACKENDS,
    Pt2eBackend,
    Pt2eModule,
    QuantizationError,
    check_engine,
    create_backend,
    lower,
    quantized_op_counts,
)
from lightning_optim.functional.quantization.pt2e import (
    INTEGRITY_FILE,
    METADATA_FILE,
    float_layers,
    read_pt2_metadata,
)
from lightning_optim.models import ConvNet3
from tests.conftest import once
from tests.nets import ConcatCNN, NoLayers, ResidualCNN, SEDepthwiseCNN, TinyViT, TokenMLPBlock

torchvision = pytest.importorskip("torchvision")


def settle(model: nn.Module, shape: tuple[int, ...], steps: int = 4) -> nn.Module:
    """Batch-norm statistics from a few random batches, as a trained model has (freshly initialised
    statistics make deep nets such as mobilenet_v2 output ~1e-10, which no 8-bit grid can follow)."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, *shape[1:]))
    return model.eval()


def ptq(model: nn.Module, shape: tuple[int, ...], batches: int = 4, **kwargs):
    """``(backend, observed, int8)``: PT2E PTQ of ``model`` calibrated on random batches of ``shape``."""
    backend = Pt2eBackend(example_input=torch.randn(shape), **kwargs)
    observed, _ = backend.prepare_ptq(model)
    assert backend.calibrate(observed, [torch.randn(shape) for _ in range(batches)]) == batches
    return backend, observed, backend.convert(observed)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


# ----------------------------------------------------------------------------------------- registry
def test_registered_as_pt2e_with_the_x86_engine():
    assert "pt2e" in BACKENDS
    backend = create_backend("pt2e", engine="x86")
    assert isinstance(backend, Pt2eBackend)
    assert (backend.name, backend.engine, backend.file_format, backend.prepared_marker) == (
        "pt2e",
        "x86",
        "pt2",
        "pt2e_graph",
    )
    assert backend.qat_in_place is False
    with pytest.raises(ValueError, match=r"Unknown quantization `engine` 'fbgemm'; allowed: \['x86'\]\."):
        check_engine("fbgemm", "pt2e")
    with pytest.raises(ValueError, match=r"Unknown PT2E `strict` 'yes'; allowed: \[None, True, False\]\."):
        Pt2eBackend(strict="yes")


def test_needs_an_example_input():
    backend = create_backend("pt2e")
    with pytest.raises(QuantizationError, match=r"needs an example input: Pt2eBackend\(example_input=x\)"):
        backend.prepare_ptq(ResidualCNN())
    with pytest.raises(TypeError, match=r"`example_input` must be a tensor"):
        backend.set_example_input([1, 2])


def test_no_quantizable_layer_is_refused():
    with pytest.raises(QuantizationError, match="no quantizable layer"):
        Pt2eBackend(example_input=torch.randn(2, 1, 8, 8)).prepare_ptq(NoLayers())


# ----------------------------------------------------------------------------------------- PTQ coverage
def _resnet18():
    return torchvision.models.resnet18(weights=None, num_classes=10)


def _mobilenet_v2():
    return torchvision.models.mobilenet_v2(weights=None, num_classes=10)


def _convnet3():
    return ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)


#: name -> (model factory, input shape, min argmax agreement, max relative L2 error) on random inputs;
#: the deep random-init torchvision nets have logits a few percent apart, hence their lower agreement bound
MODELS = {
    "residual_add": (ResidualCNN, (8, 3, 16, 16), 0.9, 0.05),
    "concat": (ConcatCNN, (8, 3, 16, 16), 0.9, 0.05),
    "se_depthwise": (SEDepthwiseCNN, (8, 3, 16, 16), 0.9, 0.05),
    "vit_split_attention": (lambda: TinyViT(kind="split"), (8, 6, 8), 0.9, 0.1),
    "token_mlp": (TokenMLPBlock, (8, 6, 16), None, 0.05),
    "convnet3": (_convnet3, (8, 1, 8, 8), 0.9, 0.05),
    "resnet18_32px": (_resnet18, (4, 3, 32, 32), 0.85, 0.1),
    "mobilenet_v2_32px": (_mobilenet_v2, (4, 3, 32, 32), 0.85, 0.1),
}


def settled_ptq(name: str):
    """``(float model, backend, observed, int8)``: ``MODELS[name]`` settled and PT2E-quantized (:func:`ptq`, 4
    calibration batches) from seed 0, then the random generator left where that leaves it.

    resnet18's is made once per test process (``tests.conftest.once``) and only read by the three tests of its
    capture, its int8 model and its ``.pt2`` file (its strict capture is the expensive part). The generator is
    put back at the state after the quantization each time, so a test draws the same inputs after it whether it
    made the model or not."""

    def make():
        factory, shape, *_ = MODELS[name]
        torch.manual_seed(0)
        model = settle(factory(), shape)
        return (model, *ptq(model, shape)), torch.get_rng_state()

    made, rng = once(f"test_pt2e.settled_ptq:{name}", make) if name == "resnet18_32px" else make()
    torch.set_rng_state(rng)
    return made


@pytest.mark.parametrize("name", list(MODELS))
def test_ptq_quantizes_unmodified_models(name):
    _, shape, min_agree, max_error = MODELS[name]
    model, backend, observed, quantized = settled_ptq(name)
    assert isinstance(quantized, Pt2eModule) and quantized.kind == "int8" and not quantized.training
    assert quantized.capture.dynamic_batch, quantized.capture.summary()
    # the converted graph really holds int8: quantize/dequantize nodes and int8 per-channel weights
    counts = quantized_op_counts(quantized)
    assert counts.get("quantize_per_tensor", 0) > 0 and counts.get("dequantize_per_channel", 0) > 0, counts
    assert float_layers(quantized.graph_module) == []  # every conv/linear has an int8 weight
    assert any(b.dtype == torch.int8 for b in quantized.buffers())
    assert not any(p.requires_grad for p in quantized.parameters())
    x = torch.randn(64, *shape[1:])
    with torch.no_grad():
        expected, got = model(x), quantized(x)
        assert quantized(x[:1]).shape == expected[:1].shape  # dynamic batch: 1 and 64
    assert relative_error(got, expected) < max_error
    if min_agree is not None:
        assert agreement(got, expected) >= min_agree
    assert torch.equal(model(x), expected)  # the float model is left alone


def test_resnet18_needs_the_strict_capture_and_says_so():
    *_, quantized = settled_ptq("resnet18_32px")
    capture = quantized.capture
    assert capture.strict
    assert "non-strict capture: ValueError: Input partition has more than one output node" in capture.note
    assert "torch.export (strict), dynamic batch" in capture.summary()


class FixedBatch(nn.Module):
    """Reshapes with a literal batch size: export cannot make the batch dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(4, -1))


def test_static_batch_when_export_cannot_make_it_dynamic():
    torch.manual_seed(0)
    model = FixedBatch().eval()
    _, _, quantized = ptq(model, (4, 3, 8, 8))
    capture = quantized.capture
    assert not capture.dynamic_batch and capture.batch_size == 4
    assert "the batch dimension cannot be dynamic" in capture.note
    assert "captured with a static batch of 4" in capture.note
    assert "static batch 4" in capture.summary()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert relative_error(quantized(x), model(x)) < 0.05


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # a Python branch on a tensor value: no graph can hold it
            return self.fc(x)
        return -self.fc(x)


def test_a_model_export_cannot_capture_is_refused_with_the_way_out():
    with pytest.raises(QuantizationError) as info:
        Pt2eBackend(example_input=torch.randn(4, 4)).prepare_ptq(DataDependent())
    message = str(info.value)
    assert "The PT2E backend cannot capture DataDependent" in message
    assert "torch.export (non-strict)" in message and "torch.export (strict)" in message
    assert "`exclude=[...]`" in message and "backend='eager'" in message


def test_exclude_keeps_a_module_in_float():
    torch.manual_seed(0)
    model = settle(ResidualCNN(), (8, 3, 16, 16))
    _, _, quantized = ptq(model, (8, 3, 16, 16), exclude=["head"])
    assert float_layers(quantized.graph_module) == ["head"]
    assert "kept in float: head" in quantized.capture.summary()
    with pytest.raises(ValueError, match=r"Unknown PT2E `exclude` 'nope'; allowed: \["):
        Pt2eBackend(example_input=torch.randn(2, 3, 16, 16), exclude=["nope"]).prepare_ptq(model)


def test_example_of_batch_one_still_captures_a_dynamic_batch():
    torch.manual_seed(0)
    model = settle(ResidualCNN(), (8, 3, 16, 16))
    _, _, quantized = ptq(model, (1, 3, 16, 16))
    assert quantized.capture.dynamic_batch
    with torch.no_grad():
        assert quantized(torch.randn(5, 3, 16, 16)).shape == (5, 5)


def test_convert_refuses_an_unprepared_or_unobserved_model():
    with pytest.raises(QuantizationError, match=r"convert\(\) needs a model prepared by Pt2eBackend"):
        create_backend("pt2e").convert(ResidualCNN())
    backend = Pt2eBackend(example_input=torch.randn(2, 3, 16, 16))
    observed, _ = backend.prepare_ptq(ResidualCNN())
    with pytest.raises(
        QuantizationError, match=r"quantization range\(s\) were never observed .* before convert\(\)"
    ):
        backend.convert(observed)


# ----------------------------------------------------------------------------------------- QAT
def test_qat_prepares_a_new_module_that_trains_the_models_parameters():
    torch.manual_seed(0)
    model = ResidualCNN()
    x = torch.randn(8, 3, 16, 16)
    backend = Pt2eBackend(example_input=x)
    with pytest.raises(
        NotImplementedError, match=r"cannot prepare a model for QAT in place.*prepare_qat_module"
    ):
        backend.prepare_qat(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # built on the float model, before preparing
    prepared = backend.prepare_qat_module(model)
    assert isinstance(prepared, Pt2eModule) and prepared.kind == "qat" and prepared.training
    assert backend.is_prepared(prepared) and not backend.is_prepared(model)
    assert {id(p) for p in prepared.parameters()} == {id(p) for p in model.parameters()}
    assert any(k.startswith("pt2e_graph.activation_post_process_") for k in prepared.state_dict())
    grid = backend.quantization_state(prepared)
    assert any(k.endswith(".scale") for k in grid) and any(k.endswith(".zero_point") for k in grid)

    before = model.stem[0].weight.detach().clone()
    for _ in range(3):
        loss = prepared(torch.randn(8, 3, 16, 16)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(before, model.stem[0].weight)  # the optimizer of the float model trains it
    assert backend.observers_enabled(prepared)

    # eval(): batch norms use their running statistics and do not update them (the observers still move,
    # as in eager QAT: the callback switches them off on validation batches)
    running = model.stem[1].running_mean.clone()
    prepared.eval()
    with torch.no_grad():
        prepared(x)
    assert torch.equal(running, model.stem[1].running_mean)
    prepared.train()
    with torch.no_grad():
        prepared(x)
    assert not torch.equal(running, model.stem[1].running_mean)

    # frozen observers: the grid stops moving; frozen batch norms stay frozen through train()/eval()
    backend.freeze_observers(prepared)
    assert not backend.observers_enabled(prepared)
    backend.freeze_bn_stats(prepared)
    grid = {k: v.clone() for k, v in backend.quantization_state(prepared).items()}
    running = model.stem[1].running_mean.clone()
    prepared.eval()
    prepared.train()
    with torch.no_grad():
        prepared(torch.randn(8, 3, 16, 16) * 3)
        first, second = prepared(x), prepared(x)
    assert torch.equal(first, second)
    assert torch.equal(running, model.stem[1].running_mean)
    for key, value in backend.quantization_state(prepared).items():
        assert torch.equal(grid[key], value), key

    # fake quantization off: the float computation of the same weights
    prepared.eval()
    model.eval()
    backend.set_fake_quant(prepared, False)
    with torch.no_grad():
        assert relative_error(prepared(x), model(x)) < 1e-4
    backend.set_fake_quant(prepared, True)
    with torch.no_grad():
        fake = prepared(x)

    quantized = backend.convert(prepared)
    assert prepared.kind == "qat" and backend.is_prepared(prepared)  # left as it was
    assert quantized_op_counts(quantized).get("dequantize_per_channel", 0) == 6
    with torch.no_grad():
        assert relative_error(quantized(x), fake) < 0.02
    backend.check_int8_forward(prepared, x)


def test_prepared_and_int8_models_pickle_and_convert_after_unpickling():
    torch.manual_seed(0)
    model = ResidualCNN()
    x = torch.randn(8, 3, 16, 16)
    backend = Pt2eBackend(example_input=x)
    prepared = backend.prepare_qat_module(model)
    with torch.no_grad():
        prepared(x)
    backend.freeze_bn_stats(prepared)
    copy = pickle.loads(pickle.dumps(prepared))
    assert copy.training and copy.bn_frozen
    prepared.eval()
    copy.eval()
    with torch.no_grad():
        assert torch.equal(copy(x), prepared(x))
    quantized = backend.convert(prepared)
    again = backend.convert(copy)
    with torch.no_grad():
        assert torch.equal(again(x), quantized(x))
        assert torch.equal(pickle.loads(pickle.dumps(quantized))(x), quantized(x))


# ----------------------------------------------------------------------------------------- lowering
def test_lower_compiles_int8_kernels_with_a_static_fallback():
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = settle(_convnet3(), (8, 1, 8, 8))
    _, _, quantized = ptq(model, (8, 1, 8, 8), batches=2)
    x = torch.randn(8, 1, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lowered, codes = run_and_get_code(lambda: lower(quantized, x))
    assert any("onednn.qconv_pointwise" in code for code in codes)  # oneDNN int8 convolution kernels
    assert any("onednn.qlinear_pointwise" in code for code in codes)
    if not lowered.dynamic:  # torch 2.14: the dynamic-batch compile of this model fails above batch 1
        messages = [str(w.message) for w in caught]
        assert any("compiled per input shape instead" in m for m in messages), messages
        # failed now, or (remembered) before in this process for a graph of the same ops
        assert "torch.compile(dynamic=True) of " in lowered.note and " failed " in lowered.note
    for batch in (8, 3, 1):
        xb = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(lowered(xb), quantized(xb), atol=1e-5)


def test_lower_remembers_a_failed_dynamic_compile_of_the_same_graph(monkeypatch):
    from lightning_optim.functional.quantization import pt2e

    torch.manual_seed(0)
    model = settle(_convnet3(), (8, 1, 8, 8))
    _, _, quantized = ptq(model, (8, 1, 8, 8), batches=2)
    x = torch.randn(8, 1, 8, 8)
    calls = []

    def failing_dynamic(module, dynamic):
        calls.append(dynamic)
        if dynamic:
            raise RuntimeError("stride assertion (simulated)")
        return module  # the per-shape "compile": the graph itself

    monkeypatch.setattr(pt2e, "_compile", failing_dynamic)
    monkeypatch.setattr(pt2e, "_DYNAMIC_FAILURES", {})
    with pytest.warns(UserWarning, match="compiled per input shape instead"):
        first = lower(quantized, x)
    assert calls == [True, False] and not first.dynamic
    assert "stride assertion (simulated)" in first.note
    with pytest.warns(UserWarning, match="of the same ops failed before in this process"):
        second = lower(quantized, x)
    assert calls == [True, False, False]  # no second dynamic try
    assert not second.dynamic and "stride assertion (simulated)" in second.note
    # asked for explicitly, the dynamic compile is still tried (and its failure raised)
    with pytest.raises(pt2e.QuantizationError, match="dynamic=True"):
        lower(quantized, x, dynamic=True)
    assert calls == [True, False, False, True]


# ----------------------------------------------------------------------------------------- deploy file
def _run_without_lightning_optim(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_pt2_file_holds_int8_weights_only_and_runs_in_a_fresh_process(tmp_path):
    model, backend, _, quantized = settled_ptq("resnet18_32px")
    meta = {
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "class_names": [f"c{i}" for i in range(10)],
    }
    path = backend.export(quantized, tmp_path / "resnet18_int8.pt2", metadata=meta)

    fp32 = io.BytesIO()
    torch.save(model.state_dict(), fp32)
    assert path.stat().st_size * 3.5 <= len(fp32.getvalue()), (path.stat().st_size, len(fp32.getvalue()))

    # no float copy of any conv weight: every matrix in the program is int8, and the raw bytes of the first
    # float weights are nowhere in the archive's records
    program = torch.export.load(str(path))
    tensors = {**program.state_dict, **program.constants}
    assert all(t.dtype == torch.int8 for t in tensors.values() if t.dim() >= 2)
    records = b"".join(_records(path).values())
    for conv in (model.conv1, model.layer1[0].conv1, model.layer4[1].conv2):
        assert conv.weight.detach().flatten()[:64].numpy().tobytes() not in records

    info = read_pt2_metadata(path)
    assert {k: info[k] for k in meta} == meta and info["input_shape"] == [3, 32, 32]
    assert info["representation"] == "aten" and info["dynamic_batch"] and info["float_matrices"] == []

    x = torch.randn(5, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = quantized(x)
    loaded = backend.load(path)
    assert loaded.metadata == info
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-6)

    result = _run_without_lightning_optim(
        f"""
        import json, sys, torch
        extra = {{"{METADATA_FILE}": ""}}
        model = torch.export.load({str(path)!r}, extra_files=extra).module()
        with torch.no_grad():
            y = model(torch.load({str(tmp_path / "x.pt")!r}))
        torch.save(y, {str(tmp_path / "y.pt")!r})
        print(json.loads(extra["{METADATA_FILE}"])["class_names"][3])
        print("lightning_optim" in sys.modules, "torchao" in sys.modules)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["c3", "False", "False"]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-6)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """``(backend, int8 model, path)``: a tiny ResidualCNN exported as a .pt2 file."""
    torch.manual_seed(0)
    model = settle(ResidualCNN(), (8, 3, 16, 16))
    backend, _, quantized = ptq(model, (8, 3, 16, 16), batches=1)
    path = backend.export(quantized, tmp_path_factory.mktemp("pt2") / "residual.pt2")
    return backend, quantized, path


def _rewrite(path: Path, target: Path, change) -> Path:
    records = _records(path)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in records.items():
            archive.writestr(name, change(name, data))
    return target


def test_truncated_or_altered_pt2_file_is_refused(small_export, tmp_path):
    backend, quantized, path = small_export
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(QuantizationError, match="not a complete .pt2 archive"):
        backend.load(truncated)

    # a byte changed inside a compressed weight record: its CRC-32 (or the inflation) fails
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    flipped = bytearray(data)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    flipped[offset] ^= 0x10
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(QuantizationError, match=r"altered|not a complete"):
        backend.load(damaged)

    # two weights of the same size swapped in a well-formed archive: only the export's SHA-256 tells
    records = _records(path)
    by_size: dict[int, list[str]] = {}
    for name, blob in records.items():
        if "/data/weights/" in name:
            by_size.setdefault(len(blob), []).append(name)
    first, second = next(names for names in by_size.values() if len(names) >= 2)[:2]
    assert records[first] != records[second]
    swap = {first: records[second], second: records[first]}
    swapped = _rewrite(path, tmp_path / "swapped.pt2", lambda name, blob: swap.get(name, blob))
    with pytest.raises(
        QuantizationError, match=r"records \[.*\] differ from those written at export \(altered file\)"
    ):
        backend.load(swapped)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # torch alone loads it without complaint, and it computes something else
        assert not torch.equal(torch.export.load(str(swapped)).module()(x), quantized(x))

    # a program torch.export wrote without our records
    foreign = _rewrite(
        path,
        tmp_path / "foreign.pt2",
        lambda name, blob: blob,
    )
    stripped = tmp_path / "stripped.pt2"
    with zipfile.ZipFile(foreign) as src, zipfile.ZipFile(stripped, "w") as dst:
        for name in src.namelist():
            if not name.endswith(INTEGRITY_FILE):
                dst.writestr(name, src.read(name))
    with pytest.raises(
        QuantizationError, match=rf"no {INTEGRITY_FILE} record: not written by Pt2eBackend.export"
    ):
        backend.load(stripped)
    assert backend.load(stripped, verify=False).kind == "int8"


def test_export_checks_its_input(small_export, tmp_path):
    backend, quantized, _ = small_export
    with pytest.raises(
        ValueError, match=r"Unknown PT2E export `metadata key` 'norm'; allowed: \['mean', 'std', "
    ):
        backend.export(quantized, tmp_path / "m.pt2", metadata={"norm": [0.5]})
    with pytest.raises(ValueError, match=r"`mean` \(3 values\) and `std` \(1 values\)"):
        backend.export(quantized, tmp_path / "m.pt2", metadata={"mean": [0, 0, 0], "std": [1]})
    with pytest.raises(
        QuantizationError, match=r"export\(\) needs the int8 model from Pt2eBackend.convert\(\)"
    ):
        backend.export(ResidualCNN(), tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists()
    # how raw grey images become the model's 3 channels travels with the file
    path = backend.export(quantized, tmp_path / "grey.pt2", metadata={"channels_from": "grey repeated to 3"})
    assert read_pt2_metadata(path)["channels_from"] == "grey repeated to 3"


def test_non_portable_export_keeps_the_quantize_nodes(small_export, tmp_path):
    backend, quantized, _ = small_export
    keep = Pt2eBackend(example_input=backend.example_input, portable_export=False, compress_export=False)
    path = keep.export(quantized, tmp_path / "qdq.pt2", metadata={"class_names": list("abcde")})
    info = json.loads(_records(path)[next(n for n in _records(path) if n.endswith(METADATA_FILE))])
    assert info["representation"] == "quantized_decomposed" and info["class_names"] == list("abcde")
    loaded = keep.load(path)
    assert quantized_op_counts(loaded).get("quantize_per_tensor", 0) > 0
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), quantized(x), atol=1e-6)


def test_prepared_module_computes_in_float32_under_autocast():
    torch.manual_seed(0)
    model = settle(ResidualCNN(), (8, 3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    prepared = Pt2eBackend(example_input=x).prepare_qat_module(model)
    prepared(x)  # observe once
    Pt2eBackend().freeze_observers(prepared)
    prepared.eval()
    with torch.no_grad():
        expected = prepared(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = prepared(x)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_graph_mode_follows_the_training_flag_set_directly():
    """Lightning restores submodule modes after validation by setting ``.training`` (no ``train()`` call): the
    captured batch norms must follow it, or QAT trains with frozen statistics after the first validation."""
    torch.manual_seed(0)
    model = settle(ResidualCNN(), (8, 3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    prepared = Pt2eBackend(example_input=x).prepare_qat_module(model)
    prepared.eval()
    for module in prepared.modules():
        module.training = True  # as lightning's _ModuleMode.restore does
    stats = [b for n, b in prepared.named_buffers() if n.endswith("running_mean")]
    before = [b.clone() for b in stats]
    prepared(x)
    assert stats and all(not torch.equal(a, b) for a, b in zip(before, stats))  # train behaviour: tracked


class MHAEncoder(nn.Module):
    """A pre-norm encoder block on ``nn.MultiheadAttention`` (as torchvision's ViT) and a linear head."""

    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


def test_multihead_attention_projections_are_quantized_too(tmp_path):
    """``nn.MultiheadAttention`` computes q/k/v on slices of one packed weight, which the x86 quantizer leaves
    in float (vit_b_16's deploy file was 2.1x smaller than fp32): PTQ unpacks them into Linear layers first."""
    torch.manual_seed(0)
    model = MHAEncoder().eval()
    shape = (8, 6, 32)
    backend, _, quantized = ptq(model, shape)
    assert "q/k/v projections unpacked into Linear layers: attn" in quantized.capture.note
    assert isinstance(model.attn, nn.MultiheadAttention)  # the user's model is left alone
    path = backend.export(quantized, tmp_path / "mha.pt2")
    assert (
        read_pt2_metadata(path)["float_matrices"] == []
    )  # every weight matrix int8, the attention's included
    x = torch.randn(16, *shape[1:])
    with torch.no_grad():
        assert relative_error(quantized(x), model(x)) < 0.1
    # QAT trains the packed weight itself: said, not silently left in float
    prepared = Pt2eBackend(example_input=torch.randn(*shape)).prepare_qat_module(MHAEncoder())
    assert (
        "attention q/k/v projections stay float in QAT (packed in_proj_weight): attn" in prepared.capture.note
    )


def test_measure_model_reads_a_captured_network_and_its_int8_model():
    """The compression report's row of a PT2E-prepared network (QAT) counts its weights' zeros and leaves the
    per-layer MACs unknown (no layer modules), and the int8 model's row counts its int8 weights: never the
    0% sparsity / 90 parameters of a graph read as a plain module."""
    from lightning_optim.functional.compression_report.measure import measure_model

    torch.manual_seed(0)
    model = settle(ResidualCNN(), (8, 3, 16, 16))
    with torch.no_grad():
        model.blocks[0][0].weight[:4] = 0.0  # a quarter of one conv's filters pruned
    x = torch.randn(4, 3, 16, 16)
    backend = Pt2eBackend(example_input=x)
    prepared = backend.prepare_qat_module(model)
    row = measure_model(prepared, x, latency_batch_sizes=(), artifact=False)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    expected = 4 * model.blocks[0][0].weight[0].numel() / sum(w.numel() for w in conv_weights)
    assert row["precision"] == "fake-quant" and row["weight_sparsity"] == pytest.approx(expected)
    assert row["nonzero_macs"] is None and row["macs"] > 0
    prepared(x)
    int8 = backend.convert(prepared)
    row = measure_model(int8, x, latency_batch_sizes=(), artifact=False)
    assert row["precision"] == "int8" and row["parameters"] >= sum(w.numel() for w in conv_weights)
    assert row["weight_sparsity"] == pytest.approx(expected, abs=0.01)


class TokenEncoder(nn.Module):
    """Token and position embeddings, a transformer encoder layer and a linear head (a BERT-style classifier);
    ``tied``: a language-model head that reuses the token table."""

    def __init__(self, vocab: int = 1000, dim: int = 32, classes: int = 5, tied: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim, padding_idx=0)
        self.positions = nn.Embedding(16, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)
        self.tied = tied

    def forward(self, ids):
        h = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        h = self.layer(h)
        if self.tied:
            return h.mean(1) @ self.tokens.weight.t()
        return self.head(h.mean(1))


def test_embedding_tables_are_stored_in_int8_with_one_scale_per_row(tmp_path):
    """The x86 quantizer leaves embeddings in float (31 of a small BERT's 45 MB): convert() stores each table
    as int8 rows and per-row scales; a table tied to an output projection stays float."""
    torch.manual_seed(0)
    model = TokenEncoder().eval()
    ids = torch.randint(0, 1000, (8, 12))
    x = torch.randint(0, 1000, (16, 12))
    sizes = {}
    outputs = {}
    for quantize_embeddings in (False, True):
        backend = Pt2eBackend(example_input=ids, quantize_embeddings=quantize_embeddings)
        observed, _ = backend.prepare_ptq(model)
        backend.calibrate(observed, [torch.randint(0, 1000, (8, 12)) for _ in range(4)])
        quantized = backend.convert(observed)
        path = backend.export(quantized, tmp_path / f"tokens_{quantize_embeddings}.pt2")
        sizes[quantize_embeddings] = path.stat().st_size
        with torch.no_grad():
            outputs[quantize_embeddings] = quantized(x), model(x)
        tables = {k: t for k, t in quantized.graph_module.named_buffers() if k.endswith("_int8")}
        if quantize_embeddings:
            assert len(tables) == 2 and all(t.dtype == torch.int8 for t in tables.values()), tables
            # per row: the largest value of each row maps to +-127; the padding row (all zeros) stays zero
            token_table = next(t for k, t in tables.items() if "token" in k)
            assert int(token_table[1:].abs().amax(dim=1).min()) == 127 and not token_table[0].any()
            assert read_pt2_metadata(path)["float_matrices"] == []
            loaded = backend.load(path)
            with torch.no_grad():
                assert torch.allclose(loaded(x), outputs[True][0], atol=1e-5)
        else:
            assert not tables
    assert sizes[True] * 2 < sizes[False], sizes  # the 1000 x 32 token table dominates
    got, expected = outputs[True]
    assert relative_error(got, expected) < 0.05
    assert relative_error(got, outputs[False][0]) < 0.02  # the tables' own rounding: small

    tied = TokenEncoder(tied=True).eval()
    backend = Pt2eBackend(example_input=ids)
    observed, _ = backend.prepare_ptq(tied)
    backend.calibrate(observed, [ids])
    quantized = backend.convert(observed)
    names = [k for k, _ in quantized.graph_module.named_buffers() if k.endswith("_int8")]
    assert not any("token" in k for k in names), names  # tied to the head: left in float
    assert "embedding tables kept float: tokens.weight: also read elsewhere (tied" in quantized.capture.note
    assert "embedding tables int8 (one scale per row): positions" in quantized.capture.note


def test_conv_kinds_a_graph_lacks_are_skipped_because_torchao_would_change_nothing():
    """Our conv-bn shortcut skips torchao's fuse (preparation) and fold (conversion) passes of the conv kinds a
    graph lacks: run anyway on a graph of 2-d convolutions, torchao's passes of the other kinds leave it as it is."""
    import importlib

    import torch.nn.functional as F

    from lightning_optim.functional.quantization import pt2e as pt2e_module

    qat_utils = importlib.import_module("torchao.quantization.pt2e.qat_utils")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5)
    )
    x = torch.randn(4, 1, 8, 8)
    graph = torch.export.export(net, (x,), strict=False).module(check_guards=False)
    before = graph.code
    conv1d_inputs = tuple(torch.randn(*s) for s in [(1, 1, 3), (1, 1, 1), (1,), (1,), (1,), (1,), (1,)])
    original = qat_utils._fuse_conv_bn_qat_helper  # torchao's own (the shortcut wraps it inside the context)
    with pt2e_module._fast_conv_bn_patterns():  # for its cache of the pattern graphs
        assert qat_utils._fuse_conv_bn_qat_helper is not original
        for conv_fn in (F.conv1d, F.conv_transpose1d):
            graph = original(graph, conv_fn, conv1d_inputs, is_cuda=False)
            assert graph.code == before, (
                f"torchao's {conv_fn.__name__} pass changed a graph without that conv"
            )
