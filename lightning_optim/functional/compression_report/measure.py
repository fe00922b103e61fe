"""Measurements of a model: parameters, non-zeros, serialized size, FLOPs and CPU latency.

Pure functions (no Lightning import), shared by the compression report and the benchmarks.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def quantized_weights(model: nn.Module) -> list[tuple[str, Tensor, Tensor | None]]:
    """``(module name, int8 weight, float bias)`` of every quantized module with packed weights
    (``torch.ao.nn.quantized`` Linear/Conv, whose weights are not ``parameters()``)."""
    found = []
    for name, module in model.named_modules():
        weight_fn = getattr(module, "weight", None)
        if not callable(weight_fn) or isinstance(weight_fn, (Tensor, nn.Module)):
            continue
        try:
            w = weight_fn()
        except Exception:  # noqa: BLE001 - not a packed quantized module
            continue
        if isinstance(w, Tensor) and w.is_quantized:
            bias_fn = getattr(module, "bias", None)
            b = bias_fn() if callable(bias_fn) and not isinstance(bias_fn, (Tensor, nn.Module)) else None
            found.append((name, w, b if isinstance(b, Tensor) else None))
    return found


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds converted (int8) modules."""
    return bool(quantized_weights(model))


def is_fake_quantized(model: nn.Module) -> bool:
    """Whether ``model`` is prepared for quantization-aware training (holds fake-quantize modules)."""
    from torch.ao.quantization import FakeQuantizeBase

    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries (shared parameters counted once), packed int8 weights and biases included;
    with ``trainable_only`` only parameters that require gradients (packed int8 weights never do)."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique if p.requires_grad or not trainable_only)
    if trainable_only:
        return total
    for _, w, b in quantized_weights(model):
        total += w.numel() + (b.numel() if b is not None else 0)
    return total


