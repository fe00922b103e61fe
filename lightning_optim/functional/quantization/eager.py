"""The eager-mode ``torch.ao.quantization`` backend (``"eager"``; engines ``x86``, ``fbgemm``) with TorchScript export.

Why this stack (measured on the project machine, torch 2.14.1, see ``benchmarks/results/quantization.md``):
eager QAT -> convert runs end to end for every model of our zoo, the converted model runs with a dynamic
batch size, is scriptable, and its TorchScript file loads with ``torch`` alone. PT2E (torchao) needs a
static batch size for its fastest path and keeps fp32 weights in its state dict; torchao is not a
dependency. The ``x86`` engine picks oneDNN or FBGEMM kernels per op; ``fbgemm`` forces FBGEMM, which was
slower for convolutions (kept for comparison).

How the model is prepared, in place: fusable chains are fused (:mod:`.fusion`), a ``QuantStub`` and a
``DeQuantStub`` are added as children ``quant_stub``/``dequant_stub`` of the model and called by a forward
pre-hook and a forward hook (so the model keeps its identity and its parameter names, and the optimizer its
parameters), then ``prepare_qat`` swaps in fake-quantized modules that share the float ``nn.Parameter``
objects. Activation fake quantization runs in float32 whatever the autocast dtype (the fused fake-quant
kernel rejects bfloat16), so ``bf16-mixed`` training stays sound.
"""

from __future__ import annotations

import copy
import io
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.functional.quantization._quiet import quiet_quantization_warnings
from lightning_optim.functional.quantization.backend import (
    QuantizationBackend,
    QuantizationError,
    register_backend,
)
from lightning_optim.functional.quantization.fusion import FusionPlan, find_fusion_groups, quantizable_layers

with quiet_quantization_warnings():
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.quantization as tq
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase, FusedMovingAvgObsFakeQuantize

#: said (once per process, Python's default for a warning from one place) when the eager stack is used
EAGER_DEPRECATION = (
    "lightning-optim backend='eager' runs torch's eager torch.ao.quantization and exports TorchScript, both "
    "deprecated by torch (to be removed); backend='pt2e' (torch.export + torchao) is the maintained stack and "
    "the one backend='auto' (the callbacks' default) picks where it can quantize the model."
)

QUANT_STUB = "quant_stub"
DEQUANT_STUB = "dequant_stub"


class Float32FakeQuantize(FusedMovingAvgObsFakeQuantize):
    """``FusedMovingAvgObsFakeQuantize`` that computes in float32 for half/bfloat16 inputs (autocast)."""

    def forward(self, X: Tensor) -> Tensor:
        if X.dtype in (torch.bfloat16, torch.float16):
            X = X.float()
        return super().forward(X)


