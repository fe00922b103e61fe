"""What a model measures: parameters, non-zeros, serialized size, FLOPs, CPU latency, and one report row.

Pure functions (no Lightning import), shared by the compression report, the quantization report and the
benchmarks:

- counters: :func:`count_parameters`, :func:`count_nonzero`, :func:`weight_sparsity`,
  :func:`state_dict_size_bytes`, :func:`count_flops`, :func:`count_layer_macs`;
- latency, the one timing path: :func:`measure_latency` (one model), :func:`compare_latency` (several,
  interleaved) and :func:`measure_cpu_latency` (fp32 eager, its fastest best-effort variant and int8, per
  batch size), all timing a fresh copy (:func:`fresh_for_timing`) under :func:`num_threads`;
- :func:`measure_model`: one row of the compression report (the counters, the artifact's size, latency and,
  given batches, :func:`~lightning_optim.functional.compression_report.evaluate.evaluate_classifier`).

Nothing here warns about the machine it runs on: ``torch.compile`` on the CPU (the int8 latency of a PT2E model)
imports ``torch.utils.cpp_extension``, whose import logs "No CUDA runtime is found, using CUDA_HOME=..." on a
machine with a CUDA toolkit and no GPU; :func:`quiet_cpu_compiler_import` imports it first with that one
module's logger raised to ERROR for the import (a CPU measurement needs no CUDA), and PT2E/torchao is only
looked at when torchao is already imported (its import logs a deprecation notice of its own).
"""

from __future__ import annotations

import copy
import functools
import io
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.functional.compression_report.deploy import pack_model_artifact, resolve_artifact_format
from lightning_optim.functional.compression_report.evaluate import evaluate_classifier

#: ways to make the fp32 model faster on the CPU that :func:`measure_cpu_latency` tries ("best effort")
FP32_BEST_EFFORT: tuple[str, ...] = ("channels_last", "compile")


def _pt2e_int8_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The converted PT2E models (``Pt2eModule`` of kind ``"int8"``) inside ``model``."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if getattr(m, "kind", None) == "int8" and isinstance(getattr(m, "graph_module", None), nn.Module)
    ]


def _pt2e_captured_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The PT2E-captured networks prepared for QAT or observed for PTQ (``Pt2eModule`` of kind ``"qat"``/``"ptq"``)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if getattr(m, "kind", None) in ("qat", "ptq")
        and isinstance(getattr(m, "graph_module", None), nn.Module)
    ]


def is_pt2e_int8(model: nn.Module) -> bool:
    """Whether ``model`` is (or holds) a converted PT2E int8 model."""
    return bool(_pt2e_int8_modules(model))


def _values(w: Tensor) -> Tensor:
    return w.dequantize() if w.is_quantized else w