def count_nonzero(model: nn.Module, include_buffers: bool = False) -> int:
    """Number of non-zero parameter entries; quantized modules' packed int8 weights (entries different from
    the zero point) and biases are counted too."""
    total = 0
    with torch.no_grad():
        for p in {id(p): p for p in model.parameters()}.values():
            total += int(torch.count_nonzero(p))
        for _, w, b in quantized_weights(model):
            total += int(torch.count_nonzero(w.dequantize()))
            if b is not None:
                total += int(torch.count_nonzero(b))
        if include_buffers:
            for b in model.buffers():
                if b.is_floating_point():
                    total += int(torch.count_nonzero(b))
    return total


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries among the weights of Linear/Conv layers (float or int8), biases excluded."""
    total = zeros = 0
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(w, Tensor):
                total += w.numel()
                zeros += w.numel() - int(torch.count_nonzero(w))
        for _, w, _ in quantized_weights(model):
            total += w.numel()
            zeros += w.numel() - int(torch.count_nonzero(w.dequantize()))
    return zeros / total if total else 0.0


def serialized_size_bytes(obj: Any) -> int:
    """Bytes of ``torch.save(obj)`` (pass ``model.state_dict()`` for a state dict's size)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def state_dict_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's serialized ``state_dict``."""
    return serialized_size_bytes(model.state_dict())


def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """Floating-point operations of one forward pass, counted by ``torch.utils.flop_counter``.

    A multiply-accumulate counts as 2 FLOPs (MACs = FLOPs / 2). The counter does not see int8 kernels
    (``quantized::linear``/``conv2d``): for a converted model it returns 0; see :func:`count_layer_macs`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_layer_macs(model: nn.Module, example_input: Tensor, nonzero: bool = False) -> int:
    """Multiply-accumulates of the Linear and convolution layers (float, fake-quantized or int8) in one
    forward pass, from forward hooks: each weight entry is used once per output position.

    Args:
        model: the model.
        example_input: the input batch.
        nonzero: count only the non-zero weights (the work a sparse kernel would do, as in Han et al.).
    """
    total = 0
    packed = {name: w for name, w, _ in quantized_weights(model)}

    def hook(module: nn.Module, _inputs: Any, output: Any, name: str) -> None:
        nonlocal total
        w = packed.get(name)
        if w is None:
            w = module.weight
        w = w.dequantize() if w.is_quantized else w
        used = int(torch.count_nonzero(w)) if nonzero else w.numel()
        out = output.dequantize() if isinstance(output, Tensor) and output.is_quantized else output
        if isinstance(module, nn.modules.conv._ConvNd) or type(module).__name__.startswith("Conv"):
            positions = out.shape[0] * math.prod(out.shape[2:])  # batch x spatial
            if "Transpose" in type(module).__name__:
                inp = _inputs[0].dequantize() if _inputs[0].is_quantized else _inputs[0]
                positions = inp.shape[0] * math.prod(inp.shape[2:])
        else:
            positions = out.numel() // out.shape[-1]
        total += used * positions

    handles = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name in packed or (
            isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(weight, Tensor)
        ):
            handles.append(module.register_forward_hook(functools.partial(hook, name=name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


@contextmanager
def num_threads(threads: int | None):
    """Temporarily set ``torch``'s intra-op thread count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(
    model: nn.Module | Callable[[Tensor], Any],
    example_input: Tensor,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    min_time_s: float = 0.0,
    fresh_copy: bool = True,
) -> dict[str, float]:
    """CPU latency of ``model(example_input)`` under ``torch.inference_mode``.

    With ``fresh_copy`` (the default), a module is timed as a deep copy of itself, as a model served at one
    batch size is: the x86 (oneDNN) int8 convolution caches its kernel plan for the first input shape it
    sees, so a model first run at another batch size (an evaluation at batch 1000, say) is up to 1.4x
    slower at batch 1 than a copy whose first call is at batch 1 (measured on LeNet-5). Copying repacks the
    weights and clears that cache. Compiled modules (``torch.compile``) are not copied. The copy holds a
    second set of the weights for the measurement: for a model that does not fit in memory twice, pass
    ``fresh_copy=False`` (and call it first at the batch size to be timed).

    Args:
        model: a module (put in eval mode) or any callable.
        example_input: the input batch.
        repeats: timed runs (at least; more while ``min_time_s`` is not reached).
        warmup: untimed runs first.
        threads: intra-op threads for the measurement (``None`` keeps the current setting).
        min_time_s: keep timing until this much time has been spent.
        fresh_copy: time a deep copy of ``model`` (see above); callables that are not modules as they are.

    Returns:
        ``median_ms``, ``mean_ms``, ``min_ms``, ``p90_ms``, ``runs``, ``threads`` and ``batch_size``.
    """
    if fresh_copy:
        model = fresh_for_timing(model)
    if isinstance(model, nn.Module):
        model.eval()
    times: list[float] = []
    with num_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(example_input)
        start_all = time.perf_counter()
        while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
            start = time.perf_counter()
            model(example_input)
            times.append((time.perf_counter() - start) * 1e3)
        used_threads = torch.get_num_threads()
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered),
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "runs": float(len(ordered)),
        "threads": float(used_threads),
        "batch_size": float(example_input.shape[0]) if hasattr(example_input, "shape") else 1.0,
    }


def fresh_for_timing(model: Any) -> Any:
    """A deep copy of ``model`` with no per-shape kernel caches (see :func:`measure_latency`); compiled
    modules and plain callables are returned as they are."""
    if not isinstance(model, nn.Module) or type(model).__name__ == "OptimizedModule":
        return model
    try:
        return copy.deepcopy(model)
    except Exception:  # a module that cannot be copied is timed as it is
        return model


def compare_latency(
    models: dict[str, nn.Module | Callable[[Tensor], Any]],
    example_input: Tensor,
    repeats: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Latency of several models measured side by side: ``rounds`` interleaved rounds, median of all runs.

    Interleaving makes the ratios robust to load that changes during the measurement.
    """
    samples: dict[str, list[float]] = {name: [] for name in models}
    copies = {name: fresh_for_timing(model) for name, model in models.items()}  # see measure_latency
    for _ in range(rounds):
        for name, model in copies.items():
            result = measure_latency(
                model, example_input, repeats=repeats, warmup=warmup, threads=threads, fresh_copy=False
            )
            samples[name].append(result["median_ms"])
    return {
        name: {"median_ms": statistics.median(values), "min_ms": min(values), "rounds": float(len(values))}
        for name, values in samples.items()
    }
