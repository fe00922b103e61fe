"""Quantization-aware training and post-training quantization ending in a real int8 model.

Both callbacks talk to a :class:`~lightning_optim.functional.quantization.QuantizationBackend` (the stack:
``backend="pt2e"``, ``torch.export`` + torchao's ``X86InductorQuantizer``, exported as a ``.pt2`` program and
ONNX; ``"eager"``, eager ``torch.ao.quantization``, exported as TorchScript; ``"auto"``, the default, PT2E when
a dry run at setup shows it can quantize the model, else eager) converting for a kernel target
(``engine="x86"``), hand back the int8 model as ``callback.quantized_model`` (also ``compressed_model``, see
:class:`~lightning_optim.callbacks.phases.OffersModel`), save it with
:func:`~lightning_optim.functional.quantization.export_quantized` into the run's log folder (with the input
preprocessing, never over an earlier file), and report fp32 vs int8 accuracy, size and CPU latency as a table
and to the logger.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_optim._deprecation import moved
from lightning_optim.callbacks._trainer import (
    SPLITS,
    batch_inputs,
    broadcast_from_rank0,
    eval_batches,
    log_metrics,
    work_progress,
)
from lightning_optim.callbacks.phases import (
    Compacts,
    PhaseState,
    find_phase,
    phase_done,
    phases,
    target_model,
)
from lightning_optim.checks import check_choice
from lightning_optim.functional.pruning import apply_masks_, zero_masks
from lightning_optim.functional.quantization import (
    BACKEND_FORMATS,
    BACKENDS,
    DEFAULT_ENGINE,
    FP32_BEST_EFFORT,
    FusionPlan,
    QuantizationBackend,
    QuantizationError,
    QuantizationReport,
    accuracy,
    check_backend_name,
    check_export_formats,
    create_backend,
    export_quantized,
    format_report,
    quantization_report,
    resolve_backend,
    unused_path,
)
from lightning_optim.functional.quantization.export import EXPORT_FORMATS as _SUFFIXES
from lightning_optim.functional.quantization.mixed_precision import (
    LayerTimer,
    MixedPrecisionPlan,
    check_plan_settings,
    choose_float_layers,
)
from lightning_optim.weights import resize_to_state_dict

# `EXPORT_FORMATS` lived here up to 0.2.x: it moved to functional/quantization/export.py
__getattr__ = moved(__name__, "lightning_optim.functional.quantization.export")


def _check_batch_sizes(batch_sizes: Any, name: str) -> tuple[int, ...]:
    sizes = tuple(int(b) for b in batch_sizes)
    if any(b < 1 for b in sizes):
        raise ValueError(f"`{name}` must hold batch sizes >= 1, got {batch_sizes}.")
    return sizes


def _check_best_effort(methods: Any) -> tuple[str, ...]:
    methods = tuple(methods)
    unknown = [m for m in methods if m not in FP32_BEST_EFFORT]
    if unknown:
        raise ValueError(f"Unknown `fp32_best_effort` entries {unknown}; allowed: {list(FP32_BEST_EFFORT)}.")
    return methods


#: the quantization stacks the callbacks drive; ``"auto"`` (the default) picks the first that a dry run at setup
#: shows working for the model: :data:`AUTO_ORDER`
CALLBACK_BACKENDS: tuple[str, ...] = ("auto", "pt2e", "eager")
#: calibration batches ONNX Runtime's quantizer sees for the ONNX deploy file (and its agreement check)
ONNX_CALIBRATION_BATCHES = 8
#: the stacks ``backend="auto"`` tries, in order: PT2E (maintained, any exportable model) before eager
#: (deprecated by torch; some models measure faster on it: choose it by name)
AUTO_ORDER: tuple[str, ...] = ("pt2e", "eager")


def _counted(batches: list[Any], bar: Any) -> Iterator[Any]:
    """``batches`` one by one, advancing ``bar`` by one after each."""
    for batch in batches:
        yield batch
        bar.update(1)


def _deploy_metadata(trainer: pl.Trainer, input_shape: tuple[int, ...] | None) -> dict[str, Any]:
    """The input preprocessing for the deploy files: the data module's ``deploy_metadata()`` where it has one,
    else the input shape."""
    dm = getattr(trainer, "datamodule", None)
    info: dict[str, Any] = {}
    if dm is not None and callable(getattr(dm, "deploy_metadata", None)):
        try:
            info = dict(dm.deploy_metadata())
        except Exception as err:  # noqa: BLE001 - the files are still written, without the preprocessing
            rank_zero_warn(f"Quantization export: the data module's deploy_metadata() failed ({err}).")
    if input_shape is not None:
        info["input_shape"] = list(input_shape)
    return info


def _deploy_runners(paths: dict[str, Path] | None) -> dict[str, Any]:
    """The deploy files the report times beside the PyTorch int8 model: the ONNX file in ONNX Runtime (where
    onnxruntime is installed; it is often the faster int8 path on the CPU)."""
    path = (paths or {}).get("onnx")
    if path is None:
        return {}
    try:
        from lightning_optim.functional.quantization import OnnxRunner

        return {"ONNX file in ONNX Runtime": OnnxRunner(path, threads=torch.get_num_threads())}
    except ImportError:
        return {}


class _QuantizationCallbackBase(Callback):
    """What QAT and PTQ share: the backend, the data feed, conversion results, export and the report."""

    def __init__(
        self,
        backend: str,
        engine: str,
        fuse: bool,
        replace_model: bool,
        export: bool,
        export_path: str | None,
        report: bool,
        eval_batches: int | None,
        latency_batch_sizes: tuple[int, ...],
        latency_repeats: int,
        fp32_best_effort: tuple[str, ...],
        attribute: str,
        verbose: bool,
        export_format: str | list[str] | None = None,
        dry_run: bool = True,
    ) -> None:
        self.auto_backend = isinstance(backend, str) and backend.lower() == "auto"
        requested = check_export_formats(export_format)  # [] for None: the stack's own format
        self._auto_order: tuple[str, ...] = ()
        if self.auto_backend:
            # the stacks that convert for `engine` and write every requested format, in AUTO_ORDER
            engines = {b: BACKENDS[check_backend_name(b)].engines for b in AUTO_ORDER}
            wanted = engine.lower() if isinstance(engine, str) else engine
            check_choice(
                "engine",
                wanted,
                list(dict.fromkeys(e for es in engines.values() for e in es)),
                kind="quantization",
            )
            self._auto_order = tuple(
                b
                for b in AUTO_ORDER
                if all(f in BACKEND_FORMATS[b] for f in requested) and wanted in engines[b]
            )
            if not self._auto_order:
                raise ValueError(
                    f"`export_format={export_format!r}` with `engine={engine!r}`: no quantization stack writes all "
                    f"of {requested} for that engine (they write {dict(BACKEND_FORMATS)}; engines: {engines}); ask "
                    "for formats of one `backend`."
                )
            self.backend_name, self.engine = resolve_backend(self._auto_order[0], engine, stacklevel=3)
        else:
            # `backend="x86"`/`"fbgemm"` (the engine, the old meaning) maps to `engine` with a DeprecationWarning
            self.backend_name, self.engine = resolve_backend(backend, engine, stacklevel=3)
            if self.backend_name not in CALLBACK_BACKENDS:
                raise ValueError(
                    f"Unknown quantization `backend` {self.backend_name!r}; allowed: {list(CALLBACK_BACKENDS)}."
                )
        self._export_format_arg = export_format
        self.export_formats = check_export_formats(export_format, self.backend_name)
        if "onnx" in requested:
            missing = [
                m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None
            ]
            if missing:
                raise ImportError(
                    f"`export_format` 'onnx' needs {missing}: pip install 'lightning-optim[onnx]' (or leave 'onnx' "
                    "out of `export_format`)."
                )
        self.dry_run = dry_run
        if eval_batches is not None and eval_batches < 1:
            raise ValueError(f"`eval_batches` must be >= 1 or None (all), got {eval_batches}.")
        if latency_repeats < 1:
            raise ValueError(f"`latency_repeats` must be >= 1, got {latency_repeats}.")
        self.fuse = fuse
        self.replace_model = replace_model
        self.export = export
        self.export_path = export_path
        self.report = report
        self.eval_batches = eval_batches
        self.latency_batch_sizes = _check_batch_sizes(latency_batch_sizes, "latency_batch_sizes")
        self.latency_repeats = latency_repeats
        self.fp32_best_effort = _check_best_effort(fp32_best_effort)
        self.attribute = attribute
        self.verbose = verbose
        self.backend: QuantizationBackend = create_backend(self.backend_name, engine=self.engine)
        self.backend_choice: str = "" if self.auto_backend else f"backend={self.backend_name!r} (as given)"
        self._chosen = False  # whether the dry run chose (or checked) the stack
        self.quantized_model: nn.Module | None = None
        self.exported_path: Path | None = None
        self.exported_paths: dict[str, Path] = {}
        self.fusion_plan: FusionPlan | None = None
        self.quantization_report: QuantizationReport | None = None
        self.report_table: str | None = None
        self.input_shape: tuple[int, ...] | None = None
        self._example: Tensor | None = None
        #: under a sharding strategy: the network's structure on the meta device, taken at setup (see ``_plain``)
        self._skeleton: nn.Module | None = None

    # ------------------------------------------------------------------------------------ helpers
    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        model = target_model(pl_module, self.attribute)
        if model is pl_module:
            raise QuantizationError(
                f"{type(self).__name__} quantizes `pl_module.{self.attribute}`, which {type(pl_module).__name__} "
                "does not have: keep the network in that attribute (as ClassificationModule does) or set `attribute`."
            )
        return model

    def _set_network(self, pl_module: pl.LightningModule, network: nn.Module) -> None:
        setattr(pl_module, self.attribute, network)

    def _plain(self, pl_module: pl.LightningModule, model: nn.Module) -> nn.Module:
        """``model``; a sharded one as a plain CPU copy with its weights gathered (a collective: every rank)."""
        from lightning_optim.functional.sharding import gathered_copy, is_sharded_module, matching_skeleton

        if not is_sharded_module(model):
            return model
        plain = matching_skeleton(
            model, getattr(pl_module, "unsharded_skeleton", None), getattr(self, "_skeleton", None)
        )
        if plain is None:
            raise QuantizationError(
                f"{type(self).__name__}: the sharded network has no plain skeleton to gather its weights into "
                "(shard it in `configure_model` as ClassificationModule(sharding='fsdp2') does, after the "
                "callbacks' setup)."
            )
        return gathered_copy(model, plain)

    @property
    def export_format(self) -> str:
        """The first export format (the file :attr:`exported_path` names)."""
        return self.export_formats[0] if self.export_formats else ""

    def _remember_input(self, x: Any) -> None:
        if not (isinstance(x, Tensor) and x.dim() >= 1):
            return
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        if self._example is None:  # also after a resume, where input_shape came back from the checkpoint
            self._example = x[:2].detach().float().cpu().clone()
            if hasattr(self.backend, "set_example_input"):
                self.backend.set_example_input(self._example)

    def _ensure_example(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """An example input batch: the one seen already, else ``pl_module.example_input_array``, else the first
        batch of the training data (as seen at evaluation); ``None`` when there is none."""
        if self._example is None:
            example = getattr(pl_module, "example_input_array", None)
            if isinstance(example, Tensor) and example.dim() >= 1:
                self._remember_input(example)
        if self._example is None:
            try:
                for x, _ in eval_batches(trainer, pl_module, "train", 1):
                    self._remember_input(x)
            except Exception as err:  # noqa: BLE001 - the checks run on the first training batch instead
                rank_zero_warn(f"{type(self).__name__}: could not read a training batch at setup ({err}).")
        return self._example

    def _use_backend(self, name: str) -> None:
        if name == self.backend.name:
            return
        self.backend = create_backend(name, engine=self.engine)
        self.backend_name = name
        if self._example is not None and hasattr(self.backend, "set_example_input"):
            self.backend.set_example_input(self._example)
        self.export_formats = check_export_formats(self._export_format_arg, name)

    def _probe(self, backend: QuantizationBackend, model: nn.Module, qat: bool) -> None:
        """prepare -> observe -> convert -> run on a copy of ``model`` with the example input."""
        assert self._example is not None
        probe = copy.deepcopy(model).cpu()
        if qat and getattr(backend, "qat_in_place", True):
            backend.prepare_qat(probe.train(), fuse=self.fuse)
            prepared = probe
        elif qat:
            prepared = backend.prepare_qat_module(probe)  # type: ignore[attr-defined]
        else:
            prepared, _ = backend.prepare_ptq(probe, fuse=self.fuse)
        backend.check_int8_forward(prepared, self._example)

    def _run_dry_run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, qat: bool, model: nn.Module | None = None
    ) -> None:
        """At setup, before any epoch: prepare, convert and run a copy of the network on an example input with
        the chosen stack (``"auto"``: each of :data:`AUTO_ORDER` until one works), so that a model the stack
        cannot quantize is refused now, naming the failing op, and not after the pruning epochs. ``model``: the
        network to try (default: the LightningModule's; a gathered copy of a sharded one)."""
        model = self._network(pl_module) if model is None else model
        if self._chosen or self.backend.is_prepared(model) or self.quantized_model is not None:
            return
        candidates = list(self._auto_order) if self.auto_backend else [self.backend_name]
        if not self.dry_run or self._ensure_example(trainer, pl_module) is None:
            if self.auto_backend:
                self.backend_choice = f"backend='auto' -> {self.backend_name!r} (no dry run)"
            return
        errors: dict[str, str] = {}
        for name in candidates:
            backend = self.backend if name == self.backend.name else create_backend(name, engine=self.engine)
            if self._example is not None and hasattr(backend, "set_example_input"):
                backend.set_example_input(self._example)
            try:
                self._probe(backend, model, qat)
            except (QuantizationError, ImportError, NotImplementedError) as err:
                errors[name] = str(err)
                continue
            self._use_backend(name)
            self._chosen = True
            if self.auto_backend:
                tried = "; ".join(f"{n}: {e.splitlines()[0][:300]}" for n, e in errors.items())
                self.backend_choice = f"backend='auto' -> {name!r}" + (f" (after {tried})" if tried else "")
                if errors and self.verbose:
                    rank_zero_info(f"{type(self).__name__}: {self.backend_choice}")
            return
        given = (
            "backend='auto' tried " + ", ".join(errors)
            if self.auto_backend
            else f"backend={self.backend_name!r}"
        )
        details = "\n".join(f"- {n}: {e}" for n, e in errors.items())
        raise QuantizationError(
            f"{type(self).__name__}: the dry run at setup (prepare -> convert -> run on an example input) failed "
            f"with {given}:\n{details}\nWays out: another `backend` ({list(CALLBACK_BACKENDS)}), keep the failing "
            "module in float (PT2E: Pt2eBackend(exclude=[...])) or out of the quantized network, or `dry_run=False` "
            "to find out when quantization starts."
        )

    @property
    def compressed_model(self) -> nn.Module | None:
        """The int8 model (:attr:`quantized_model`), as the compression report finds it (``OffersModel``)."""
        return self.quantized_model

    def _model_batches(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, limit: int | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(inputs, targets)`` on the CPU as seen at evaluation (normalized, never augmented); remembers the
        input shape and an example input on the way."""
        for x, y in eval_batches(trainer, pl_module, split, limit):
            self._remember_input(x)
            yield x, y

    def _export_paths(self, trainer: pl.Trainer, filename: str) -> dict[str, Path]:
        """One file per export format: ``export_path`` (its stem for the other formats) when given, else
        ``<trainer.log_dir>/quantization/<filename stem><suffix>``, versioned (``-v1``...) so that no earlier
        file is overwritten; rank 0 decides, every rank gets the same names."""
        suffixes = {f: _SUFFIXES[f] for f in self.export_formats}
        if self.export_path:
            first = Path(self.export_path)
            return {
                f: (first if i == 0 else first.with_suffix(s)) for i, (f, s) in enumerate(suffixes.items())
            }
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "quantization"
        first = unused_path(
            folder / (Path(filename).stem + next(iter(suffixes.values()))), tuple(suffixes.values())
        )
        first = Path(trainer.strategy.broadcast(str(first)))
        return {f: first.with_suffix(s) for f, s in suffixes.items()}

    def _broadcast_state(self, trainer: pl.Trainer, model: nn.Module) -> None:
        """Rank 0's parameters, buffers and quantization ranges on every rank (identical int8 models). Sharded
        parameters are left as they are: each rank holds its own part of the same tensor."""
        from lightning_optim.functional.pruning.masks import is_sharded

        full = model.state_dict()
        state = OrderedDict((k, v.detach()) for k, v in full.items() if not is_sharded(v))
        # the modules' versions travel too: an observer loaded without its version takes the state as version 1
        # and resets its ``eps`` to float32's (torchao's observers: ranges clamped differently on each rank)
        state._metadata = getattr(full, "_metadata", None)  # type: ignore[attr-defined]
        received = broadcast_from_rank0(trainer, state)
        if received is not state:
            model.load_state_dict(received, strict=len(state) == len(full))

    def _finish(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        fp32_model: nn.Module,
        fp32_accuracy_model: nn.Module,
        filename: str,
        title: str,
        float_network: Any = None,
        calibration: Any = None,
        labels: tuple[str, str] = ("fp32", "int8"),
        accuracy_note: str = "",
    ) -> None:
        """Export, report, log and (optionally) put the int8 model in the LightningModule.

        ``float_network``/``calibration``: for the ONNX file, callables giving the trained float network and
        calibration inputs (ONNX Runtime's own quantizer writes it; see ``export_quantized``). ``labels``: the
        report's fp32 and int8 column headers; ``accuracy_note``: what its accuracies measure (said when they
        differ by more than a few points). The export, the evaluation and the latency measurement each show a
        progress bar (rank 0, when the Trainer shows its own)."""
        quantized = self.quantized_model
        assert quantized is not None
        if self.export and self.export_formats:
            paths = self._export_paths(trainer, filename)
            if trainer.is_global_zero:
                metadata = _deploy_metadata(trainer, self.input_shape)
                onnx = "onnx" in paths and calibration is not None
                with work_progress(trainer, desc="Exporting the int8 model", total=len(paths)) as bar:
                    for fmt, path in paths.items():
                        bar.set_postfix_str(Path(path).name, refresh=False)
                        export_quantized(
                            quantized,
                            path,
                            fmt,
                            self._example,
                            backend=self.backend,
                            metadata=metadata,
                            float_model=float_network() if onnx and fmt == "onnx" and float_network else None,
                            calibration=calibration() if onnx and fmt == "onnx" else None,
                        )
                        bar.update(1)
                if self.verbose:
                    rank_zero_info(
                        f"{type(self).__name__}: int8 model written to "
                        + ", ".join(str(p) for p in paths.values())
                    )
            trainer.strategy.barrier("quantization_export")
            self.exported_paths = paths
            self.exported_path = next(iter(paths.values()))
        if self.report and trainer.is_global_zero:
            fp32_acc = int8_acc = None
            batches = list(
                work_progress(
                    trainer,
                    self._model_batches(trainer, pl_module, "val", self.eval_batches),
                    desc="Reading the validation batches",
                    total=self.eval_batches,
                )
            )
            if batches:
                with work_progress(trainer, desc="Evaluating fp32 and int8", total=2 * len(batches)) as bar:
                    fp32_acc = accuracy(fp32_accuracy_model, _counted(batches, bar))
                    int8_acc = accuracy(quantized, _counted(batches, bar))
            timed = quantized
            sizes = self.latency_batch_sizes if self.input_shape is not None else ()
            measuring = "Measuring fp32 and int8 latency" if sizes else "Measuring fp32 and int8 sizes"
            with work_progress(trainer, desc=measuring, total=1) as bar:
                if sizes:
                    bar.set_postfix_str(f"batch sizes {', '.join(map(str, sizes))}", refresh=False)
                if sizes and hasattr(self.backend, "lower"):
                    example = (
                        self._example if self._example is not None else torch.zeros(1, *self.input_shape)
                    )
                    timed = self.backend.lower(quantized, example)  # type: ignore[attr-defined]
                rep = quantization_report(
                    fp32_model,
                    quantized,
                    input_shape=self.input_shape,
                    fp32_accuracy=fp32_acc,
                    int8_accuracy=int8_acc,
                    artifact_path=self.exported_path,
                    batch_sizes=sizes,
                    repeats=self.latency_repeats,
                    best_effort=self.fp32_best_effort,
                    int8_runner=timed,
                    fp32_label=labels[0],
                    int8_label=labels[1],
                    accuracy_samples=sum(int(y.shape[0]) for _, y in batches) or None,
                    accuracy_note=accuracy_note,
                    deploy_runners=_deploy_runners(self.exported_paths) if sizes else None,
                )
                bar.update(1)
            self.quantization_report = rep
            self.report_table = format_report(rep, title)
            if self.verbose:
                rank_zero_info(self.report_table)
            log_metrics(trainer, rep.metrics())
        if self.replace_model:
            setattr(pl_module, self.attribute, quantized)

    def _say_conversion_notes(self) -> None:
        """What convert did beyond the layers of the fusion plan (embedding tables in int8 or kept float)."""
        note = getattr(getattr(self.quantized_model, "capture", None), "note", "") or ""
        said = [part for part in note.split("; ") if part.startswith("embedding tables")]
        if said and self.verbose:
            rank_zero_info(f"{type(self).__name__}: " + "; ".join(said))

    # ------------------------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("quantized_model", "_float_reference", "_zero_masks", "_zero_weights", "_load_hook"):
            if key in state:
                state[key] = None
        if "_parameter_holders" in state:  # modules of the float network: not part of the callback's state
            state["_parameter_holders"] = []
        return state


class QuantizationAwareTraining(_QuantizationCallbackBase):
    r"""Train with fake quantization from a chosen epoch, end with a real int8 model.

    At the start (``start_epoch``, or the first epoch after the phase named ``start_after`` is done, e.g.
    ``"pruning"``), the network ``pl_module.<attribute>`` is prepared *in place*: conv-bn(-relu),
    conv-relu, linear-relu and bn-relu chains are fused (found by tracing the forward; what was and was not
    fused is logged), a quant stub fake-quantizes the input, and fake-quantized modules that share the
    float parameters replace the float ones (the optimizer keeps updating the same ``nn.Parameter``\ s).
    Quantization ranges are only observed in training (not during validation); they are frozen at
    ``freeze_observers_epoch`` and the fused batch-norm statistics at ``freeze_bn_epoch``. At the end of
    ``fit`` (or on :meth:`convert`) the model is converted to int8, exposed as :attr:`quantized_model`,
    saved as TorchScript (``torch.jit.load`` reads it without this package) and reported: fp32 vs int8
    accuracy on the validation split, state-dict/artifact size, CPU latency at each of
    ``latency_batch_sizes`` (fp32 eager, the fastest fp32 ``fp32_best_effort`` variant, int8; median of
    interleaved runs).

    Resume: a checkpoint taken during QAT holds the prepared model; the callback rebuilds that structure
    before the weights are loaded (a load-state-dict pre-hook on the LightningModule). A checkpoint without this
    callback's state (saved without it, or with other settings that make its state key) keeps the model's zeros:
    with ``preserve_zeros`` the weights that are exactly zero in it stay zero through QAT and in the int8 model,
    QAT goes on (a prepared network) or starts by the settings, and a warning says so. Before the first epoch,
    QAT that would start after a ``start_after`` phase ending at or after ``max_epochs`` is refused, and freezing
    epochs the run never reaches are said. DDP: ranks convert
    rank 0's state, so the int8 model is identical on every rank. Mixed precision: fake quantization runs in
    float32 under ``bf16-mixed``/``16-mixed``. Zeros: with ``preserve_zeros``, weights that are exactly zero
    when QAT starts (pruned) stay zero during QAT and in the int8 weights.

    Sharded (FSDP2: ``ModelParallelStrategy`` with ``ClassificationModule(sharding="fsdp2")``, which shards the
    network in ``configure_model``): the network is prepared at setup, before it is sharded, whatever the start,
    and converted at the end from a copy with the weights gathered from the shards (identical on every rank). A
    later start (``start_epoch > 0``, ``start_after``) keeps the prepared network float until the start: fake
    quantization and observers off (a fused conv-bn then computes conv and batch norm, as the float network
    does), switched on at the start, with the freezing epochs above relative to it; a resume prepares at setup
    again and sets them by the callback's state, so it ends equal to the uninterrupted run. Refused at setup under
    a sharding strategy: tensor parallelism; a network sharded before setup; with a later start, PT2E without an
    example input at setup (``example_input_array`` or a data module: the capture cannot wait for the first
    batch) and channel pruning on the Trainer (``granularity`` ``"structured"``/``"channel_groups"``: it would zero
    the batch-norm scales the fused layers divide by, and compaction at the start needs the float network).

    It is the ``"quantization"`` compression phase: ``pending`` before the start, ``active`` while the
    quantization ranges still change, ``done`` once they are frozen or the model is converted.

    Args:
        backend: the quantization stack: ``"auto"`` (default: the first of ``"pt2e"``, ``"eager"`` that the
            dry run at setup shows working for the model, among those writing ``export_format``), ``"pt2e"``
            (``torch.export`` + torchao ``X86InductorQuantizer``: residual adds, concatenations, SE blocks,
            attention linears; the prepared network is a
            :class:`~lightning_optim.functional.quantization.Pt2eModule` that trains the same parameters;
            exported as ``.pt2``/ONNX), ``"eager"`` (eager ``torch.ao.quantization``, deprecated by torch;
            exported as TorchScript). ``"x86"``/``"fbgemm"`` here still mean ``engine`` for one release (with a
            ``DeprecationWarning``).
        engine: the kernel target the int8 model is converted for: ``"x86"`` (fastest on x86 CPUs) or
            ``"fbgemm"`` (eager only; like ``torch.backends.quantized.engine``).
        start_epoch: first epoch with fake quantization (0 = from the start).
        start_after: name of a compression phase (e.g. ``"pruning"``); QAT starts at the first epoch
            ``>= start_epoch`` at which that phase is done.
        freeze_observers_epoch: epoch from which the quantization ranges are frozen (``None``: never); always
            after at least one epoch of QAT (when ``start_after`` delays the start, one epoch after it).
        freeze_bn_epoch: epoch from which the fused batch-norm statistics are frozen (``None``: never).
        convert_on_fit_end: convert to int8 when training ends.
        fuse: fuse conv-bn(-relu)/conv-relu/linear-relu chains automatically.
        preserve_zeros: keep weights that are exactly zero at the start (pruned ones) at zero.
        replace_model: after conversion, put the int8 model in ``pl_module.<attribute>`` (only when the model
            was trained on the CPU) so that ``trainer.test`` measures the int8 model.
        export: save the int8 model at conversion.
        export_path: file for the export (the other formats: the same stem, their suffix; an existing file is
            replaced); default ``<trainer.log_dir>/quantization/model_int8.<suffix>``, ``model_int8-v1...`` where
            that exists (never overwritten).
        export_format: one format or a list; ``None`` (default): the stack's own (``"pt2"`` for PT2E,
            ``"torchscript"`` for eager). PT2E: ``"pt2"`` (a ``torch.export`` program with int8 weights only,
            the input preprocessing and checksums; ``torch.export.load(path).module()`` runs it with torch
            alone) and ``"onnx"`` (QDQ ONNX, checked in ONNX Runtime; the ``onnx`` extra). Eager:
            ``"torchscript"`` (``torch.jit.load``) and ``"artifact"`` (the compact artifact of
            :mod:`lightning_optim.functional.artifact`: the same TorchScript module with its int8 values, scales
            and code in LZMA streams, smaller; ``load_artifact`` reads it with torch and the standard library).
        dry_run: at setup, before any epoch, prepare, convert and run a copy of the network on an example input
            (``pl_module.example_input_array`` or the first training batch): an op the stack cannot quantize is
            refused then, not when QAT starts.
        report: measure and log the report after conversion.
        eval_batches: validation batches for the accuracy in the report (``None``: all).
        latency_batch_sizes: batch sizes at which the report times fp32 and int8 (empty: no timing).
        latency_repeats: timed runs per round (median over 3 interleaved rounds).
        fp32_best_effort: fp32 speed-ups to try for the "best effort" column: ``"channels_last"``,
            ``"compile"`` (``torch.compile``; takes a few seconds per batch size).
        attribute: attribute of the LightningModule that holds the network.
        verbose: print the fusion summary and the report.
        compact_pruned: when QAT starts, first compact the network of every finished phase that can
            (``ProgressivePruning`` with a structured or channel-group granularity: its ``compact``): the zeroed
            channels are removed, so fused QAT does not divide by their zero batch-norm scales and the int8
            network is the smaller one. With ``False`` (or a phase that cannot compact), conv/linear + batch
            norm pairs with zero-scale channels train unfused (said in the fusion summary).

    Raises:
        ValueError: an unknown ``backend`` or ``engine``; a negative ``start_epoch``; freeze epochs before ``start_epoch``;
            bad report options. At ``fit`` start: ``start_epoch`` not before ``max_epochs``, no phase called
            ``start_after`` on the Trainer, or (before the first epoch) a ``start_after`` phase that its settings
            finish at or after ``max_epochs``; under a sharding strategy, the settings it does not support (above),
            naming the strategy and the alternative.
        QuantizationError: when QAT starts: a network with no conv/linear layer, or whose forward cannot run
            prepared or in int8 (the message names the failing op).

    Example::

        from lightning_optim.callbacks import QuantizationAwareTraining
        qat = QuantizationAwareTraining(start_epoch=1, freeze_bn_epoch=3, freeze_observers_epoch=4)
        trainer = Trainer(max_epochs=5, callbacks=[qat])
        trainer.fit(ClassificationModule(ConvNet3()), datamodule=dm)
        int8 = qat.quantized_model                      # float in, float out, int8 inside
        scripted = torch.jit.load(qat.exported_path)    # anywhere, torch alone
    """

    #: under FSDP2 (data parallel): prepared at setup, before ``configure_model`` shards the prepared network (a
    #: later start holds it float, fake quantization off, until the start); converted on a gathered copy. Refused:
    #: tensor parallelism, a network sharded before setup, and with a later start PT2E without an example input at
    #: setup or channel pruning on the Trainer
    sharded_parameters = "partial"

    phase_name = "quantization"

    # defaults of the sharded-run attributes set at setup (also for a callback unpickled from an older release)
    _sharded = False
    _holding_float = False
    _parameter_holders: list[tuple[nn.Module, str, str]] = []

    def __init__(
        self,
        backend: str = "auto",
        engine: str = DEFAULT_ENGINE,
        start_epoch: int = 0,
        start_after: str | None = None,
        freeze_observers_epoch: int | None = None,
        freeze_bn_epoch: int | None = None,
        convert_on_fit_end: bool = True,
        fuse: bool = True,
        preserve_zeros: bool = True,
        replace_model: bool = True,
        export: bool = True,
        export_path: str | None = None,
        export_format: str | list[str] | None = None,
        report: bool = True,
        eval_batches: int | None = None,
        latency_batch_sizes: tuple[int, ...] = (1, 256),
        latency_repeats: int = 20,
        fp32_best_effort: tuple[str, ...] = FP32_BEST_EFFORT,
        attribute: str = "model",
        verbose: bool = True,
        compact_pruned: bool = True,
        dry_run: bool = True,
    ) -> None:
        super().__init__(
            backend,
            engine,
            fuse,
            replace_model,
            export,
            export_path,
            report,
            eval_batches,
            latency_batch_sizes,
            latency_repeats,
            fp32_best_effort,
            attribute,
            verbose,
            export_format,
            dry_run,
        )
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"`start_epoch` must be an int >= 0, got {start_epoch!r}.")
        if freeze_bn_epoch is not None and freeze_bn_epoch < start_epoch:
            raise ValueError(
                f"`freeze_bn_epoch` must be >= `start_epoch` ({start_epoch}) or None, got {freeze_bn_epoch}."
            )
        if freeze_observers_epoch is not None and freeze_observers_epoch <= start_epoch:
            raise ValueError(
                f"`freeze_observers_epoch` must be > `start_epoch` ({start_epoch}) or None (the ranges need one epoch "
                f"of observation first), got {freeze_observers_epoch}."
            )
        if start_after is not None and (not isinstance(start_after, str) or not start_after):
            raise ValueError(
                f"`start_after` must be a phase name (e.g. 'pruning') or None, got {start_after!r}."
            )
        self.start_epoch = start_epoch
        self.start_after = start_after
        self.freeze_observers_epoch = freeze_observers_epoch
        self.freeze_bn_epoch = freeze_bn_epoch
        self.convert_on_fit_end = convert_on_fit_end
        self.preserve_zeros = preserve_zeros
        self.compact_pruned = compact_pruned
        # state
        self.prepared = False
        self.started_epoch: int | None = None
        self.observers_frozen = False
        self.bn_frozen = False
        self.converted = False
        self._needs_check = False
        self._float_reference: nn.Module | None = None
        self._zero_masks: dict[str, Tensor] | None = None
        self._zero_weights: dict[str, Tensor] | None = None
        self._load_hook: Any = None
        self._in_eval = False
        # resume: whether the checkpoint held this callback's state, and which callback states it held
        self._state_restored = False
        self._checkpoint_states: list[str] | None = None
        self._prepared_at_setup = False  # prepared before any checkpoint was restored (start_epoch=0)
        #: sharded (FSDP2), QAT starting later: the network is prepared at setup and held float until the start
        self._holding_float = False
        self._sharded = False  # under a sharding strategy (set at setup)
        #: sharded: ``(module, attribute, name in the prepared network)`` of the float network's parameters
        self._parameter_holders: list[tuple[nn.Module, str, str]] = []

    @property
    def state_key(self) -> str:
        # the key argument keeps its old name `backend` (with the engine, its old value): checkpoints resume
        return self._generate_state_key(
            backend=self.engine,
            start_epoch=self.start_epoch,
            start_after=self.start_after,
            attribute=self.attribute,
        )

    # ------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._run_sharded_check(trainer, pl_module)
        self._run_setup(trainer, pl_module)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._checkpoint_states = [str(k) for k in checkpoint.get("callbacks", {})]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_share_sharded_parameters(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_check_fits(trainer)
        self._run_resume(trainer)
        # after a resume: fake quantization and observation as the restored state says, not the restored buffers
        self._run_held_flags(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_schedule(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._run_first_batch(trainer, pl_module, batch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._run_zero_masks()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_observe(pl_module, training=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_observe(pl_module, training=True)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_observe(pl_module, training=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_observe(pl_module, training=True)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_observe(pl_module, training=False)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_observe(pl_module, training=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.convert_on_fit_end and self.prepared and not self.converted:
            self._run_convert(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    # ------------------------------------------------------------------------------------ phase
    def phase_state(self, trainer: Any) -> PhaseState:
        """``pending`` before QAT starts, ``active`` while ranges change, ``done`` once frozen or converted."""
        if not self.prepared:
            return "pending"
        return "done" if (self.observers_frozen or self.converted) else "active"

    def describe_phase(self, trainer: Any, finished: bool = False) -> str:
        """What QAT does, in plain words (for messages; the contract's word is :meth:`phase_state`):
        ``"pending (starts after pruning)"``, ``"running (QAT epoch 2 of 4)"``, ``"running (QAT epoch 3 of 4,
        ranges frozen)"``, ``"done (int8)"``; with ``finished=True`` also ``"never started"``."""
        if not self.prepared:
            if finished:
                return "never started"
            if self.start_after is None:
                return f"pending (starts at epoch {self.start_epoch})"
            later = f", not before epoch {self.start_epoch}" if self.start_epoch else ""
            return f"pending (starts after {self.start_after}{later})"
        if self.converted:
            return "done (int8)"
        if finished:
            return "done (int8)" if self.convert_on_fit_end else "done (not converted)"
        epoch = int(getattr(trainer, "current_epoch", 0))
        where = ""
        if self.started_epoch is not None:
            max_epochs = getattr(trainer, "max_epochs", None)
            total = (
                max_epochs - self.started_epoch if isinstance(max_epochs, int) and max_epochs > 0 else None
            )
            where = f"QAT epoch {epoch - self.started_epoch + 1}" + (f" of {total}" if total else "")
        details = ", ".join(w for w in (where, "ranges frozen" if self.observers_frozen else "") if w)
        return f"running ({details})" if details else "running"

    # ------------------------------------------------------------------------------------ public
    def convert(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> nn.Module:
        """Convert now (on demand) and return the int8 model; training can go on with the fake-quantized one."""
        if not self.prepared:
            raise QuantizationError(
                "QuantizationAwareTraining.convert(): QAT has not started yet; nothing to convert."
            )
        self._run_convert(trainer, pl_module, replace=False)
        assert self.quantized_model is not None
        return self.quantized_model

    # ------------------------------------------------------------------------------------ internals
    def _run_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if (
            max_epochs is not None
            and max_epochs >= 0
            and self.start_epoch >= max_epochs
            and not self.prepared
        ):
            raise ValueError(
                f"QuantizationAwareTraining `start_epoch`={self.start_epoch} is not before the Trainer's "
                f"max_epochs={max_epochs}: QAT would never start. Allowed: 0 <= start_epoch < max_epochs."
            )
        if self.start_after is not None:
            phase_done(trainer, self.start_after)  # raises ValueError naming the phases present
        self._run_check_channel_pruning(trainer)
        self._trainer_ref = trainer
        self._run_dry_run(trainer, pl_module, qat=True)
        model = self._network(pl_module)
        if self._load_hook is None:
            self._load_hook = pl_module.register_load_state_dict_pre_hook(self._rebuild_before_load)
        if self._holding_float:
            # sharded, QAT starting later: prepared now, before `configure_model` shards the network, and kept
            # float (fake quantization and observers off) until the start switches them on
            if not self.backend.is_prepared(model):
                self._run_prepare_float(trainer, pl_module)
        elif self.start_epoch == 0 and self.start_after is None and not self.backend.is_prepared(model):
            # before the strategy wraps the model (DDP) and builds the optimizers
            self._run_prepare(trainer, pl_module)
            self._prepared_at_setup = True
            # ranges are observed on training batches only: not on what runs before the first epoch (the
            # LightningModule's dry run at setup, zeros); the first training epoch turns observation on
            self._run_observe(pl_module, training=False)

    def _run_check_channel_pruning(self, trainer: pl.Trainer) -> None:
        """QAT from the first epoch (prepared at setup, no ``start_after``) beside a structured or channel-group
        pruning ramp is refused: the ramp would prune during QAT, zeroing whole channels (batch-norm scales included)
        inside the fused conv-bn layers, which divide by those scales, and a channel-group trace would look for the
        layers the QAT capture replaced. QAT compacts such pruning before it starts, so it must start after it."""
        if self.start_epoch != 0 or self.start_after is not None:
            return
        zeroing = [
            cb
            for cb in phases(trainer)
            if cb is not self
            and isinstance(cb, Compacts)
            and (getattr(cb, "structured", False) or getattr(cb, "by_groups", False))
        ]
        if not zeroing:
            return
        pruning = zeroing[0]
        raise ValueError(
            f"QuantizationAwareTraining(start_epoch=0) with {type(pruning).__name__}(granularity="
            f"{getattr(pruning, 'granularity', 'structured')!r}) on the Trainer: QAT would be prepared at setup and "
            "the pruning ramp would remove whole channels during QAT, zeroing the batch-norm scales that the fused "
            "conv-bn layers divide by. Start QAT after the pruning: `start_after: "
            f"{getattr(pruning, 'phase_name', 'pruning')!r}` (the network is compacted first), or prune with "
            "`granularity='unstructured'`."
        )

    def _run_sharded_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under a sharding strategy (FSDP2 data parallel): the network is prepared at setup, before
        ``configure_model`` shards it (a resume prepares it there again); QAT that starts later
        (``start_epoch > 0`` or ``start_after``) keeps the prepared network float until the start
        (:attr:`_holding_float`); the conversion works on a plain copy with the weights gathered from the shards
        (see ``_plain``). Tensor parallelism and a network sharded before setup are refused."""
        from lightning_optim.callbacks._trainer import refuse_sharded, sharded_strategy
        from lightning_optim.functional.sharding import is_sharded_module

        self._holding_float = False
        strategy = sharded_strategy(trainer)
        self._sharded = strategy is not None
        if strategy is None:
            return
        if "tensor parallel" in strategy:
            refuse_sharded(
                trainer,
                "QuantizationAwareTraining",
                "the network is prepared for QAT before `configure_model` splits it, and splitting a prepared "
                "(fake-quantized or captured) network over the tensor-parallel ranks is not built",
                '`tensor_parallel_size=1` with ClassificationModule(sharding="fsdp2"), or DDP (`strategy="ddp"`)',
            )
        param_dtype = getattr(pl_module, "sharding_param_dtype", None)
        if param_dtype is not None:
            refuse_sharded(
                trainer,
                f"QuantizationAwareTraining with ClassificationModule(sharding_param_dtype={param_dtype!r})",
                "the fake quantizers (and PT2E's fused observers) need float32 weights, and FSDP2's mixed precision "
                f"gathers the parameters in {param_dtype} for the forward",
                "`sharding_param_dtype=None` (the Trainer's `precision='bf16-mixed'` runs QAT under FSDP2), or DDP "
                '(`strategy="ddp"`)',
            )
        if is_sharded_module(self._network(pl_module)):
            refuse_sharded(
                trainer,
                "QuantizationAwareTraining",
                "the network was sharded before the callback's setup, so it cannot be prepared for QAT",
                "sharding it in `configure_model`, as ClassificationModule(sharding='fsdp2') does, or DDP "
                '(`strategy="ddp"`)',
            )
        late = self.start_epoch != 0 or self.start_after is not None
        zeroing = [
            cb
            for cb in phases(trainer)
            if cb is not self
            and isinstance(cb, Compacts)
            and (getattr(cb, "structured", False) or getattr(cb, "by_groups", False))
        ]
        if late and zeroing:
            granularity = getattr(zeroing[0], "granularity", "structured")
            refuse_sharded(
                trainer,
                f"QuantizationAwareTraining(start_epoch={self.start_epoch}, start_after={self.start_after!r}) "
                f"with {type(zeroing[0]).__name__}(granularity={granularity!r})",
                "QAT that starts after the first epoch is prepared at setup, before `configure_model` shards the "
                "network, so the pruning would zero whole channels, batch-norm scales included, inside the fused "
                "conv-bn layers (which divide by those scales) and the network could not be compacted when QAT "
                "starts (`compact_pruned`), as an unsharded run does",
                "`granularity='unstructured'` pruning before QAT, QAT in a later fit of the compacted network, or "
                'DDP (`strategy="ddp"`)',
            )
        self._holding_float = late

    def _rebuild_before_load(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        """Load-state-dict pre-hook: a checkpoint of a prepared model needs the prepared structure first (with
        ``"auto"``: the structure of the stack the checkpoint was prepared with)."""
        names = self._auto_order if self.auto_backend else (self.backend_name,)
        for name in names:
            factory = create_backend(name, engine=self.engine) if name != self.backend.name else self.backend
            marker = f"{prefix}{self.attribute}.{factory.prepared_marker}."
            if any(key.startswith(marker) for key in state_dict):
                break
        else:
            self._float_checkpoint_into_prepared(module, prefix)
            return
        model = target_model(module, self.attribute)
        if model is module or self.backend.is_prepared(model):
            return
        self._use_backend(name)
        if not getattr(self.backend, "qat_in_place", True):
            # a capture of the float network with the checkpoint's layer sizes (structured pruning compacted it)
            stripped = {k[len(marker) :]: v for k, v in state_dict.items() if k.startswith(marker)}
            resize_to_state_dict(model, stripped, strict=False)
            trainer = getattr(self, "_trainer_ref", None)
            if self._example is None and trainer is not None:
                self._ensure_example(trainer, module)  # type: ignore[arg-type]
            if self._example is None:
                raise QuantizationError(
                    f"{type(self).__name__}: resuming a PT2E-prepared checkpoint needs an example input to capture "
                    "the network again: give the Trainer training data or set `example_input_array`."
                )
        self._prepare(module, model, epoch=None)  # type: ignore[arg-type]

    def _run_check_fits(self, trainer: pl.Trainer) -> None:
        """Before any epoch: QAT that would start only after the phase named ``start_after`` is done, when that
        phase ends at or after ``max_epochs`` by its settings, is refused (QAT would never start); freezing epochs
        that the run never reaches are said (the phase would never be done: EarlyStopping holds off to the end)."""
        max_epochs = trainer.max_epochs
        if trainer.fast_dev_run or self.converted or max_epochs is None or max_epochs < 0:
            return
        start = self.start_epoch if self.started_epoch is None else self.started_epoch
        if not self.prepared and self.start_after is not None:
            phase = find_phase(trainer, self.start_after)
            done_epoch = getattr(phase, "done_epoch", None)
            done = done_epoch(trainer) if callable(done_epoch) else None
            if done is not None:
                start = max(start, int(done))
                if start >= max_epochs:
                    raise ValueError(
                        f"QuantizationAwareTraining starts after the {self.start_after!r} phase (`start_after`), "
                        f"which by its settings is done at epoch {done} (and QAT's `start_epoch` is "
                        f"{self.start_epoch}): the Trainer's max_epochs={max_epochs} ends the run before epoch "
                        f"{start}, so QAT would never start. End {self.start_after} by epoch {max_epochs - 1} or "
                        f"train for max_epochs >= {start + 1}."
                    )
        late = []
        if self.freeze_observers_epoch is not None and not self.observers_frozen:
            epoch = max(self.freeze_observers_epoch, start + 1)  # after one epoch of observation at least
            if epoch >= max_epochs:
                late.append(f"`freeze_observers_epoch` (ranges frozen at epoch {epoch})")
        if self.freeze_bn_epoch is not None and not self.bn_frozen and self.freeze_bn_epoch >= max_epochs:
            late.append(f"`freeze_bn_epoch` ({self.freeze_bn_epoch})")
        if late:
            rank_zero_warn(
                f"QuantizationAwareTraining: {' and '.join(late)} is not before the Trainer's max_epochs="
                f"{max_epochs}: it never happens in this run (QAT starts at epoch {start}); the quantization phase "
                "is then never done, so EarlyStopping holds off to the end, and the int8 model takes the ranges as "
                "last observed. Freeze before the last epoch or train longer."
            )

    def _run_resume(self, trainer: pl.Trainer) -> None:
        """After a checkpoint was restored: the zero masks come from the restored weights (a network prepared at
        setup built them from its initial weights); a checkpoint without this callback's state is said."""
        if trainer.ckpt_path is None:
            return
        if self.prepared:
            self._zero_masks = None  # rebuilt at the first batch from the restored weights
        if self._state_restored:
            return
        held = self._checkpoint_states
        source = (
            f"holds no state of this callback (its state key {self.state_key!r} is not among the checkpoint's "
            f"callback states {held}: saved without it, or with another `start_epoch`, `start_after`, `engine` or "
            "`attribute`)"
            if held is not None
            else "holds no callback states"
        )
        if self.prepared:
            what = (
                "QAT goes on with the checkpoint's network as it is (prepared for QAT: fake-quantized or not); "
                "freezing and conversion follow the settings"
            )
        else:
            after = f" after {self.start_after!r} is done" if self.start_after is not None else ""
            start = max(self.start_epoch, trainer.current_epoch)
            what = (
                f"the checkpoint holds the float network, QAT starts at epoch {start}{after} by the settings"
            )
        zeros = (
            "the weights that are exactly zero in the checkpoint (pruned) are kept at zero through QAT and in the "
            "int8 weights (`preserve_zeros=True`)"
            if self.preserve_zeros
            else "with `preserve_zeros=False` the weights that are zero in the checkpoint (pruned) train like the "
            "others; set `preserve_zeros: true` to keep them at zero"
        )
        rank_zero_warn(
            f"QuantizationAwareTraining: resuming from {trainer.ckpt_path}, which {source}: {what}; {zeros}."
        )

    def _float_checkpoint_into_prepared(self, module: nn.Module, prefix: str) -> None:
        """A checkpoint of the float network (saved before QAT started, or by a run without QAT) restored into a
        network this callback prepared at setup (``start_epoch=0``), before any step: the float network goes back
        in its place, the checkpoint loads into it, and QAT starts again at the first epoch of the resumed run
        (from the checkpoint's weights, its zeros kept with ``preserve_zeros``)."""
        model = target_model(module, self.attribute)
        if (
            prefix
            or model is module
            or not self._prepared_at_setup
            or self._float_reference is None
            or not self.backend.is_prepared(model)
        ):
            return
        float_net = copy.deepcopy(self._float_reference).train(model.training)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._set_network(module, float_net.to(device))  # type: ignore[arg-type]
        self.prepared = False
        self.started_epoch = None
        self._prepared_at_setup = False
        self._zero_masks = None
        self._zero_weights = None
        self.fusion_plan = None

    def _should_start(self, trainer: pl.Trainer) -> bool:
        if trainer.current_epoch < self.start_epoch:
            return False
        return self.start_after is None or phase_done(trainer, self.start_after)

    def _run_schedule(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._network(pl_module)
        if self.converted:
            return
        if not self.prepared and self._should_start(trainer):
            if self._holding_float:
                self._run_start_held(trainer, pl_module)
            else:
                self._run_prepare(trainer, pl_module)
        if not self.prepared:
            return
        self._run_observe(pl_module, training=True)  # in case a checkpoint was saved while validating
        model = self._network(pl_module)  # PT2E: the prepared module took the float one's place
        epoch = trainer.current_epoch
        metrics: dict[str, float] = {}
        if self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch:
            self.backend.freeze_bn_stats(model)  # an attribute of the modules: applied again after a resume
            if not self.bn_frozen:
                self.bn_frozen = True
                metrics["quantization/bn_frozen_epoch"] = float(epoch)
        if (
            self.freeze_observers_epoch is not None
            and epoch >= self.freeze_observers_epoch
            and (self.started_epoch is None or epoch > self.started_epoch)  # observed one epoch at least
            and not self.observers_frozen
        ):
            self._broadcast_state(trainer, model)
            self.backend.freeze_observers(model)
            self.observers_frozen = True
            metrics["quantization/observers_frozen_epoch"] = float(epoch)
        log_metrics(trainer, metrics)

    def _prepare(self, pl_module: pl.LightningModule, model: nn.Module, epoch: int | None) -> None:
        self._float_reference = copy.deepcopy(model).cpu().eval()
        # the modules of the float network that hold its parameters (other callbacks may hold them, e.g. the layers
        # ProgressivePruning selected at its setup): under a sharding strategy they get the sharded parameters
        # back once the prepared network is sharded (see `_run_share_sharded_parameters`)
        holders = [
            (m, attr, id(p)) for m in model.modules() for attr, p in m._parameters.items() if p is not None
        ]
        if getattr(self.backend, "qat_in_place", True):
            self.fusion_plan = self.backend.prepare_qat(model, fuse=self.fuse)
        else:
            # PT2E captures a new module that trains the float network's own parameters; it takes its place
            prepared = self.backend.prepare_qat_module(model)  # type: ignore[attr-defined]
            prepared.train(model.training)
            self._set_network(pl_module, prepared)
            self.fusion_plan = prepared.capture
        if self._sharded:
            names: dict[int, str] = {}
            for name, p in self._network(pl_module).named_parameters(remove_duplicate=False):
                names.setdefault(id(p), name)
            self._parameter_holders = [(m, attr, names[i]) for m, attr, i in holders if i in names]
        self.prepared = True
        self.started_epoch = epoch if epoch is not None else self.started_epoch
        self._needs_check = True
        self._zero_masks = None
        self._zero_weights = None

    def _run_compact_phases(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before QAT: let every finished phase that can compact the network do it (see ``compact_pruned``)."""
        for cb in phases(trainer):
            if cb is self or not isinstance(cb, Compacts) or cb.phase_state(trainer) != "done":
                continue
            if cb.compact(trainer, pl_module) and self.verbose:
                rank_zero_info(
                    f"QuantizationAwareTraining: the '{cb.phase_name}' phase compacted the network before QAT "
                    f"({sum(p.numel() for p in self._network(pl_module).parameters()):,} parameters)."
                )

    def _run_prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.compact_pruned:
            self._run_compact_phases(trainer, pl_module)
        model = self._network(pl_module)
        before = {id(p) for p in model.parameters()}
        if (
            not getattr(self.backend, "qat_in_place", True)
            and self._ensure_example(trainer, pl_module) is None
        ):
            raise QuantizationError(
                f"{type(self).__name__}: backend={self.backend_name!r} captures the network with torch.export and "
                "needs an example input: give the Trainer training data or set `pl_module.example_input_array`."
            )
        self._prepare(pl_module, model, epoch=trainer.current_epoch)
        model = self._network(pl_module)
        if self.verbose and self.fusion_plan is not None:
            rank_zero_info(
                f"QuantizationAwareTraining: QAT starts at epoch {trainer.current_epoch}.\n{self.fusion_plan.summary()}"
            )
        if self.preserve_zeros:
            self._build_zero_masks(model)
        after = {id(p) for p in model.parameters() if p.requires_grad}
        optimized = {
            id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]
        }
        if trainer.optimizers and not after <= optimized:
            rank_zero_warn(
                "QuantizationAwareTraining: preparing the model created parameters the optimizer does not hold; "
                "rebuilding the optimizers (their state restarts)."
            )
            trainer.strategy.setup_optimizers(trainer)
        elif not before >= after:
            rank_zero_warn(
                "QuantizationAwareTraining: the prepared model has parameters the float model did not have."
            )
        log_metrics(trainer, {"quantization/start_epoch": float(trainer.current_epoch)})

    def _run_share_sharded_parameters(self, pl_module: pl.LightningModule) -> None:
        """After ``configure_model`` sharded the network prepared at setup: FSDP2 replaced its parameters by
        sharded ones, so the modules of the float network it was prepared from (the PT2E capture's source; eager
        fusion's replaced layers) would keep the old, untrained parameters. They get the sharded ones, so that the
        prepared network still trains the float network's own parameters (what a callback holding those modules,
        e.g. ProgressivePruning's selected layers, reads and masks)."""
        from lightning_optim.functional.sharding import is_sharded_module

        holders, self._parameter_holders = self._parameter_holders, []
        if not holders or self.converted:
            return
        model = self._network(pl_module)
        if not is_sharded_module(model):
            return
        live = dict(model.named_parameters(remove_duplicate=False))
        for module, attr, name in holders:
            param = live.get(name)
            if param is not None and module._parameters.get(attr) is not param:
                module._parameters[attr] = param

    def _run_prepare_float(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At setup, sharded, QAT starting later: prepare the network (before ``configure_model`` shards it) and
        keep it float: fake quantization and observers off, so that it computes what the float network computes
        (a fused conv-bn with fake quantization off is conv then batch norm) until :meth:`_run_start_held`.

        The PT2E capture needs an example input now: without one (no ``example_input_array``, no training data the
        callback can read at setup, e.g. loaders given to ``fit``), the setting is refused (unsharded, the capture
        at the start takes the first training batch)."""
        from lightning_optim.callbacks._trainer import refuse_sharded

        if (
            not getattr(self.backend, "qat_in_place", True)
            and self._ensure_example(trainer, pl_module) is None
        ):
            given = (
                f"backend='auto' -> {self.backend_name!r}"
                if self.auto_backend
                else f"backend={self.backend_name!r}"
            )
            refuse_sharded(
                trainer,
                f"QuantizationAwareTraining({given}, start_epoch={self.start_epoch}, "
                f"start_after={self.start_after!r}) without an example input at setup",
                "QAT that starts after the first epoch is prepared at setup, before `configure_model` shards the "
                "network, and the PT2E capture needs an example input then (there is no `example_input_array` and "
                "no training data readable at setup)",
                "`pl_module.example_input_array` (or a data module with a train split), `backend='eager'` (prepared "
                'without an example), or DDP (`strategy="ddp"`)',
            )
            raise QuantizationError(
                f"{type(self).__name__}: backend={self.backend_name!r} captures the network with torch.export and "
                "needs an example input: give the Trainer training data or set `pl_module.example_input_array`."
            )
        self._prepare(pl_module, self._network(pl_module), epoch=None)
        # the structure only: QAT has not started (the phase is pending, nothing is observed or converted)
        self.prepared = False
        self.started_epoch = None
        self._needs_check = False
        self._run_held_flags(pl_module)

    def _run_held_flags(self, pl_module: pl.LightningModule) -> None:
        """A network held prepared (sharded, QAT starting later): fake quantization and observation as the
        callback's state says, whatever the restored buffers hold: off before the start; from the start fake
        quantization on and observation on until the ranges are frozen (the training epochs observe; validation
        turns it off in between, see ``_run_observe``)."""
        if not self._holding_float or self.converted:
            return
        model = self._network(pl_module)
        if not self.backend.is_prepared(model):
            return
        self.backend.set_fake_quant(model, self.prepared)
        if not self.prepared or self.observers_frozen:
            self.backend.freeze_observers(model)
        else:
            self._run_observe(pl_module, training=model.training)

    def _run_start_held(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The start of QAT on a network held prepared and float (sharded): fake quantization and observation on;
        what :meth:`_run_prepare` does at the start otherwise (zero masks, the start epoch, the message)."""
        self.prepared = True
        self.started_epoch = trainer.current_epoch
        self._needs_check = True
        self._zero_masks = None
        self._zero_weights = None
        self._run_held_flags(pl_module)
        model = self._network(pl_module)
        if self.verbose and self.fusion_plan is not None:
            rank_zero_info(
                f"QuantizationAwareTraining: QAT starts at epoch {trainer.current_epoch} (fake quantization of the "
                f"network prepared at setup switched on).\n{self.fusion_plan.summary()}"
            )
        if self.preserve_zeros:
            self._build_zero_masks(model)
        log_metrics(trainer, {"quantization/start_epoch": float(trainer.current_epoch)})

    def _run_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if self.input_shape is None or self._example is None or (self.prepared and self._needs_check):
            self._remember_input(batch_inputs(batch))
        if self.prepared and self._needs_check and self._example is not None:
            self._needs_check = False
            # a sharded network: checked on a gathered copy (a collective: every rank runs the first batch)
            self.backend.check_int8_forward(self._plain(pl_module, self._network(pl_module)), self._example)
        if self.prepared and self.preserve_zeros and self._zero_masks is None:
            self._build_zero_masks(self._network(pl_module))  # after a resume: from the loaded weights

    def _build_zero_masks(self, model: nn.Module) -> None:
        """Keep-masks of the layer weights (``*.weight``, 2-D or more) that hold exact zeros (pruned ones)."""
        weights = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "weight"}
        self._zero_masks = zero_masks(weights)
        self._zero_weights = {n: weights[n] for n in self._zero_masks}

    def _run_zero_masks(self) -> None:
        if self._zero_masks:
            apply_masks_(self._zero_weights or {}, self._zero_masks)

    def _run_observe(self, pl_module: pl.LightningModule, training: bool) -> None:
        """Observe ranges only on training batches (validation data must not move them)."""
        if not self.prepared or self.observers_frozen or self.converted:
            return
        model = target_model(pl_module, self.attribute)
        with torch.no_grad():
            for module in model.modules():
                flag = getattr(module, "observer_enabled", None)
                if isinstance(flag, Tensor):
                    flag.fill_(1 if training else 0)

    def _run_convert(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, replace: bool | None = None
    ) -> None:
        self._run_zero_masks()
        self._broadcast_state(trainer, self._network(pl_module))
        model = self._plain(pl_module, self._network(pl_module))  # a sharded network: a gathered copy
        self.quantized_model = self.backend.convert(model)
        self._say_conversion_notes()
        self.converted = replace is not False
        # fp32 accuracy: the same weights with fake quantization off
        fp32_view = copy.deepcopy(model).cpu().eval()
        self.backend.set_fake_quant(fp32_view, False)
        self.backend.freeze_observers(fp32_view)
        reference = self._float_reference if self._float_reference is not None else fp32_view
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        keep_replace = self.replace_model
        self.replace_model = bool(keep_replace and replace is not False and on_cpu)
        if keep_replace and replace is not False and not on_cpu:
            rank_zero_warn(
                "QuantizationAwareTraining: the model is not on the CPU; the int8 model was not put in pl_module."
            )
        try:
            # fp32 and int8 are the same weights at the same moment, after QAT (sizes and latency of fp32: the
            # float copy taken when QAT started, the same layers, so the same bytes and speed)
            epochs = trainer.current_epoch - self.started_epoch if self.started_epoch is not None else None
            trained = f"{epochs} epoch{'s' if epochs != 1 else ''} of QAT" if epochs else "QAT"
            self._finish(
                trainer,
                pl_module,
                reference,
                fp32_view,
                "model_int8.pt",
                "QAT: fp32 vs int8",
                # the ONNX file: the int8 graph with QAT's ranges, its residual adds calibrated on these
                calibration=lambda: [
                    x for x, _ in self._model_batches(trainer, pl_module, "train", ONNX_CALIBRATION_BATCHES)
                ],
                labels=("fp32 after QAT", "int8 after QAT"),
                accuracy_note=(
                    f"both are the weights after {trained}, fp32 with fake quantization off; weights trained "
                    "under fake quantization can depend on it (the more so in a short run that has not "
                    "converged), so their fp32 accuracy is no reference for int8"
                ),
            )
        finally:
            self.replace_model = keep_replace

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend_name,
            "prepared": self.prepared,
            "started_epoch": self.started_epoch,
            "observers_frozen": self.observers_frozen,
            "bn_frozen": self.bn_frozen,
            "converted": self.converted,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state_restored = True
        name = state_dict.get("backend")
        if self.auto_backend and name in self._auto_order:
            self._use_backend(name)
            self._chosen = True
            self.backend_choice = self.backend_choice or f"backend='auto' -> {name!r} (from the checkpoint)"
        self.prepared = bool(state_dict.get("prepared", self.prepared)) or self.prepared
        self.started_epoch = state_dict.get("started_epoch", self.started_epoch)
        self.observers_frozen = bool(state_dict.get("observers_frozen", False))
        self.bn_frozen = bool(state_dict.get("bn_frozen", False))
        self.converted = bool(state_dict.get("converted", False))
        shape = state_dict.get("input_shape")
        if shape is not None and self.input_shape is None:
            self.input_shape = tuple(shape)


class PostTrainingQuantization(_QuantizationCallbackBase):
    """Post-training static int8 quantization: calibrate on N batches of the data module, convert, report.

    Runs when training ends (``trainer.fit``) or at the end of ``trainer.validate`` (to quantize a trained
    model without training it further). The float network ``pl_module.<attribute>`` is copied, fused
    (folding batch norms), observed on ``calibration_batches`` batches of ``calibration_split`` (normalized
    as for evaluation, never augmented) and converted. The int8 model is :attr:`quantized_model`, saved as
    TorchScript, and reported like :class:`QuantizationAwareTraining` does. Under DDP rank 0's calibration is
    used on every rank.

    Mixed precision (``mixed_precision=True``, PT2E only): before calibrating, the layers that lose too much
    top-1 in int8 or gain nothing from int8 on this CPU are chosen by measurement
    (:func:`~lightning_optim.functional.quantization.mixed_precision.choose_float_layers`, on rank 0; every rank
    gets its choice) and kept in float, the rest int8. The plan is :attr:`mixed_precision_plan` (its table and
    summary are logged, ``quantization/float_layers`` is the number of layers kept float); it is part of the
    callback's state, so a run resumed from a checkpoint that holds it reuses it instead of planning again.

    Args:
        backend: the quantization stack, ``"auto"``, ``"pt2e"`` or ``"eager"`` (see
            :class:`QuantizationAwareTraining`).
        engine: the kernel target, ``"x86"`` or ``"fbgemm"`` (eager only).
        calibration_batches: batches run through the observed model.
        calibration_split: ``"train"``, ``"val"`` or ``"test"``.
        fuse: fuse conv-bn(-relu)/conv-relu/linear-relu chains.
        replace_model: put the int8 model in ``pl_module.<attribute>`` afterwards (CPU models only).
        export: save the int8 model.
        export_path: file for the export; default ``<trainer.log_dir>/quantization/model_int8_ptq.<suffix>``
            (versioned, never overwritten).
        export_format: one format or a list, ``None`` for the stack's own (see
            :class:`QuantizationAwareTraining`).
        report: measure and log the report.
        eval_batches: validation batches for the accuracy in the report (``None``: all).
        latency_batch_sizes: batch sizes at which fp32 and int8 are timed (empty: no timing).
        latency_repeats: timed runs per round.
        fp32_best_effort: fp32 speed-ups to try, ``"channels_last"`` and/or ``"compile"``.
        attribute: attribute of the LightningModule that holds the network.
        verbose: print the fusion summary and the report.
        dry_run: at setup (``fit`` or ``validate``), prepare, convert and run a copy of the network on an example
            input, so that a model the stack cannot quantize is refused before any epoch.
        mixed_precision: keep in float the layers that are sensitive or gain nothing from int8 on the CPU,
            chosen by measurement before calibration (PT2E only; see above).
        max_accuracy_drop: mixed precision: the top-1 the int8 model may lose against the float model, as a
            fraction (``0.005``: half a point); ``math.inf``: no sensitivity pass.
        min_int8_speedup: mixed precision: a layer whose int8 version, timed alone at its real input, is not at
            least this many times faster than its float version stays float (``0``: never for speed).
        mixed_precision_sensitivity: ``"int8_alone"`` (each layer alone int8, against the float model) or
            ``"float_alone"`` (each layer alone float, against the all-int8 model).
        mixed_precision_latency: time the layers (and the float, all-int8 and planned models) for the speed
            rule; ``False``: sensitivity only, no timing (deterministic, and much faster).
        mixed_precision_eval_batches: validation batches the plan's top-1 is measured on (``None``: the
            callback's ``eval_batches``).

    Raises:
        ValueError: an unknown ``backend``, ``engine``, ``calibration_split`` or ``mixed_precision_sensitivity``;
            ``calibration_batches < 1``; ``max_accuracy_drop < 0``, ``min_int8_speedup < 0``,
            ``mixed_precision_eval_batches < 1``; ``mixed_precision=True`` with ``backend="eager"`` (or with an
            ``engine``/``export_format`` only the eager stack serves).
        QuantizationError: a network with no conv/linear layer, no calibration data, or a forward that cannot
            run in int8; with ``mixed_precision``, ``backend="auto"`` choosing the eager stack for the model, or
            no validation batch to measure top-1 on.

    Example::

        ptq = PostTrainingQuantization(calibration_batches=32)
        Trainer(max_epochs=3, callbacks=[ptq]).fit(module, datamodule=dm)
        ptq.quantized_model(x)
    """

    #: under FSDP2, calibration and conversion work on a plain copy with the weights gathered from the shards
    #: (the same int8 model on every rank: rank 0's ranges are broadcast)
    sharded_parameters = "supported"

    def __init__(
        self,
        backend: str = "auto",
        engine: str = DEFAULT_ENGINE,
        calibration_batches: int = 32,
        calibration_split: str = "train",
        fuse: bool = True,
        replace_model: bool = True,
        export: bool = True,
        export_path: str | None = None,
        export_format: str | list[str] | None = None,
        report: bool = True,
        eval_batches: int | None = None,
        latency_batch_sizes: tuple[int, ...] = (1, 256),
        latency_repeats: int = 20,
        fp32_best_effort: tuple[str, ...] = FP32_BEST_EFFORT,
        attribute: str = "model",
        verbose: bool = True,
        dry_run: bool = True,
        mixed_precision: bool = False,
        max_accuracy_drop: float = 0.005,
        min_int8_speedup: float = 1.0,
        mixed_precision_sensitivity: str = "int8_alone",
        mixed_precision_latency: bool = True,
        mixed_precision_eval_batches: int | None = None,
    ) -> None:
        super().__init__(
            backend,
            engine,
            fuse,
            replace_model,
            export,
            export_path,
            report,
            eval_batches,
            latency_batch_sizes,
            latency_repeats,
            fp32_best_effort,
            attribute,
            verbose,
            export_format,
            dry_run,
        )
        if calibration_batches < 1:
            raise ValueError(f"`calibration_batches` must be >= 1, got {calibration_batches}.")
        check_choice("calibration_split", calibration_split, SPLITS)
        self.calibration_batches = calibration_batches
        self.calibration_split = calibration_split
        self.calibrated_batches = 0
        self.done = False
        self._init_mixed_precision(
            mixed_precision,
            max_accuracy_drop,
            min_int8_speedup,
            mixed_precision_sensitivity,
            mixed_precision_latency,
            mixed_precision_eval_batches,
        )

    #: the timer of the plan's speed rule (``None``: the median timer); tests inject a deterministic one
    _mixed_precision_timer: LayerTimer | None = None

    def _init_mixed_precision(
        self,
        mixed_precision: bool,
        max_accuracy_drop: float,
        min_int8_speedup: float,
        sensitivity: str,
        latency: bool,
        eval_batches: int | None,
    ) -> None:
        for option, value in (("mixed_precision", mixed_precision), ("mixed_precision_latency", latency)):
            if not isinstance(value, bool):
                raise TypeError(f"`{option}` must be True or False, got {type(value).__name__} {value!r}.")
        if eval_batches is not None and (
            isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 1
        ):
            raise ValueError(
                f"`mixed_precision_eval_batches` must be an integer >= 1 or None (the callback's `eval_batches`), "
                f"got {eval_batches!r}."
            )
        try:
            drop, speedup = check_plan_settings(
                max_accuracy_drop=max_accuracy_drop, min_speedup=min_int8_speedup, sensitivity=sensitivity
            )
        except (TypeError, ValueError) as err:  # the planner's option names -> this callback's
            message = str(err).replace("`min_speedup`", "`min_int8_speedup`")
            message = message.replace("`sensitivity`", "`mixed_precision_sensitivity`")
            raise type(err)(message) from err
        if mixed_precision:
            if not self.auto_backend and self.backend_name != "pt2e":
                raise ValueError(
                    f"`mixed_precision=True` needs `backend='pt2e'` (or 'auto'), got `backend={self.backend_name!r}`: "
                    "keeping layers in float uses PT2E's `exclude`, which the eager stack does not have."
                )
            if self.auto_backend and "pt2e" not in self._auto_order:
                raise ValueError(
                    f"`mixed_precision=True` needs the PT2E stack, which does not serve `engine={self.engine!r}` "
                    f"with `export_format={self._export_format_arg!r}` (PT2E: engine 'x86', formats "
                    f"{list(BACKEND_FORMATS['pt2e'])}): change those, or set `mixed_precision=False`."
                )
        self.mixed_precision = mixed_precision
        self.max_accuracy_drop = drop
        self.min_int8_speedup = speedup
        self.mixed_precision_sensitivity = sensitivity
        self.mixed_precision_latency = latency
        self.mixed_precision_eval_batches = eval_batches
        #: the plan of the layers kept float (``mixed_precision=True``), once made or restored; without its model
        self.mixed_precision_plan: MixedPrecisionPlan | None = None

    def _check_mixed_precision_backend(self) -> None:
        """With ``mixed_precision``, refuse a stack other than PT2E (what ``backend='auto'`` chose)."""
        if self.mixed_precision and self.backend_name != "pt2e":
            raise QuantizationError(
                f"PostTrainingQuantization: `mixed_precision=True` needs backend 'pt2e' (keeping layers in float "
                f"uses PT2E's `exclude`), but {self.backend_choice or f'backend={self.backend_name!r}'} for this "
                "model. Make the model capturable by torch.export (the reason is above), or set "
                "`mixed_precision=False`."
            )

    def mixed_precision_metric(self, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
        """The metric the mixed-precision plan compares models by (larger is better): top-1 accuracy of
        ``model`` on ``batches`` (the validation batches, on the CPU). Override it to plan on another metric;
        ``max_accuracy_drop`` is in its units."""
        return accuracy(model, batches)

    def _plan_float_layers(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module, inputs: list[Tensor]
    ) -> list[str]:
        """The layers to keep in float: the plan restored or made earlier, else a new one chosen on rank 0
        (its plain data broadcast, so that every rank keeps the same plan and layers)."""
        if self.mixed_precision_plan is None:
            data: dict[str, Any] | None = None
            if trainer.is_global_zero:
                data = self._make_plan(trainer, pl_module, model, inputs).to_dict()
            data = broadcast_from_rank0(trainer, data)
            assert data is not None
            self.mixed_precision_plan = MixedPrecisionPlan.from_dict(data)
            log_metrics(trainer, {"quantization/float_layers": float(len(self.mixed_precision_plan.exclude))})
        elif self.verbose:
            rank_zero_info(
                "PostTrainingQuantization: mixed precision reuses the plan made earlier (or restored from the "
                f"checkpoint): float layers {self.mixed_precision_plan.exclude or 'none'}."
            )
        return list(self.mixed_precision_plan.exclude)

    def _make_plan(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module, inputs: list[Tensor]
    ) -> MixedPrecisionPlan:
        limit = (
            self.mixed_precision_eval_batches
            if self.mixed_precision_eval_batches is not None
            else self.eval_batches
        )
        self.backend.exclude = []  # type: ignore[attr-defined] - a new plan starts from every layer int8
        val = list(self._model_batches(trainer, pl_module, "val", limit))
        if not val:
            raise QuantizationError(
                "PostTrainingQuantization: `mixed_precision=True` measures top-1 on the `val` split, and there is "
                "no validation batch (give the Trainer a datamodule or dataloaders with a val split)."
            )
        if self.verbose:
            rank_zero_info(
                f"PostTrainingQuantization: choosing the float layers (mixed precision: top-1 on {len(val)} val "
                f"batches, max_accuracy_drop {self.max_accuracy_drop:g}"
                + (f", min_int8_speedup {self.min_int8_speedup:g}x" if self.mixed_precision_latency else "")
                + ")..."
            )
        plan = choose_float_layers(
            model,
            self.backend,  # type: ignore[arg-type] - PT2E, checked by _check_mixed_precision_backend
            inputs[0],
            inputs,
            lambda m: self.mixed_precision_metric(m, val),
            max_accuracy_drop=self.max_accuracy_drop,
            min_speedup=self.min_int8_speedup,
            sensitivity=self.mixed_precision_sensitivity,
            measure_latency=self.mixed_precision_latency,
            timer=self._mixed_precision_timer,
        )
        plan.quantized_model = (
            None  # the callback converts the planned model itself (identical on every rank)
        )
        if self.verbose:
            rank_zero_info(
                f"PostTrainingQuantization: mixed precision plan\n{plan.table()}\n\n{plan.summary()}"
            )
            for note in plan.notes:
                rank_zero_info(f"PostTrainingQuantization: mixed precision: {note}")
        if not plan.met:
            rank_zero_warn(
                f"PostTrainingQuantization: even with {plan.exclude} in float the int8 model loses "
                f"{plan.drop(plan.metric_plan):.4g} of the metric, more than `max_accuracy_drop` "
                f"{self.max_accuracy_drop:g}."
            )
        if not plan.int8_layers:
            rank_zero_warn(
                "PostTrainingQuantization: mixed precision keeps every layer in float (int8 gains nothing for this "
                "model here); the 'int8' model is the float network."
            )
        return plan

    @property
    def state_key(self) -> str:
        # the key argument keeps its old name `backend` (with the engine, its old value): checkpoints resume
        return self._generate_state_key(backend=self.engine, attribute=self.attribute)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._run_sharded_setup(trainer, pl_module)
        if stage in ("fit", "validate") and not self.done:
            self._run_dry_run(trainer, pl_module, qat=False)
            if self._chosen:
                self._check_mixed_precision_backend()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_quantize(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._run_quantize(trainer, pl_module)

    def quantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> nn.Module:
        """Calibrate and convert now; returns the int8 model."""
        self._run_quantize(trainer, pl_module)
        assert self.quantized_model is not None
        return self.quantized_model

    def _run_sharded_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under a sharding strategy (FSDP2): keep the network's skeleton (its structure on the meta device,
        taken before ``configure_model`` shards it); calibration and conversion then run on a plain copy with
        the weights gathered from the shards, on every rank, and rank 0's ranges are broadcast (as under DDP)."""
        from lightning_optim.callbacks._trainer import refuse_sharded, sharded_strategy
        from lightning_optim.functional.sharding import is_sharded_module, skeleton

        self._skeleton = None
        if sharded_strategy(trainer) is None:
            return
        network = self._network(pl_module)
        if is_sharded_module(network):
            refuse_sharded(
                trainer,
                "PostTrainingQuantization",
                "the network was sharded before the callback's setup, so no plain copy of its structure can be "
                "taken to calibrate and convert (the weights are gathered into that copy)",
                "building and sharding the network as ClassificationModule(sharding='fsdp2') does (sharded in "
                '`configure_model`), or DDP (`strategy="ddp"`)',
            )
        self._skeleton = skeleton(network)

    def _float_network(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network to quantize: a sharded one as a plain copy with its weights gathered (a collective)."""
        return self._plain(pl_module, self._network(pl_module))

    def _run_quantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._float_network(pl_module)
        batches = iter(
            self._model_batches(trainer, pl_module, self.calibration_split, self.calibration_batches)
        )
        first = next(batches, None)  # also the example input (the PT2E capture)
        batches = itertools.chain([first] if first is not None else [], batches)
        if self.auto_backend and not self._chosen:
            self._run_dry_run(trainer, pl_module, qat=False, model=model)  # choose a stack
        if self.mixed_precision:
            self._check_mixed_precision_backend()
            listed = list(batches)  # the planner calibrates on them many times
            batches = iter(listed)
            inputs = [x for x, _ in listed]
            if not inputs:
                raise QuantizationError(
                    f"PostTrainingQuantization: no `{self.calibration_split}` batch to calibrate on "
                    "(give the Trainer a datamodule or dataloaders for that split)."
                )
            self.backend.exclude = self._plan_float_layers(trainer, pl_module, model, inputs)  # type: ignore[attr-defined]
        observed, self.fusion_plan = self.backend.prepare_ptq(model, fuse=self.fuse)
        if self.verbose:
            rank_zero_info(f"PostTrainingQuantization:\n{self.fusion_plan.summary()}")
        kept: list[Tensor] = []

        def inputs() -> Iterator[Tensor]:
            for x, _ in batches:
                if len(kept) < ONNX_CALIBRATION_BATCHES:
                    kept.append(x)
                yield x

        progress = work_progress(
            trainer, inputs(), desc=f"Calibrating on {self.calibration_split}", total=self.calibration_batches
        )
        with progress:
            self.calibrated_batches = self.backend.calibrate(observed, progress)
        if self.calibrated_batches == 0:
            raise QuantizationError(
                f"PostTrainingQuantization: no `{self.calibration_split}` batch to calibrate on "
                "(give the Trainer a datamodule or dataloaders for that split)."
            )
        self._broadcast_state(trainer, observed)
        self.quantized_model = self.backend.convert(observed)
        self._say_conversion_notes()
        if self._example is not None:
            self.backend.check_int8_forward(observed, self._example)
        self.done = True
        fp32 = copy.deepcopy(model).cpu().eval()
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        keep_replace = self.replace_model
        self.replace_model = keep_replace and on_cpu
        try:
            self._finish(
                trainer,
                pl_module,
                fp32,
                fp32,
                "model_int8_ptq.pt",
                "PTQ: fp32 vs int8",
                float_network=lambda: fp32,
                calibration=lambda: kept,
                labels=("fp32", f"int8 (PTQ, {self.calibrated_batches} calibration batches)"),
                accuracy_note=(
                    f"both are the same trained weights, int8 calibrated on {self.calibrated_batches} "
                    f"`{self.calibration_split}` batches; more `calibration_batches`, or QAT, narrows a drop, "
                    "and a model trained too briefly to converge can land either side"
                ),
            )
        finally:
            self.replace_model = keep_replace

    def state_dict(self) -> dict[str, Any]:
        plan = self.mixed_precision_plan
        return {
            "backend": self.backend_name,
            "done": self.done,
            "calibrated_batches": self.calibrated_batches,
            "mixed_precision_plan": plan.to_dict() if plan is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        name = state_dict.get("backend")
        if self.auto_backend and name in self._auto_order:
            self._use_backend(name)
            self._chosen = True
        self.done = bool(state_dict.get("done", False))
        self.calibrated_batches = int(state_dict.get("calibrated_batches", 0))
        plan = state_dict.get("mixed_precision_plan")
        self.mixed_precision_plan = MixedPrecisionPlan.from_dict(plan) if plan else None


__all__ = ["PostTrainingQuantization", "QuantizationAwareTraining"]