def quantized_weights(model: nn.Module) -> list[tuple[str, Tensor, Tensor | None]]:
    """``(module name, int8 weight, float bias)`` of every quantized module with packed weights
    (``torch.ao.nn.quantized`` Linear/Conv, whose weights are not ``parameters()``), and the int8 weight
    constants of converted PT2E models (plain ``torch.int8`` buffers of 2 or more dimensions, their float biases
    being parameters)."""
    found: list[tuple[str, Tensor, Tensor | None]] = []
    for prefix, module in _pt2e_int8_modules(model):
        for name, buf in module.named_buffers():
            if buf.dtype == torch.int8 and buf.dim() >= 2:
                found.append((f"{prefix}.{name}" if prefix else name, buf, None))
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
    """Whether ``model`` is prepared for quantization-aware training (holds fake-quantize modules, eager or
    PT2E)."""
    from torch.ao.quantization import FakeQuantizeBase

    kinds: tuple[type, ...] = (FakeQuantizeBase,)
    if (
        "torchao" in sys.modules
    ):  # a PT2E fake-quantized model is made of torchao's classes: torchao is loaded
        try:
            from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase as AoFakeQuantizeBase

            kinds = (FakeQuantizeBase, AoFakeQuantizeBase)
        except ImportError:  # pragma: no cover - another torchao layout
            pass
    return any(isinstance(m, kinds) for m in model.modules())


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
            total += int(torch.count_nonzero(_values(w)))
            if b is not None:
                total += int(torch.count_nonzero(b))
        if include_buffers:
            for b in model.buffers():
                if b.is_floating_point():
                    total += int(torch.count_nonzero(b))
    return total


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries among the weights of Linear/Conv layers (float or int8), biases excluded.

    Sharded (``DTensor``) weights are counted on each rank's shard and summed over the ranks: a collective,
    so every rank calls it on a sharded network."""
    from lightning_optim.functional.sharding import sharded_zero_count

    with torch.no_grad():
        # sharded (FSDP2) weights are counted on each rank's shard and summed over the ranks (a collective)
        zeros, total = sharded_zero_count(
            w
            for module in model.modules()
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
            and isinstance(w := getattr(module, "weight", None), Tensor)
        )
        for _, w, _ in quantized_weights(model):
            total += w.numel()
            zeros += w.numel() - int(torch.count_nonzero(_values(w)))
        # a network captured for PT2E QAT/PTQ: no layer modules, its weights are the graph's parameters
        for _, module in _pt2e_captured_modules(model):
            for name, w in module.named_parameters():
                if name.endswith(".weight") and w.dim() >= 2:
                    total += w.numel()
                    zeros += w.numel() - int(torch.count_nonzero(w))
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


def quiet_cpu_compiler_import() -> None:
    """:func:`lightning_optim.functional.quantization._quiet.quiet_cpu_compiler_import` (imported on use: the
    quantization package imports this module)."""
    from lightning_optim.functional.quantization._quiet import quiet_cpu_compiler_import as quiet

    quiet()


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


def fp32_variants(
    model: nn.Module, example: Tensor, methods: Sequence[str] = FP32_BEST_EFFORT
) -> dict[str, Callable[[Tensor], Any]]:
    """Faster CPU forms of the float ``model`` to time beside it, by name: ``"channels_last"`` (a copy in the
    channels-last memory format, for 4-D inputs) and ``"compile"`` (``torch.compile`` of a copy, compiled
    on ``example`` here, outside any timing; left out where no compiler is available)."""
    variants: dict[str, Callable[[Tensor], Any]] = {}
    if "channels_last" in methods and example.dim() == 4:
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
        variants["channels_last"] = lambda x, m=cl: m(x.contiguous(memory_format=torch.channels_last))
    if "compile" in methods:
        quiet_cpu_compiler_import()
        compiled = torch.compile(copy.deepcopy(model).eval())
        try:
            with torch.inference_mode():
                compiled(example)  # compile outside the timing
            variants["compile"] = compiled
        except Exception:  # noqa: BLE001 - torch.compile unavailable (no compiler): best effort only
            pass
    return variants


def measure_cpu_latency(
    fp32_model: nn.Module,
    int8_model: Callable[[Tensor], Any],
    input_shape: tuple[int, ...],
    batch_sizes: Iterable[int] = (1, 256),
    repeats: int = 20,
    rounds: int = 3,
    best_effort: tuple[str, ...] = FP32_BEST_EFFORT,
    threads: int | None = None,
    extra: dict[str, Callable[[Tensor], Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Median CPU latency (ms) of fp32 eager, the fastest fp32 ``best_effort`` variant and int8, interleaved
    (:func:`compare_latency`, 3 warm-up runs) on random inputs of each batch size.

    Args:
        fp32_model: the float model (copied; moved to the CPU).
        int8_model: the converted model.
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``.
        batch_sizes: batch sizes to time.
        repeats: timed runs per round; rounds: interleaved rounds (median over rounds).
        best_effort: fp32 variants to try (:func:`fp32_variants`); the fastest is reported.
        threads: intra-op threads (``None`` keeps torch's setting).
        extra: more callables to time side by side (reported under their names).

    Returns:
        batch size -> ``{"fp32_eager": ms, "fp32_<variant>": ms, ..., "int8": ms, "fp32_best": ms,
        "fp32_best_method": name}``.
    """
    fp32 = copy.deepcopy(fp32_model).cpu().eval()
    results: dict[int, dict[str, Any]] = {}
    for bs in batch_sizes:
        x = torch.randn(bs, *input_shape)
        models: dict[str, Callable[[Tensor], Any]] = {"fp32_eager": fp32}
        models.update({f"fp32_{k}": v for k, v in fp32_variants(fp32, x, best_effort).items()})
        models["int8"] = int8_model
        models.update(extra or {})
        timed = compare_latency(models, x, repeats=repeats, warmup=3, rounds=rounds, threads=threads)
        row: dict[str, Any] = {name: r["median_ms"] for name, r in timed.items()}
        candidates = {k: v for k, v in row.items() if k.startswith("fp32_")}
        best = min(candidates, key=candidates.get)
        row["fp32_best"] = candidates[best]
        row["fp32_best_method"] = best.removeprefix("fp32_")
        results[bs] = row
    return results