@contextmanager
def int8_determinism_tolerant() -> Iterator[None]:
    """Let int8 CPU kernels run under ``torch.use_deterministic_algorithms(True)`` (``Trainer(deterministic=True)``).

    The quantized kernels are flagged non-deterministic only because ``quantized_resize_cpu_`` may leave
    memory uninitialized before it is overwritten; their results do not vary from run to run. Inside the
    block, strict determinism becomes ``warn_only`` for these kernels and the notice is silenced.
    """
    if (
        not torch.are_deterministic_algorithms_enabled()
        or torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        yield
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have a deterministic implementation.*")
            yield
    finally:
        torch.use_deterministic_algorithms(True)


class Int8Model(tq.QuantWrapper):
    """The converted model: quantize the float input, run the int8 network, dequantize the output.

    A ``QuantWrapper`` (children ``quant``, ``module``, ``dequant``) that also runs under Lightning's
    ``deterministic=True`` (see :func:`int8_determinism_tolerant`). Scriptable; the TorchScript file needs
    only ``torch`` to load.
    """

    def forward(self, X: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self.dequant(self.module(self.quant(X)))
        return self._forward_eager(X)

    @torch.jit.unused
    def _forward_eager(self, X: Tensor) -> Tensor:
        with int8_determinism_tolerant():
            return self.dequant(self.module(self.quant(X)))


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the model's first input goes through its ``quant_stub``."""
    return (getattr(module, QUANT_STUB)(args[0]), *args[1:])


def _dequantize_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook: the model's output goes through its ``dequant_stub``."""
    return getattr(module, DEQUANT_STUB)(output)


def _remove_stub_hooks(model: nn.Module) -> None:
    for key, fn in list(model._forward_pre_hooks.items()):
        if fn is _quantize_input:
            del model._forward_pre_hooks[key]
    for key, fn in list(model._forward_hooks.items()):
        if fn is _dequantize_output:
            del model._forward_hooks[key]


def _check_plain_weights(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if hasattr(module, "weight_orig") or hasattr(module, "parametrizations"):
            raise QuantizationError(
                f"Module {name or type(model).__name__!r} has a weight reparametrization (torch.nn.utils.prune or "
                "parametrize). Make it permanent first (torch.nn.utils.prune.remove / "
                "torch.nn.utils.parametrize.remove_parametrizations); ProgressivePruning leaves plain weights."
            )


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def compact_torchscript(archive: bytes) -> bytes:
    """A TorchScript archive without its debug source ranges (``*.debug_pkl``), deflate-compressed.

    ``torch.jit.load`` reads it as it is: the debug records are optional (they only map errors back to
    Python source lines) and the archive reader inflates deflated records.
    """
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for info in source.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            target.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


class EagerBackend(QuantizationBackend):
    """Eager-mode ``torch.ao.quantization`` on a CPU quantized engine, exported as TorchScript.

    Args:
        engine: the quantized engine and qconfig family, ``"x86"`` (default, fastest here) or ``"fbgemm"``.
        compact_export: write the TorchScript file without debug source ranges and deflate-compressed
            (:func:`compact_torchscript`; ``torch.jit.load`` reads it as usual).
    """

    name = "eager"
    engines = ("x86", "fbgemm")
    file_format = "torchscript"
    prepared_marker = QUANT_STUB

    def __init__(self, engine: str = "x86", compact_export: bool = True) -> None:
        if engine not in torch.backends.quantized.supported_engines:
            raise ValueError(
                f"Quantized engine {engine!r} is not supported by this torch build; "
                f"supported: {torch.backends.quantized.supported_engines}."
            )
        self.engine = engine
        self.compact_export = compact_export
        warnings.warn(EAGER_DEPRECATION, FutureWarning, stacklevel=2)

    def int8_context(self) -> AbstractContextManager[None]:
        """Int8 CPU kernels under ``Trainer(deterministic=True)``: :func:`int8_determinism_tolerant`."""
        return int8_determinism_tolerant()

    # ----------------------------------------------------------------------------------- qconfigs
    def qat_qconfig(self) -> tq.QConfig:
        with quiet_quantization_warnings():
            base = tq.get_default_qat_qconfig(self.engine)
        return tq.QConfig(
            activation=Float32FakeQuantize.with_args(**base.activation.p.keywords),
            weight=Float32FakeQuantize.with_args(**base.weight.p.keywords),
        )

    def ptq_qconfig(self) -> tq.QConfig:
        with quiet_quantization_warnings():
            return tq.get_default_qconfig(self.engine)

    @contextmanager
    def _use_engine(self) -> Iterator[None]:
        """The quantized engine packs the int8 weights at conversion; the packed weights keep their kernels."""
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous

    # ----------------------------------------------------------------------------------- prepare
    def _check_model(self, model: nn.Module) -> None:
        if self.is_prepared(model):
            raise QuantizationError(f"{type(model).__name__} is already prepared for quantization.")
        if not quantizable_layers(model):
            raise QuantizationError(
                f"{type(model).__name__} has no quantizable layer (nn.Conv1d/2d/3d or nn.Linear): nothing to quantize."
            )
        _check_plain_weights(model)

    def _add_stubs(self, model: nn.Module, qconfig: tq.QConfig) -> None:
        device = _device_of(model)
        model.add_module(QUANT_STUB, tq.QuantStub(qconfig).to(device))
        model.add_module(DEQUANT_STUB, tq.DeQuantStub(qconfig).to(device))
        model.register_forward_pre_hook(_quantize_input)
        model.register_forward_hook(_dequantize_output)

    def prepare_qat(self, model: nn.Module, fuse: bool = True) -> FusionPlan:
        self._check_model(model)
        plan = (
            find_fusion_groups(model, qat=True)
            if fuse
            else FusionPlan(traced=False, trace_error="fusion disabled")
        )
        was_training = model.training
        model.train()
        device = _device_of(model)
        qconfig = self.qat_qconfig()
        with quiet_quantization_warnings(), self._use_engine():
            if plan.groups:
                tq.fuse_modules_qat(model, [list(g) for g in plan.groups], inplace=True)
            model.qconfig = qconfig
            self._add_stubs(model, qconfig)
            tq.prepare_qat(model, inplace=True)
        model.to(device)
        model.train(was_training)
        return plan

    def is_prepared(self, model: nn.Module) -> bool:
        return isinstance(getattr(model, QUANT_STUB, None), nn.Module)

    def freeze_observers(self, model: nn.Module) -> None:
        with quiet_quantization_warnings():
            model.apply(tq.disable_observer)

    def freeze_bn_stats(self, model: nn.Module) -> None:
        model.apply(nniqat.freeze_bn_stats)

    def set_fake_quant(self, model: nn.Module, enabled: bool) -> None:
        with quiet_quantization_warnings():
            model.apply(tq.enable_fake_quant if enabled else tq.disable_fake_quant)

    def observers_enabled(self, model: nn.Module) -> bool:
        """Whether any fake-quant module of ``model`` still updates its range."""
        return any(bool(m.observer_enabled[0]) for m in model.modules() if isinstance(m, FakeQuantizeBase))

    def prepare_ptq(self, model: nn.Module, fuse: bool = True) -> tuple[nn.Module, FusionPlan]:
        self._check_model(model)
        observed = copy.deepcopy(model).cpu().eval()
        plan = (
            find_fusion_groups(observed) if fuse else FusionPlan(traced=False, trace_error="fusion disabled")
        )
        qconfig = self.ptq_qconfig()
        with quiet_quantization_warnings(), self._use_engine():
            if plan.groups:
                tq.fuse_modules(observed, [list(g) for g in plan.groups], inplace=True)
            observed.qconfig = qconfig
            self._add_stubs(observed, qconfig)
            tq.prepare(observed, inplace=True)
        return observed, plan

    # ----------------------------------------------------------------------------------- convert/export
    def convert(self, prepared: nn.Module) -> nn.Module:
        if not self.is_prepared(prepared):
            raise QuantizationError("convert() needs a model prepared by prepare_qat() or prepare_ptq().")
        model = copy.deepcopy(prepared).cpu().eval()
        with quiet_quantization_warnings(), self._use_engine():
            tq.convert(model, inplace=True)
        _remove_stub_hooks(model)
        quant, dequant = getattr(model, QUANT_STUB), getattr(model, DEQUANT_STUB)
        delattr(model, QUANT_STUB)
        delattr(model, DEQUANT_STUB)
        wrapper = Int8Model(model)
        wrapper.quant, wrapper.dequant = quant, dequant
        return wrapper.eval()

    def check_int8_forward(self, prepared: nn.Module, example_input: Tensor) -> None:
        """Convert a copy of ``prepared`` after one observed pass over ``example_input`` and run the int8 model.

        Raises:
            QuantizationError: naming the failing stage and the op, with what to change in the model.
        """
        probe = copy.deepcopy(prepared).cpu().eval()
        x = example_input.detach().cpu().float()
        try:
            with torch.no_grad(), quiet_quantization_warnings():
                probe(x)
        except Exception as err:  # noqa: BLE001 - reported with the cause
            raise QuantizationError(
                f"The forward of {type(prepared).__name__} fails once prepared for quantization ({_first_line(err)})."
            ) from err
        quantized = self.convert(probe)
        active: list[str] = []  # the modules whose forward is running: the last one holds the failing op
        names = {id(m): n for n, m in quantized.named_modules()}
        handles = []

        def enter(module: nn.Module, _args: Any) -> None:
            active.append(names.get(id(module), ""))

        def leave(module: nn.Module, _args: Any, _output: Any) -> None:  # returns None: the output is kept
            if active:
                active.pop()

        for module in quantized.modules():
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
        try:
            with torch.no_grad(), quiet_quantization_warnings():
                quantized(x)
        except Exception as err:  # noqa: BLE001 - reported with the cause
            where = active[-1].removeprefix("module.") if active else ""
            place = (
                f" in the forward of module {where!r}"
                if where and where != "module"
                else f" in {type(prepared).__name__}.forward itself"
            )
            raise QuantizationError(
                f"The forward of {type(prepared).__name__} cannot run on int8 tensors in eager mode{place} "
                f"({_first_line(err)}). Every op between the layers must accept quantized tensors: replace "
                "`a + b`/`torch.cat` with torch.ao.nn.quantized.FloatFunctional, use nn.ReLU modules, and avoid "
                "float-only ops (custom norms, softmax inside the model) or keep them out of `pl_module.model`; "
                "or use backend='pt2e', which quantizes such models unchanged."
            ) from err
        finally:
            for handle in handles:
                handle.remove()

    def export(self, quantized: nn.Module, path: str | Path, example_input: Tensor | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_quantization_warnings(), int8_determinism_tolerant():
            try:
                scripted = torch.jit.script(quantized)
            except Exception as err:  # noqa: BLE001 - tracing is the fallback
                if example_input is None:
                    raise QuantizationError(
                        f"torch.jit.script failed ({_first_line(err)}) and no example input was given to trace it."
                    ) from err
                scripted = torch.jit.trace(quantized, example_input.detach().cpu().float())
            buffer = io.BytesIO()
            torch.jit.save(scripted, buffer)
        data = compact_torchscript(buffer.getvalue()) if self.compact_export else buffer.getvalue()
        path.write_bytes(data)
        return path

    def load(self, path: str | Path) -> nn.Module:
        """The TorchScript model (under ``torch.use_deterministic_algorithms(True)``, call it inside
        :func:`int8_determinism_tolerant`)."""
        with quiet_quantization_warnings():
            return torch.jit.load(str(path), map_location="cpu")


register_backend(EagerBackend.name, EagerBackend)
