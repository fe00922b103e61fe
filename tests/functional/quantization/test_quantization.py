"""Quantization backend, fusion detection, conversion, export and report (no Lightning)."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_optim.functional.quantization import (
    BACKENDS,
    EagerBackend,
    QuantizationError,
    accuracy,
    check_backend_name,
    check_engine,
    create_backend,
    find_fusion_groups,
    format_report,
    quantization_report,
    resolve_backend,
)
from lightning_optim.models import ConvNet3, LeNet5, LeNet300100, SeparableCNN
from tests.nets import NoLayers, Residual


def tiny_convnet() -> ConvNet3:
    return ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)


def _observe(model: nn.Module, shape=(1, 8, 8), steps: int = 3) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, *shape))


def _quantized_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> int8 weight of every quantized conv/linear of a converted model."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):
            w = weight()
            if isinstance(w, torch.Tensor) and w.is_quantized:
                out[name] = w
    return out


# ----------------------------------------------------------------------------------------- fusion
ZOO_FUSION = [
    (
        "convnet3",
        tiny_convnet,
        [
            ("features.block1.conv", "features.block1.bn", "features.block1.act"),
            ("features.block2.conv", "features.block2.bn", "features.block2.act"),
            ("features.block3.conv", "features.block3.bn", "features.block3.act"),
            ("classifier.fc1", "classifier.act"),
        ],
    ),
    (
        "lenet5",
        LeNet5,
        [
            ("features.conv1", "features.act1"),
            ("features.conv2", "features.act2"),
            ("classifier.fc1", "classifier.act3"),
            ("classifier.fc2", "classifier.act4"),
        ],
    ),
    (
        "lenet5_bn",
        lambda: LeNet5(norm="batch"),
        [
            ("features.conv1", "features.bn1", "features.act1"),
            ("features.conv2", "features.bn2", "features.act2"),
            ("classifier.fc1", "classifier.act3"),
            ("classifier.fc2", "classifier.act4"),
        ],
    ),
    ("lenet300100", lambda: LeNet300100(in_features=64), [("fc1", "act1"), ("fc2", "act2")]),
    (
        "separable_cnn",
        SeparableCNN,
        [("features.stem.conv", "features.stem.bn", "features.stem.act")]
        + [(f"features.sep{i}.conv_pw", f"features.sep{i}.bn", f"features.sep{i}.act") for i in (1, 2, 3)],
    ),
]


@pytest.mark.parametrize("name,build,expected", ZOO_FUSION, ids=[z[0] for z in ZOO_FUSION])
def test_fusion_detected_on_zoo_models(name, build, expected):
    plan = find_fusion_groups(build())
    assert plan.traced
    assert plan.groups == expected
    assert not plan.not_fused
    assert name in plan.summary() or "fused" in plan.summary()


class SharedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.relu = nn.ReLU()  # called twice: fusing it into conv1 would drop conv2's ReLU
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


class FunctionalAndGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.gelu = nn.GELU()
        self.fc3 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc3(self.gelu(self.fc2(F.relu(self.fc1(x)))))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), bn=nn.BatchNorm2d(4), act=nn.ReLU()))
        self.head = nn.Linear(36, 2)

    def forward(self, x):
        if x.sum() > 0:  # not traceable by torch.fx
            x = x * 1.0
        return self.head(torch.flatten(self.body(x), 1))


def test_fusion_reports_what_was_not_fused():
    plan = find_fusion_groups(SharedReLU())
    assert plan.groups == []
    reasons = dict(plan.not_fused)
    assert "more than once" in reasons["conv1"] and "more than once" in reasons["conv2"]
    plan = find_fusion_groups(FunctionalAndGelu())
    reasons = dict(plan.not_fused)
    assert "functional relu" in reasons["fc1"]
    assert "GELU" in reasons["fc2"]
    assert plan.standalone == ["fc3"]


def test_fusion_falls_back_to_sequential_neighbours_when_untraceable():
    plan = find_fusion_groups(DataDependent())
    assert not plan.traced and plan.trace_error
    assert plan.groups == [("body.conv", "body.bn", "body.act")]
    assert "head" in dict(plan.not_fused)  # outside a Sequential: not examined, and said so
    assert "fx trace failed" in plan.summary()


# ----------------------------------------------------------------------------------------- prepare
def test_prepare_qat_keeps_parameters_and_optimizer_updates_them():
    backend = create_backend("eager", engine="x86")
    model = tiny_convnet()
    names = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backend.prepare_qat(model)
    assert backend.is_prepared(model)
    prepared = dict(model.named_parameters())
    assert {id(p) for p in prepared.values()} == {id(p) for p in names.values()}
    assert prepared["features.block1.conv.weight"] is names["features.block1.conv.weight"]
    before = model.features.block1.conv.weight.detach().clone()
    loss = F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,)))
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.features.block1.conv.weight)
    assert type(model.features.block1.conv).__name__ == "ConvBnReLU2d"


def test_converted_model_is_really_int8_and_close_to_fake_quant():
    backend = create_backend("eager", engine="x86")
    model = tiny_convnet()
    backend.prepare_qat(model)
    _observe(model)
    model.eval()
    quantized = backend.convert(model)
    layers = _quantized_layers(quantized)
    assert set(layers) == {
        "module.features.block1.conv",
        "module.features.block2.conv",
        "module.features.block3.conv",
        "module.classifier.fc1",
        "module.classifier.fc2",
    }
    assert all(w.dtype == torch.qint8 for w in layers.values())
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in quantized.modules())
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        fake, real = model(x), quantized(x)
    assert real.dtype == torch.float32
    step = quantized.module.classifier.fc2.scale  # one int8 step of the output
    assert (fake - real).abs().max() <= 3 * step  # rounding differences only
    # the prepared model is left alone: training can go on
    assert backend.is_prepared(model)


@pytest.mark.parametrize("mode", ["qat", "ptq"])
def test_zero_weights_stay_zero_in_int8(mode):
    backend = create_backend("eager", engine="x86")
    torch.manual_seed(0)
    model = tiny_convnet()
    with torch.no_grad():  # unstructured zeros and one whole pruned channel
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_((torch.rand_like(module.weight) > 0.6).float())
        model.features.block2.conv.weight[3].zero_()
    zero_masks = {
        n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    if mode == "qat":
        backend.prepare_qat(model)
        _observe(model)
        quantized = backend.convert(model.eval())
    else:
        observed, _ = backend.prepare_ptq(model)
        backend.calibrate(observed, [torch.randn(16, 1, 8, 8) for _ in range(3)])
        quantized = backend.convert(observed)
    layers = _quantized_layers(quantized)
    for name, zeros in zero_masks.items():
        int8 = layers[f"module.{name}"].int_repr()
        assert zeros.sum() > 0
        assert (int8[zeros] == 0).all(), f"{name}: a zero weight became non-zero in int8"
        assert (int8[~zeros] != 0).float().mean() > 0.5  # the others are really quantized values


def test_ptq_accuracy_close_to_float_on_tiny_fixed_task():
    torch.manual_seed(0)
    centers = torch.randn(4, 16) * 3
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 32), act=nn.ReLU(), fc2=nn.Linear(32, 4)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    backend = create_backend("eager", engine="x86")
    observed, plan = backend.prepare_ptq(model)
    assert plan.groups == [("fc1", "act")]
    backend.calibrate(observed, [x[i : i + 100] for i in range(0, 400, 100)])
    quantized = backend.convert(observed)
    batches = [(x, y)]
    fp32_acc, int8_acc = accuracy(model.eval(), batches), accuracy(quantized, batches)
    assert fp32_acc > 0.9
    assert abs(fp32_acc - int8_acc) <= 0.01
    assert set(_quantized_layers(quantized)) == {"module.fc1", "module.fc2"}


def test_fake_quant_is_sound_under_bf16_autocast():
    backend = create_backend("eager", engine="x86")
    model = tiny_convnet()
    backend.prepare_qat(model)
    _observe(model)
    backend.freeze_observers(model)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    scales = [b for n, b in backend.quantization_state(model).items() if n.endswith("scale")]
    assert scales and all(torch.isfinite(s).all() and (s > 0).all() for s in scales)


def test_freeze_observers_and_bn_stats():
    backend = create_backend("eager", engine="x86")
    model = tiny_convnet()
    backend.prepare_qat(model)
    _observe(model)
    backend.freeze_observers(model)
    backend.freeze_bn_stats(model)
    grid = {k: v.clone() for k, v in backend.quantization_state(model).items()}
    running = model.features.block1.conv.bn.running_mean.clone()
    _observe(model)
    assert not backend.observers_enabled(model)
    for key, value in backend.quantization_state(model).items():
        assert torch.equal(grid[key], value), key
    assert torch.equal(running, model.features.block1.conv.bn.running_mean)


# ----------------------------------------------------------------------------------------- bad input
def test_unsupported_backend_name():
    with pytest.raises(
        ValueError,
        match=r"Unknown quantization `backend` 'tensorrt'; allowed: \['eager', 'pt2e'\] \(the kernel target is `engine`",
    ):
        check_backend_name("tensorrt")
    assert set(BACKENDS) >= {"eager"}
    assert check_backend_name("Eager") == "eager"


def test_backend_is_the_stack_and_engine_the_kernel_target():
    for engine in ("x86", "fbgemm"):
        backend = create_backend("eager", engine=engine)
        assert isinstance(backend, EagerBackend)
        assert (backend.name, backend.engine, backend.file_format) == ("eager", engine, "torchscript")
        assert (
            backend.describe() == f"EagerBackend(name='eager', engine={engine!r}, file_format='torchscript')"
        )
    assert create_backend().engine == "x86"
    assert check_engine("FBGEMM") == "fbgemm"
    with pytest.raises(
        ValueError, match=r"Unknown quantization `engine` 'arm'; allowed: \['x86', 'fbgemm'\]\."
    ):
        check_engine("arm")
    with pytest.raises(ValueError, match=r"`engine` 'arm'"):
        create_backend("eager", engine="arm")


def test_engine_as_backend_name_still_works_with_a_warning():
    """The old meaning, ``create_backend("fbgemm")``: the engine, for one release."""
    with pytest.warns(
        DeprecationWarning, match=r"`backend='fbgemm'` names a quantized engine: pass `engine='fbgemm'`"
    ):
        backend = create_backend("fbgemm")
    assert (backend.name, backend.engine) == ("eager", "fbgemm")
    with pytest.warns(DeprecationWarning, match="engine"):
        assert resolve_backend("x86", "fbgemm") == ("eager", "x86")


def test_prepared_marker_and_int8_context_come_from_the_interface():
    backend = create_backend()
    model = tiny_convnet()
    backend.prepare_qat(model)
    assert backend.prepared_marker and isinstance(getattr(model, backend.prepared_marker), nn.Module)
    assert any(k.startswith(f"{backend.prepared_marker}.") for k in model.state_dict())
    torch.use_deterministic_algorithms(True)
    try:
        with backend.int8_context():
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_model_without_quantizable_layers():
    with pytest.raises(QuantizationError, match="no quantizable layer"):
        create_backend("eager", engine="x86").prepare_qat(NoLayers())
    with pytest.raises(QuantizationError, match="no quantizable layer"):
        create_backend("eager", engine="x86").prepare_ptq(NoLayers())


def test_forward_that_cannot_run_in_int8_is_named():
    backend = create_backend("eager", engine="x86")
    model = Residual()
    backend.prepare_qat(model)
    with pytest.raises(QuantizationError, match=r"cannot run on int8 tensors.*FloatFunctional"):
        backend.check_int8_forward(model, torch.randn(2, 1, 8, 8))


def test_pruning_reparametrization_is_refused():
    model = tiny_convnet()
    torch.nn.utils.prune.l1_unstructured(model.classifier.fc1, "weight", amount=0.5)
    with pytest.raises(QuantizationError, match="prune.remove"):
        create_backend("eager", engine="x86").prepare_qat(model)


def test_no_deprecation_noise_reaches_the_user(tmp_path):
    backend = create_backend("eager", engine="x86")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tiny_convnet()
        backend.prepare_qat(model)
        _observe(model)
        quantized = backend.convert(model.eval())
        backend.export(quantized, tmp_path / "m.pt")
        observed, _ = backend.prepare_ptq(tiny_convnet())
        backend.calibrate(observed, [torch.randn(4, 1, 8, 8)])
        backend.convert(observed)
    noisy = [str(w.message) for w in caught if "quantiz" in str(w.message) or "jit" in str(w.message)]
    assert not noisy, noisy


# ----------------------------------------------------------------------------------------- report
def test_report_sizes_and_latency_table():
    backend = create_backend("eager", engine="x86")
    model = tiny_convnet()
    reference = copy.deepcopy(model).eval()
    backend.prepare_qat(model)
    _observe(model)
    quantized = backend.convert(model.eval())
    report = quantization_report(
        reference,
        quantized,
        input_shape=(1, 8, 8),
        fp32_accuracy=0.9,
        int8_accuracy=0.89,
        batch_sizes=(1, 4),
        repeats=2,
        rounds=1,
        best_effort=("channels_last",),
    )
    assert report.int8_state_dict_bytes < report.fp32_state_dict_bytes
    assert set(report.latency_ms) == {1, 4}
    assert report.latency_ms[4]["fp32_best_method"] in ("eager", "channels_last")
    table = format_report(report)
    assert "| accuracy (%) | 90.00 | 89.00 | -1.00 pt |" in table
    assert "latency batch 4" in table
    metrics = report.metrics()
    assert metrics["quantization/int8_acc"] == pytest.approx(0.89)
    assert "quantization/speedup_vs_best/bs4" in metrics


def test_eager_refusal_names_the_block_whose_forward_fails():
    """A residual block's ``out += identity`` cannot run on int8 tensors in eager mode: the error names the
    block (torchvision's resnet18: ``layer1.0``) and the stack that quantizes it unchanged."""
    import torchvision

    from lightning_optim.functional.quantization import QuantizationError, create_backend

    backend = create_backend("eager")
    observed, _ = backend.prepare_ptq(torchvision.models.resnet18(weights=None, num_classes=10).eval())
    with pytest.raises(QuantizationError, match=r"in the forward of module 'layer1\.0'.*backend='pt2e'"):
        backend.check_int8_forward(observed, torch.randn(2, 3, 32, 32))