# ------------------------------------------------------------------------------------------ one report row
def precision_of(model: nn.Module) -> str:
    """``"int8"`` (converted), ``"fake-quant"`` (prepared for QAT) or the dtype of the first float parameter."""
    if is_quantized(model):
        return "int8"
    if is_fake_quantized(model):
        return "fake-quant"
    for p in model.parameters():
        if p.is_floating_point():
            return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
                p.dtype, str(p.dtype)
            )
    return "fp32"


def batch_of(example_input: Tensor, batch_size: int) -> Tensor:
    """A batch of ``batch_size`` made by repeating the samples of ``example_input``."""
    reps = math.ceil(batch_size / example_input.shape[0])
    return example_input.repeat(reps, *([1] * (example_input.dim() - 1)))[:batch_size].contiguous()


def measure_model(
    model: nn.Module,
    example_input: Tensor,
    stage: str = "model",
    batches: Iterable[Any] | None = None,
    prepare: Callable[[Any], tuple[Tensor, Tensor]] | None = None,
    max_batches: int | None = None,
    latency_batch_sizes: Sequence[int] = (1, 256),
    latency_repeats: int = 20,
    latency_warmup: int = 3,
    threads: int | None = None,
    artifact: bool = True,
    artifact_format: str = "exported_program",
    copy_model: bool = True,
    progress: Callable[[str], None] | None = None,
    artifact_torchscript: bool | None = None,
) -> dict[str, Any]:
    """Measure one model; see the module docstring. The model is measured on the CPU, on a copy.

    Args:
        model: the model (float, pruned, fake-quantized or int8).
        example_input: an input batch (the first sample is repeated for the latency batches).
        stage: the row's label.
        batches: test batches for :func:`~lightning_optim.functional.compression_report.evaluate.evaluate_classifier` (``None`` skips the test metrics).
        prepare: see :func:`evaluate_classifier`.
        max_batches: at most this many test batches.
        latency_batch_sizes: batch sizes timed (median of ``latency_repeats`` runs after
            ``latency_warmup``); a fake-quantized model is not timed (its latency means nothing).
        latency_repeats: timed runs per batch size.
        latency_warmup: untimed runs first.
        threads: intra-op threads for the latency (``None``: torch's current setting, stated in the row).
        artifact: also pack the compact artifact and report its size.
        artifact_format: what the artifact holds (:func:`~lightning_optim.functional.compression_report.deploy.pack_model_artifact`):
            ``"exported_program"`` (default; self-contained, torch alone loads it; the state dict with a
            warning when ``torch.export`` cannot capture the model), ``"state_dict"`` or ``"torchscript"``.
        copy_model: measure a deep copy (observers, BN statistics and train/eval mode of ``model`` untouched).
        progress: called with a short description before each step (``"compact artifact"``, ``"latency b=1"``,
            ...), e.g. to label a progress bar.
        artifact_torchscript: deprecated alias (``True``: ``artifact_format="torchscript"``, ``False``:
            ``"state_dict"``), with a :class:`FutureWarning`.

    Returns:
        A row: ``stage``, ``precision``, ``parameters``, ``nonzero``, ``weight_sparsity``,
        ``state_dict_bytes``, ``artifact_bytes``, ``artifact_format`` (what was written; ``artifact_note``
        says why when it is not the format asked for), ``flops`` (+ ``flops_source``), ``macs``, ``nonzero_macs``,
        ``mflops``, ``nonzero_mflops``, ``latency_ms_b<N>`` per batch size, ``threads``, ``latency_repeats``,
        ``latency_warmup`` and, with ``batches``, the test metrics.
    """
    artifact_format = resolve_artifact_format(artifact_format, artifact_torchscript)

    def step(what: str) -> None:
        if progress is not None:
            progress(what)

    if copy_model:
        try:
            model = copy.deepcopy(model)
        except Exception:  # noqa: BLE001 - measure the model itself, restoring its mode afterwards
            pass
    was_training = model.training
    model = model.cpu().eval()
    example_input = example_input.detach().cpu()
    x1 = example_input[:1]
    precision = precision_of(model)
    row: dict[str, Any] = {"stage": stage, "precision": precision}
    try:
        step("counting weights")
        row["parameters"] = count_parameters(model)
        row["nonzero"] = count_nonzero(model)
        row["sparsity"] = 1.0 - row["nonzero"] / row["parameters"] if row["parameters"] else 0.0
        row["weight_sparsity"] = weight_sparsity(model)
        row["state_dict_bytes"] = state_dict_size_bytes(model)
        if artifact and precision != "fake-quant":
            step(f"compact artifact ({artifact_format})")
            blob, written, note = pack_model_artifact(model, x1, artifact_format)
            row["artifact_bytes"] = len(blob)
            row["artifact_format"] = written
            if note:
                row["artifact_note"] = note
        step("FLOPs")
        flops = count_flops(model, x1)
        macs = count_layer_macs(model, x1)
        pt2e_int8 = is_pt2e_int8(model)
        if flops == 0 and macs > 0:  # int8 kernels are invisible to the flop counter
            flops, row["flops_source"] = 2 * macs, "layer hooks (int8 kernels)"
        else:
            # a PT2E int8 graph computes its convolutions on dequantized weights in the reference graph: counted
            row["flops_source"] = "torch.utils.flop_counter"
        row["flops"] = flops
        row["macs"] = flops // 2
        # PT2E int8: no layer modules to hook; its int8 kernels compute every MAC (dense). A captured QAT/PTQ graph:
        # no layer modules either, so no per-layer count ("-" in the table, not a false 0)
        if pt2e_int8:
            row["nonzero_macs"] = row["macs"]
        elif _pt2e_captured_modules(model):
            row["nonzero_macs"] = None
        else:
            row["nonzero_macs"] = count_layer_macs(model, x1, nonzero=True)
        row["mflops"] = flops / 1e6
        row["nonzero_mflops"] = None if row["nonzero_macs"] is None else 2 * row["nonzero_macs"] / 1e6
        timed = model
        if pt2e_int8 and latency_batch_sizes:
            from lightning_optim.functional.quantization.pt2e import lower

            # the way a PT2E int8 model runs: compiled to int8 kernels (uncompiled it is a float reference)
            step("int8 compile (torch.compile)")
            quiet_cpu_compiler_import()
            timed = lower(model, batch_of(example_input, 2))
            row["latency_note"] = "int8: torch.compile (inductor)"
        if precision != "fake-quant":
            for bs in latency_batch_sizes:
                step(f"latency b={bs}")
                result = measure_latency(
                    timed,
                    batch_of(example_input, bs),
                    repeats=latency_repeats,
                    warmup=latency_warmup,
                    threads=threads,
                )
                row[f"latency_ms_b{bs}"] = result["median_ms"]
                row[f"latency_min_ms_b{bs}"] = result["min_ms"]  # less sensitive to a shared CPU
                row["threads"] = int(result["threads"])
        row["latency_repeats"] = latency_repeats
        row["latency_warmup"] = latency_warmup
        if batches is not None:
            step("test accuracy")
            row.update(evaluate_classifier(model, batches, prepare=prepare, max_batches=max_batches))
    finally:
        model.train(was_training)
    return row
