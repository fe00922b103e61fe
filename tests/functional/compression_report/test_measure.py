"""Measurements against figures computed by hand for a 2-layer MLP."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.measure import (
    count_flops,
    count_layer_macs,
    count_nonzero,
    count_parameters,
    is_fake_quantized,
    is_quantized,
    measure_cpu_latency,
    measure_latency,
    measure_model,
    precision_of,
    state_dict_size_bytes,
    weight_sparsity,
)
from tests.functional.compression_report import batches
from tests.nets import HIDDEN, IN, OUT, int8_mlp, mlp  # noqa: F401


def test_parameters_and_nonzero_by_hand():
    model = mlp()
    assert count_parameters(model) == IN * HIDDEN + HIDDEN + HIDDEN * OUT + OUT == 283
    with torch.no_grad():
        model[0].weight[:, :5] = 0  # 100 weights
        model[2].bias.zero_()  # 3 biases
    assert count_nonzero(model) == 283 - 100 - 3
    assert weight_sparsity(model) == pytest.approx(100 / (IN * HIDDEN + HIDDEN * OUT))


@pytest.mark.parametrize("batch", [1, 7])
def test_flops_and_macs_by_hand(batch):
    model = mlp()
    x = torch.randn(batch, IN)
    macs = batch * (IN * HIDDEN + HIDDEN * OUT)  # 260 per sample
    assert count_flops(model, x) == 2 * macs
    assert count_layer_macs(model, x) == macs
    with torch.no_grad():
        model[0].weight[:, :5] = 0
    assert count_layer_macs(model, x, nonzero=True) == batch * (IN * HIDDEN - 100 + HIDDEN * OUT)


def test_conv_macs_by_hand():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    x = torch.randn(2, 3, 5, 5)
    macs = 2 * (4 * 3 * 3 * 3 * 5 * 5 + 4 * 5 * 5 * 2)
    assert count_layer_macs(conv, x) == macs
    assert count_flops(conv, x) == 2 * macs


def test_int8_model_counts_match_float():
    model = mlp()
    with torch.no_grad():
        model[0].weight[:, :5] = 0
    q = int8_mlp(model)
    assert is_quantized(q) and not is_quantized(model) and not is_fake_quantized(q)
    assert count_parameters(q) == 283
    assert count_nonzero(q) <= count_nonzero(model) and count_nonzero(q) >= 283 - 100 - 20
    x = torch.randn(4, IN)
    assert count_flops(q, x) == 0  # int8 kernels are invisible to torch.utils.flop_counter ...
    assert count_layer_macs(q, x) == 4 * 260  # ... the layer hooks see them
    assert state_dict_size_bytes(q) < state_dict_size_bytes(model) + 4096


def test_latency_fields():
    result = measure_latency(mlp(), torch.randn(8, IN), repeats=3, warmup=1, threads=1)
    assert result["runs"] == 3 and result["threads"] == 1 and result["batch_size"] == 8
    assert 0 <= result["min_ms"] <= result["median_ms"]


def test_latency_times_a_fresh_copy_of_modules_only():
    from lightning_optim.functional.compression_report.measure import fresh_for_timing

    model = mlp().eval()
    q = int8_mlp(model)
    x = torch.randn(4, IN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for original in (model, q):  # int8: the copy repacks the weights (no per-shape kernel cache)
            copied = fresh_for_timing(original)
            assert copied is not original
            assert torch.equal(copied(x), original(x))
    fn = lambda t: model(t)  # noqa: E731
    assert fresh_for_timing(fn) is fn

    class Uncopyable(nn.Linear):
        def __deepcopy__(self, memo):
            raise RuntimeError("no")

    odd = Uncopyable(2, 2)
    assert fresh_for_timing(odd) is odd


def test_measure_model_figures_by_hand():
    model = mlp()
    with torch.no_grad():
        model[0].weight[:, :5] = 0
    data = batches()
    row = measure_model(
        model,
        data[0][0],
        stage="pruned",
        batches=data,
        latency_batch_sizes=(1, 4),
        latency_repeats=2,
        latency_warmup=0,
        threads=1,
    )
    assert row["stage"] == "pruned" and row["precision"] == "fp32"
    assert row["parameters"] == 283 and row["nonzero"] == 183
    assert row["flops"] == 2 * 260 and row["macs"] == 260  # per sample
    assert row["nonzero_macs"] == 260 - 100
    assert row["flops_source"] == "torch.utils.flop_counter"
    assert row["latency_ms_b1"] >= 0 and row["latency_ms_b4"] >= 0 and row["threads"] == 1
    assert 0 < row["artifact_bytes"] and row["state_dict_bytes"] > 283 * 4
    # test metrics equal a direct computation
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    logits = model(x)
    assert row["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert row["test_loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert row["test_samples"] == 48
    assert model.training  # the caller's model is left as it was


def test_precision_of_each_kind():
    model = mlp()
    assert precision_of(model) == "fp32" and precision_of(mlp().to(torch.bfloat16)) == "bf16"
    assert precision_of(int8_mlp(model)) == "int8"


def test_cpu_latency_side_by_side_picks_the_fastest_fp32_form():
    model = mlp().eval()
    q = int8_mlp(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = measure_cpu_latency(
            model,
            q,
            (IN,),
            batch_sizes=(1, 4),
            repeats=2,
            rounds=1,
            best_effort=(),
            threads=1,
            extra={"twice": lambda t: model(t) * 2},
        )
    assert set(result) == {1, 4}
    for row in result.values():
        assert {"fp32_eager", "int8", "twice", "fp32_best", "fp32_best_method"} <= set(row)
        assert row["fp32_best_method"] == "eager" and row["fp32_best"] == row["fp32_eager"] > 0


def test_measure_model_reports_each_step_to_a_progress_callback():
    steps: list[str] = []
    row = measure_model(
        mlp(),
        torch.randn(4, IN),
        batches=batches(1),
        latency_batch_sizes=(1, 4),
        latency_repeats=1,
        latency_warmup=0,
        progress=steps.append,
    )
    assert steps == [
        "counting weights",
        "compact artifact (exported_program)",
        "FLOPs",
        "latency b=1",
        "latency b=4",
        "test accuracy",
    ]
    assert row["artifact_format"] == "exported_program"


def test_measurement_imports_no_torchao_of_its_own():
    """torchao's import logs a deprecation notice: a float model's row must not be the one that imports it."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from lightning_optim.functional.compression_report.measure import measure_model\n"
        "from tests.nets import mlp\n"
        "measure_model(mlp(), torch.randn(2, 10), latency_batch_sizes=(1,), latency_repeats=1)\n"
        "print('torchao' in sys.modules)\n"
    )
    from tests.functional.compression_report.test_deploy import REPO

    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"] and "register_constant" not in out.stderr, out.stderr[-2000:]
