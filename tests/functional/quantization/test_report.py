"""The quantization report's own pieces: the export file's kind and the quiet latency wrapper."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_optim.functional.compression_report import measure
from lightning_optim.functional.quantization.report import (
    ACCURACY_NOTE_POINTS,
    ARTIFACT_KINDS,
    QuantizationReport,
    accuracy_gap_note,
    artifact_kind,
    format_report,
    measure_cpu_latency,
)
from tests.nets import IN, int8_mlp, mlp


@pytest.mark.parametrize(
    "path, kind",
    [
        ("out/model_int8.pt", "TorchScript file"),
        ("out/model_int8.lopt", "compact artifact (.lopt)"),
        ("out/MODEL.LOPT", "compact artifact (.lopt)"),
        ("out/my_model.pth", "TorchScript file"),  # a user's own name: the default export
        ("out/model_int8.pt2", "torch.export program (.pt2)"),
        ("out/model_int8.onnx", "QDQ ONNX file"),
    ],
)
def test_artifact_kind_by_export_format(path, kind):
    assert artifact_kind(path) == kind
    assert set(ARTIFACT_KINDS) == {"torchscript", "artifact", "pt2", "onnx"}


def test_latency_is_the_measure_module_with_quantization_notices_shown_once(monkeypatch):
    """torch's eager-quantization deprecation notices concern the TorchScript files the eager stack ships: never
    silenced, shown once per process instead of at every call."""
    seen = []

    def fake(*args, **kwargs):
        warnings.warn("torch.ao.quantization is deprecated", DeprecationWarning, stacklevel=1)
        seen.append((args, kwargs))
        return {1: {}}

    monkeypatch.setattr(measure, "measure_cpu_latency", fake)
    model = mlp().eval()
    int8 = int8_mlp(model)
    from lightning_optim.functional.quantization import _quiet

    _quiet._SHOWN.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert measure_cpu_latency(model, int8, (IN,), batch_sizes=(1,)) == {1: {}}
    notices = [w for w in caught if "torch.ao.quantization is deprecated" in str(w.message)]
    assert len(notices) == 1 and len(seen) == 3
    assert seen[0][1] == {"batch_sizes": (1,)}


def _report(fp32: float | None, int8: float | None, **kw) -> QuantizationReport:
    return QuantizationReport(
        fp32_accuracy=fp32, int8_accuracy=int8, fp32_state_dict_bytes=4000, int8_state_dict_bytes=1000, **kw
    )


def test_columns_are_headed_by_what_they_measure():
    table = format_report(_report(0.9, 0.89, fp32_label="fp32 before QAT", int8_label="int8 after QAT"))
    assert table.splitlines()[2] == "| | fp32 before QAT | int8 after QAT | ratio |"
    assert format_report(_report(0.9, 0.89)).splitlines()[2] == "| | fp32 | int8 | ratio |"  # the defaults


@pytest.mark.parametrize(
    ("fp32", "int8", "said"),
    [
        (0.32, 0.56, "Note: int8 is 24.0 points above fp32 on 144 validation samples: both are X."),
        (0.90, 0.85, "Note: int8 is 5.0 points below fp32 on 144 validation samples: both are X."),
        (0.90, 0.90 - ACCURACY_NOTE_POINTS / 100, None),  # within a few points: nothing to explain
        (0.90, 0.91, None),
        (None, 0.5, None),  # not measured
    ],
)
def test_a_gap_of_more_than_a_few_points_is_explained_in_one_line(fp32, int8, said):
    report = _report(fp32, int8, accuracy_samples=144, accuracy_note="both are X")
    assert accuracy_gap_note(report) == said
    lines = format_report(report).splitlines()
    notes = [line for line in lines if line.startswith("Note:")]
    assert notes == ([said] if said else [])
    if said:  # under the table, after a blank line
        assert lines[lines.index(said) - 1] == "" and lines[lines.index(said) - 2].startswith("| state dict")


def test_the_note_without_words_of_the_caller_still_says_what_the_rows_are():
    note = accuracy_gap_note(_report(0.2, 0.6))
    assert note.startswith("Note: int8 is 40.0 points above fp32: both columns are the same weights;")


def test_deploy_files_timed_beside_the_models_get_their_own_rows():
    from lightning_optim.functional.quantization.report import (
        DEPLOY_PREFIX,
        QuantizationReport,
        format_report,
    )

    report = QuantizationReport(
        fp32_state_dict_bytes=4000,
        int8_state_dict_bytes=1000,
        latency_ms={
            64: {
                "fp32_eager": 30.0,
                "fp32_best": 24.0,
                "fp32_best_method": "compile",
                "int8": 40.0,
                DEPLOY_PREFIX + "ONNX file in ONNX Runtime": 4.0,
            }
        },
    )
    table = format_report(report, "QAT")
    assert (
        "| latency batch 64, ONNX file in ONNX Runtime (ms) | | 4.000 | 7.50x vs eager, 6.00x vs best |"
        in (table.replace("  ", " ").replace("  ", " "))
    ), table


def test_quantization_report_times_the_deploy_runners_beside_the_models():
    from lightning_optim.functional.quantization.report import DEPLOY_PREFIX, quantization_report

    fp32 = mlp().eval()
    int8 = int8_mlp(fp32)
    calls = []

    def onnx_file(x):
        calls.append(x.shape[0])
        return fp32(x)

    report = quantization_report(
        fp32,
        int8,
        input_shape=(IN,),
        batch_sizes=(3,),
        repeats=1,
        rounds=1,
        best_effort=(),
        deploy_runners={"ONNX file in ONNX Runtime": onnx_file},
    )
    assert DEPLOY_PREFIX + "ONNX file in ONNX Runtime" in report.latency_ms[3]
    assert calls and set(calls) == {3}


def test_the_callbacks_time_the_onnx_file_where_one_was_written(tmp_path):
    pytest.importorskip("onnxruntime")
    from lightning_optim.callbacks.quantization import _deploy_runners
    from lightning_optim.functional.quantization import OnnxRunner, export_onnx

    assert _deploy_runners({}) == {} and _deploy_runners(None) == {}
    path = export_onnx(mlp().eval(), tmp_path / "float.onnx", torch.randn(2, IN))
    runners = _deploy_runners({"pt2": tmp_path / "x.pt2", "onnx": path})
    assert list(runners) == ["ONNX file in ONNX Runtime"]
    assert isinstance(runners["ONNX file in ONNX Runtime"], OnnxRunner)
