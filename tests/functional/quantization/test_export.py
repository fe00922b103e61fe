"""The export of a converted model (functional/quantization/export.py): formats, suffixes, TorchScript, artifact."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_optim.functional import artifact
from lightning_optim.functional.quantization import (
    BACKEND_FORMATS,
    EXPORT_FORMATS,
    check_export_format,
    check_export_formats,
    create_backend,
    export_file_path,
    export_format_of,
    export_quantized,
    unused_path,
)
from lightning_optim.models import ConvNet3


@pytest.fixture(scope="module")
def int8_model():
    """A converted tiny ConvNet3 (QAT-prepared, observed on random inputs)."""
    torch.manual_seed(0)
    backend = create_backend("eager", engine="x86")
    model = ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)
    backend.prepare_qat(model)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8))
    return backend.convert(model.eval())


def _run_without_lightning_optim(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------------------- formats
def test_formats_and_suffixes():
    assert EXPORT_FORMATS == {"torchscript": ".pt", "artifact": ".lopt", "pt2": ".pt2", "onnx": ".onnx"}
    assert BACKEND_FORMATS == {"eager": ("torchscript", "artifact"), "pt2e": ("pt2", "onnx")}
    assert export_format_of("out/model_int8.pt") == "torchscript"
    assert export_format_of(Path("model.LOPT")) == "artifact"
    for fmt, suffix in EXPORT_FORMATS.items():
        assert export_format_of(f"m{suffix}") == fmt
        assert export_file_path("out/q", "model_int8.pt", fmt) == Path("out/q") / f"model_int8{suffix}"


def test_unknown_format_and_suffix_are_refused():
    with pytest.raises(
        ValueError,
        match=r"Unknown `export_format` 'tflite'; allowed: \['torchscript', 'artifact', 'pt2', 'onnx'\]\.",
    ):
        check_export_format("tflite")
    with pytest.raises(
        ValueError,
        match=r"Unknown `export_format` 'onnx'; allowed: \['torchscript', 'artifact'\] \(what backend='eager'",
    ):
        check_export_format("onnx", "eager")
    with pytest.raises(
        ValueError,
        match=r"Unknown export file `suffix` '\.tflite'; allowed: \['\.pt', '\.lopt', '\.pt2', '\.onnx'\]\.",
    ):
        export_format_of("model.tflite")
    with pytest.raises(ValueError, match=r"`suffix` ''"):
        export_format_of("model")
    with pytest.raises(ValueError, match=r"`export_format` 'onnx'"):
        export_quantized(torch.nn.Identity(), "m.onnx", "onnx")  # the eager stack writes no ONNX
    assert check_export_formats(None, "pt2e") == ["pt2"] and check_export_formats(None, "eager") == [
        "torchscript"
    ]
    assert check_export_formats(["onnx", "pt2", "onnx"], "pt2e") == ["onnx", "pt2"]
    with pytest.raises(ValueError, match="at least one format"):
        check_export_formats([])


def test_unused_path_never_names_an_existing_file(tmp_path):
    first = tmp_path / "model_int8.pt2"
    assert unused_path(first, (".onnx",)) == first
    first.write_bytes(b"x")
    assert unused_path(first, (".onnx",)) == tmp_path / "model_int8-v1.pt2"
    (tmp_path / "model_int8-v1.onnx").write_bytes(b"x")  # a sibling format of that version exists
    assert unused_path(first, (".onnx",)) == tmp_path / "model_int8-v2.pt2"


# ----------------------------------------------------------------------------------------- writing
def test_torchscript_export_loads_in_fresh_process_without_lightning_optim(tmp_path, int8_model):
    backend = create_backend()
    path = export_quantized(
        int8_model, tmp_path / "sub" / "int8.pt", "torchscript", torch.randn(2, 1, 8, 8), backend=backend
    )
    assert path == tmp_path / "sub" / "int8.pt" and path.is_file()
    x = torch.randn(5, 1, 8, 8)
    torch.save({"x": x, "y": int8_model(x)}, tmp_path / "io.pt")
    proc = _run_without_lightning_optim(
        f"""
        import sys
        sys.modules["lightning_optim"] = None  # importing our package would fail
        import torch
        model = torch.jit.load({str(path)!r})
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        y = model(io["x"])
        assert torch.allclose(y, io["y"]), (y - io["y"]).abs().max()
        assert not any(name.startswith("lightning_optim") and sys.modules[name] is not None for name in sys.modules)
        print("OK", tuple(y.shape))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK (5, 10)" in proc.stdout
    loaded = backend.load(path)
    with backend.int8_context():  # an earlier Lightning test may have left deterministic mode on
        assert torch.allclose(loaded(x), int8_model(x))


def test_artifact_export_loads_with_torch_and_the_artifact_module_alone(tmp_path, int8_model):
    """The compact artifact: smaller than the TorchScript file, read back by the artifact module alone."""
    example = torch.randn(2, 1, 8, 8)
    path = export_quantized(int8_model, tmp_path / "sub" / "int8.lopt", "artifact", example)
    script_path = export_quantized(int8_model, tmp_path / "int8.pt", "torchscript", example)
    assert path.is_file() and path.read_bytes()[:8] == artifact.MAGIC
    assert path.stat().st_size < script_path.stat().st_size
    x = torch.randn(3, 1, 8, 8)
    torch.save({"x": x, "y": int8_model(x)}, tmp_path / "io.pt")
    proc = _run_without_lightning_optim(
        f"""
        import importlib.util, sys, torch
        sys.modules["lightning_optim"] = None  # importing our package would fail
        spec = importlib.util.spec_from_file_location("artifact_loader", {artifact.__file__!r})
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        model = mod.load_artifact({str(path)!r})
        ref = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        assert torch.equal(model(ref["x"]), ref["y"])
        print("ok")
        """,
        tmp_path,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_artifact_export_runs_under_strict_determinism(tmp_path, int8_model):
    """Its round-trip check runs the int8 kernels: the backend's int8 context lets them run."""
    torch.use_deterministic_algorithms(True)
    try:
        export_quantized(int8_model, tmp_path / "m.lopt", "artifact", torch.randn(2, 1, 8, 8))
    finally:
        torch.use_deterministic_algorithms(False)
    assert (tmp_path / "m.lopt").is_file()
