"""The report's deployable artifact (functional/compression_report/deploy.py): the exported program by default,
PT2E int8 models decomposed so that torch alone loads them, the state-dict fallback that always warns, the
``artifact_format`` option, and a CPU measurement that logs nothing about CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from lightning_optim.functional.artifact import describe_artifact, load_artifact, read_header
from lightning_optim.functional.compression_report.deploy import (
    ARTIFACT_FORMATS,
    pack_model_artifact,
    resolve_artifact_format,
)
from lightning_optim.functional.compression_report.measure import measure_model
from tests.nets import IN, ResidualCNN, int8_mlp, mlp

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pt2e_int8():
    """``(int8 Pt2eModule, input batch)``: PT2E PTQ of a pruned ResidualCNN, calibrated on random batches."""
    from lightning_optim.functional.quantization import Pt2eBackend

    torch.manual_seed(0)
    model = ResidualCNN()
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 16, 16))
        model.blocks[0][0].weight[:8] = 0.0  # half of one conv's filters pruned
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    backend = Pt2eBackend(example_input=x)
    observed, _ = backend.prepare_ptq(model)
    backend.calibrate(observed, [torch.randn(4, 3, 16, 16) for _ in range(2)])
    return backend.convert(observed), x


def test_pt2e_int8_model_round_trips_as_a_portable_program(pt2e_int8, tmp_path):
    quantized, x = pt2e_int8
    path = tmp_path / "int8.lopt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no notice
        blob, written, note = pack_model_artifact(quantized, x[:1], path=path, verify=True)
    assert (written, note) == ("exported_program", None) and path.read_bytes() == blob
    info = describe_artifact(blob)
    assert info["kind"] == "exported_program" and info["program"]["inputs"][0]["shape"][0] == "batch"
    assert info["streams"]["v1"]["raw"] > 0  # int8 weights: the one-byte stream
    loaded = load_artifact(path)
    targets = {str(n.target) for n in loaded.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "quantized_decomposed" in t]  # core aten only: no torchao to load it
    with torch.no_grad():
        for batch in (x, x[:1]):
            assert torch.allclose(loaded(batch), quantized(batch), rtol=1e-4, atol=1e-5)
    # only the int8 weights are stored, not the float ones convert_pt2e keeps beside them
    float_weight = quantized.graph_module.state_dict()
    assert not any(t.dim() >= 2 and t.is_floating_point() for t in loaded.state_dict().values()), float_weight


def test_measure_model_records_the_format_written(pt2e_int8):
    quantized, x = pt2e_int8
    row = measure_model(quantized, x, latency_batch_sizes=())
    assert row["artifact_format"] == "exported_program" and "artifact_note" not in row
    row = measure_model(quantized, x, latency_batch_sizes=(), artifact_format="state_dict")
    assert row["artifact_format"] == "state_dict"


def test_fallback_to_the_state_dict_warns_with_the_reason():
    q = int8_mlp(mlp())  # eager torch.ao int8: packed weights torch.export cannot capture
    x = torch.randn(2, IN)
    with pytest.warns(UserWarning, match="needs the model's code") as caught:
        blob, written, note = pack_model_artifact(q, x)
    message = str(caught[0].message)
    assert written == "state_dict" and note == message
    assert "torch.export could not capture QuantWrapper" in message and "backend='pt2e'" in message
    assert read_header(blob)["kind"] == "state_dict"
    assert set(load_artifact(blob)) == set(q.state_dict())
    with pytest.warns(UserWarning, match="no example input"):
        assert pack_model_artifact(mlp(), None)[1] == "state_dict"
    with pytest.warns(UserWarning, match="needs the model's code"):
        row = measure_model(q, x, latency_batch_sizes=())
    assert row["artifact_format"] == "state_dict" and "needs the model's code" in row["artifact_note"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float model exports: no warning
        assert measure_model(mlp(), x, latency_batch_sizes=())["artifact_format"] == "exported_program"


def test_bad_artifact_format_names_the_allowed_values():
    for call in (
        lambda: resolve_artifact_format("onnx"),
        lambda: measure_model(mlp(), torch.randn(2, IN), artifact_format="onnx"),
        lambda: pack_model_artifact(mlp(), torch.randn(2, IN), "pt2"),
    ):
        with pytest.raises(ValueError, match=r"Unknown `artifact_format` '(onnx|pt2)'; allowed: ") as err:
            call()
        assert all(repr(f) in str(err.value) for f in ARTIFACT_FORMATS)


def test_artifact_torchscript_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match="artifact_format='torchscript'"):
        assert resolve_artifact_format("exported_program", True) == "torchscript"
    with pytest.warns(FutureWarning, match="artifact_format='state_dict'"):
        assert resolve_artifact_format("exported_program", False) == "state_dict"
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="contradicts"):
        resolve_artifact_format("state_dict", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = measure_model(mlp(), torch.randn(2, IN), latency_batch_sizes=(), artifact_torchscript=True)
    assert row["artifact_format"] == "torchscript"
    texts = [str(w.message) for w in caught if w.category is FutureWarning]
    assert any("artifact_format='torchscript'" in t for t in texts)
    assert any("`torch.jit.script` is deprecated" in t for t in texts)  # torch's notice is passed on


_NO_CUDA_NOTICE = """
import json, logging, sys, warnings, torch
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())

logging.getLogger().addHandler(Keep(level=logging.WARNING))
logging.getLogger().setLevel(logging.WARNING)
from lightning_optim.functional.compression_report import measure
from lightning_optim.functional.quantization import Pt2eBackend
from tests.nets import ResidualCNN

torch.manual_seed(0)
model, x = ResidualCNN().eval(), torch.randn(2, 3, 16, 16)
backend = Pt2eBackend(example_input=x)
observed, _ = backend.prepare_ptq(model)
observed(x)
quantized = backend.convert(observed)
if sys.argv[1:] == ["unguarded"]:  # without our care the notice shows (checked when this test was written)
    measure.quiet_cpu_compiler_import = lambda: None
del records[:]
imported_before = "torch.utils.cpp_extension" in sys.modules
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    row = measure.measure_model(quantized, x, latency_batch_sizes=(1,), latency_repeats=1, latency_warmup=0)
print(json.dumps({
    "logged": records,
    "warned": [str(w.message) for w in caught],
    "note": row.get("latency_note"),
    "imported_before": imported_before,
}))
"""


def test_cpu_measurement_logs_nothing_about_cuda(tmp_path):
    """The int8 latency compiles the model (torch.compile on the CPU imports torch.utils.cpp_extension, which
    logs "No CUDA runtime is found" where a CUDA toolkit is installed and no GPU): run in a fresh process, with
    a CUDA toolkit folder, as on such a machine. (Run with the argument ``unguarded``, the script shows the
    notice: the check below is not vacuous.)"""
    if torch.cuda.is_available() or not torch.version.cuda:
        pytest.skip("the notice only exists for a CUDA build of torch on a machine without a GPU")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", CUDA_HOME=str(tmp_path), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_CUDA_NOTICE)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["note"] == "int8: torch.compile (inductor)"  # the compile ran
    assert not seen["imported_before"]  # the measurement is the first to reach the compiler
    # torch logs through its own handler (to stderr, not propagated): look at what the user sees too
    cuda = [m for m in [*seen["logged"], *seen["warned"], *result.stderr.splitlines()] if "CUDA" in m]
    assert not cuda, cuda
