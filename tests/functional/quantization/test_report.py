"""The quantization report's own pieces: the export file's kind and the quiet latency wrapper."""

from __future__ import annotations

import warnings

import pytest

from lightning_optim.functional.compression_report import measure
from lightning_optim.functional.quantization.report import ARTIFACT_KINDS, artifact_kind, measure_cpu_latency
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
