"""CompressionReport: measure the model at fit start, at every compression phase boundary and at fit end."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_optim.callbacks._trainer import (
    broadcast_from_rank0,
    eval_batches,
    eval_loader,
    example_from_batch,
    known_input_shape,
    log_metrics,
    refuse_sharded,
    sharded_strategy,
    work_progress,
)
from lightning_optim.callbacks.phases import (
    find_phase,
    offered_model,
    phase_states,
    target_model,
    transition_label,
)
from lightning_optim.functional.compression_report.deploy import (
    ARTIFACT_FORMATS,
    pack_model_artifact,
    resolve_artifact_format,
)
from lightning_optim.functional.compression_report.measure import measure_model, weight_sparsity
from lightning_optim.functional.compression_report.report import (
    ARTIFACT_FORMAT_NOTES,
    add_ratios,
    format_markdown,
    format_paths,
    write_report,
)
from lightning_optim.functional.sharding import (
    gathered_copy,
    is_sharded_module,
    matching_skeleton,
    skeleton,
)

NO_TEST_LOADER = (
    "CompressionReport: the trainer has no test data (no datamodule with a `test_dataloader`, and no "
    "`test_dataloader` on the LightningModule); test metrics are skipped and the report shows sizes, "
    "FLOPs and latency only."
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class CompressionReport(Callback):
    r"""Measure the model before, during and after compression, and write a report a user can look at.

    A row is measured at fit start, at the end of every epoch at which the state of a compression phase
    changes (:func:`~lightning_optim.callbacks.phases.phase_states`: pruning ramp done, QAT started...) and at
    fit end; when a callback on the Trainer offers a compressed model other than the network
    (``compressed_model``, :func:`~lightning_optim.callbacks.phases.offered_model`: the int8 model of
    :class:`~lightning_optim.callbacks.QuantizationAwareTraining`), a last row measures that model. Each
    row holds parameters, non-zero parameters, weight sparsity, the ``torch.save`` state-dict size, the
    size of the compact deployable artifact (:mod:`lightning_optim.functional.artifact`) and its ratio to
    the dense fp32 state dict of the first row, FLOPs and MACs (``torch.utils.flop_counter``), CPU latency
    at each of ``latency_batch_sizes`` (median of ``latency_repeats`` runs after ``latency_warmup``, thread
    count stated) and test accuracy, loss and error on the test loader of the Trainer's data module (a clear
    message, not a crash, when there is none). Every epoch it also records weight sparsity, learning rate,
    train/val loss and val accuracy.

    At fit end it writes ``<filename>.md`` (table), ``<filename>.json`` (rows and per-epoch history) and
    ``<filename>.png`` (accuracy against size per stage; size and latency per stage; sparsity, LR and loss
    curves with the phases shaded) into ``dirpath`` (default: ``trainer.log_dir``, else
    ``default_root_dir``), optionally the final model's artifact ``<filename>.lopt`` (an exported program by
    default: ``load_artifact(path)`` runs it with torch alone), prints the table and the files (one per
    line, relative to the current directory), and logs the figures as ``compression/<stage>/<figure>``.
    Measurements run on rank 0, on the CPU, on a copy of the model; the measurements at fit start and fit
    end show a progress bar (when the Trainer shows its own).

    Args:
        latency_batch_sizes: batch sizes whose CPU latency is measured.
        latency_repeats: timed runs per batch size (the median is reported).
        latency_warmup: untimed runs before timing.
        latency_threads: intra-op threads for timing; ``None`` keeps torch's setting (stated in the report).
        test_metrics: evaluate on the test loader at each row.
        limit_test_batches: at most this many test batches per row (``None``: the whole test set).
        at_phase_boundaries: add a row when a phase's state changes.
        artifact_format: what the compact artifact (measured in every row, saved at fit end) holds:
            ``"exported_program"`` (default: the ``torch.export`` program, self-contained - torch alone loads
            and runs it; PT2E int8 models included; when ``torch.export`` cannot capture the model, the state
            dict with a warning that says why), ``"state_dict"`` (smallest; rebuilding a model needs its
            code) or ``"torchscript"`` (deprecated by torch). Each row records the format written
            (``artifact_format``).
        save_artifact: also write the final model's compact artifact (``<filename>.lopt``).
        dirpath: output folder.
        filename: stem of the output files.
        plot: draw the PNG (needs matplotlib; skipped with a message without it).
        input_shape: shape of one input sample (without batch), used when no test batch is available to
            take it from (else ``pl_module.example_input_array`` or the data module's ``input_shape``).
        attribute: the attribute of the LightningModule holding the network (``model``).
        verbose: print the table and the files at fit end.
        artifact_torchscript: deprecated (a :class:`FutureWarning`): ``True`` is
            ``artifact_format="torchscript"``, ``False`` is ``artifact_format="state_dict"``.

    Raises:
        ValueError: for empty or non-positive ``latency_batch_sizes``, ``latency_repeats`` < 1, a negative
            ``latency_warmup``, ``latency_threads`` < 1, ``limit_test_batches`` < 1, an unknown
            ``artifact_format`` (naming the allowed ones), an empty ``filename`` or an ``input_shape`` with
            non-positive sizes.

    Example::

        from lightning_optim.callbacks import CompressionReport, ProgressivePruning
        trainer = Trainer(max_epochs=20, callbacks=[ProgressivePruning(final_sparsity=0.95), CompressionReport()])
        trainer.fit(module, datamodule=dm)   # -> <log_dir>/compression_report.{md,json,png}
    """

    #: under FSDP2 each measurement works on a gathered copy of the network (see ``_network_to_measure``)
    sharded_parameters = "supported"

    #: the allowed ``artifact_format`` values (the first is the default)
    ARTIFACT_FORMATS: tuple[str, ...] = ARTIFACT_FORMATS

    def __init__(
        self,
        latency_batch_sizes: tuple[int, ...] = (1, 256),
        latency_repeats: int = 20,
        latency_warmup: int = 3,
        latency_threads: int | None = None,
        test_metrics: bool = True,
        limit_test_batches: int | None = None,
        at_phase_boundaries: bool = True,
        artifact_format: str = "exported_program",
        save_artifact: bool = True,
        dirpath: str | None = None,
        filename: str = "compression_report",
        plot: bool = True,
        input_shape: tuple[int, ...] | None = None,
        attribute: str = "model",
        verbose: bool = True,
        artifact_torchscript: bool | None = None,
    ) -> None:
        sizes = tuple(int(b) for b in latency_batch_sizes)
        if not sizes or any(b < 1 for b in sizes):
            raise ValueError(
                f"`latency_batch_sizes` must be a non-empty list of sizes >= 1, got {latency_batch_sizes}."
            )
        if latency_repeats < 1:
            raise ValueError(f"`latency_repeats` must be >= 1, got {latency_repeats}.")
        if latency_warmup < 0:
            raise ValueError(f"`latency_warmup` must be >= 0, got {latency_warmup}.")
        if latency_threads is not None and latency_threads < 1:
            raise ValueError(
                f"`latency_threads` must be >= 1 or None (torch's setting), got {latency_threads}."
            )
        if limit_test_batches is not None and limit_test_batches < 1:
            raise ValueError(f"`limit_test_batches` must be >= 1 or None (all), got {limit_test_batches}.")
        if not filename:
            raise ValueError("`filename` must be a non-empty file stem, e.g. 'compression_report'.")
        if input_shape is not None and (not input_shape or any(int(s) < 1 for s in input_shape)):
            raise ValueError(
                f"`input_shape` must be the shape of one sample with sizes >= 1, got {input_shape}."
            )
        self.latency_batch_sizes = sizes
        self.latency_repeats = latency_repeats
        self.latency_warmup = latency_warmup
        self.latency_threads = latency_threads
        self.test_metrics = test_metrics
        self.limit_test_batches = limit_test_batches
        self.at_phase_boundaries = at_phase_boundaries
        self.artifact_format = resolve_artifact_format(artifact_format, artifact_torchscript)
        self.save_artifact = save_artifact
        self.dirpath = dirpath
        self.filename = filename
        self.plot = plot
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.attribute = attribute
        self.verbose = verbose
        self.rows: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.paths: dict[str, str] = {}
        #: what the saved ``<filename>.lopt`` holds (``None`` until it is written)
        self.artifact_written: str | None = None
        self._last_phases: dict[str, str] | None = None
        self._example: Tensor | None = None
        self._pending_start = False
        #: under a sharding strategy: the network's structure on the meta device, taken at setup (before
        #: ``configure_model`` shards it); each measurement gathers the weights into a copy of it
        self._skeleton: nn.Module | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename, dirpath=self.dirpath)

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._run_setup(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_fit_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._run_first_batch(trainer, pl_module, batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_epoch_end(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_fit_end(trainer, pl_module)

    # ------------------------------------------------------------------------------------------ work
    def _run_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under a sharding strategy (FSDP2), keep the network's skeleton: every measurement, and the artifact,
        work on a plain copy with the weights gathered from the shards (rank 0 measures it, as under DDP)."""
        self._skeleton = None
        if sharded_strategy(trainer) is None:
            return
        network = target_model(pl_module, self.attribute)
        if is_sharded_module(network):
            refuse_sharded(
                trainer,
                "CompressionReport",
                "the network was sharded before the callback's setup, so no plain copy of its structure can be "
                "taken (the report measures a gathered copy)",
                "building and sharding the network as ClassificationModule(sharding='fsdp2') does (sharded in "
                '`configure_model`), or DDP (`strategy="ddp"`)',
            )
        self._skeleton = skeleton(network)

    def _network_to_measure(self, pl_module: pl.LightningModule, model: nn.Module | None = None) -> nn.Module:
        """``model``, else the network; a sharded network as a plain copy with the weights gathered from its
        shards (a collective: every rank calls this, in the same order)."""
        network = model if model is not None else target_model(pl_module, self.attribute)
        if not is_sharded_module(network):
            return network
        # the LightningModule's skeleton (taken just before sharding, after every callback's setup: a network
        # prepared for QAT at setup) or this callback's own, whichever has the sharded network's names
        plain = matching_skeleton(network, getattr(pl_module, "unsharded_skeleton", None), self._skeleton)
        if plain is None:
            raise ValueError(
                "CompressionReport: the sharded network has no plain skeleton to gather its weights into (shard "
                "it in `configure_model` as ClassificationModule(sharding='fsdp2') does, after the callbacks' "
                "setup)."
            )
        return gathered_copy(network, plain)

    def _run_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_phases is None:
            self._last_phases = dict(phase_states(trainer))
        if self.rows:  # resumed: the fit-start row is already in the restored state
            return
        if (
            self._example is None
            and known_input_shape(trainer, pl_module, self.input_shape) is None
            and not self._has_test_data(trainer, pl_module)
        ):
            self._pending_start = True  # no shape known yet: measure on the first training batch
            return
        self._measure_with_progress(trainer, pl_module, "fit start")

    def _run_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if self._example is None:
            example = example_from_batch(batch, n=2)
            if example is not None:
                self._example = example.float()
        if self._pending_start:
            self._pending_start = False
            self._measure(trainer, pl_module, "fit start")  # inside the training loop: its bar is on screen

    def _run_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        states = dict(phase_states(trainer))
        model = target_model(pl_module, self.attribute)
        metrics = trainer.callback_metrics
        entry: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1,  # epochs completed
            "step": trainer.global_step,
            "weight_sparsity": weight_sparsity(model),
            "lr": self._learning_rate(trainer),
            "phases": states,
        }
        for key, names in (
            ("train_loss", ("train_loss_epoch", "train_loss")),
            ("val_loss", ("val_loss",)),
            ("val_acc", ("val_acc",)),
        ):
            value = next((metrics[n] for n in names if n in metrics), None)
            entry[key] = float(value) if value is not None else None
        self.history.append(broadcast_from_rank0(trainer, entry))  # per-rank losses differ: keep rank 0's
        if self.at_phase_boundaries and self._last_phases is not None and states != self._last_phases:
            changed = [
                transition_label(trainer, n, s, self._last_phases.get(n))
                for n, s in states.items()
                if self._last_phases.get(n) != s
            ]
            self._measure(trainer, pl_module, ", ".join(changed), epoch=trainer.current_epoch + 1)
        self._last_phases = states

    def _run_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        quantized = offered_model(trainer)
        sharded = target_model(pl_module, self.attribute)
        network = self._network_to_measure(pl_module)  # a sharded network: gathered once, on every rank
        extra = quantized is not None and quantized is not sharded and quantized is not network
        # one step per measured model, one for the files, one for the artifact
        total = 1 + int(extra) + 1 + int(self.save_artifact)
        with work_progress(trainer, desc="Compression report (fit end)", total=total) as bar:
            self._measure(trainer, pl_module, "fit end", model=network, progress=_labeller(bar, "fit end"))
            bar.update(1)
            if extra:
                if self.rows[-1].get("precision") != "int8":
                    self._measure(
                        trainer, pl_module, "int8", model=quantized, progress=_labeller(bar, "int8")
                    )
                bar.update(1)
            add_ratios(self.rows)  # on every rank: the rows (callback state) stay identical
            # on every rank: ``trainer.log_dir`` is a collective (broadcast) under DDP
            dirpath = self.dirpath or trainer.log_dir or trainer.default_root_dir
            if not trainer.is_global_zero or not self.rows:
                return
            paths: dict[str, str] = {}
            if self.save_artifact:
                # written first: a fallback to the state dict is a note under the table
                bar.set_postfix_str("saving the compact artifact", refresh=True)
                final = quantized if quantized is not None else network
                os.makedirs(dirpath, exist_ok=True)
                path = os.path.join(dirpath, f"{self.filename}.lopt")
                example = self._example[:1] if self._example is not None else None
                last = self.rows[-1]
                _, self.artifact_written, note = pack_model_artifact(
                    _on_cpu(final),
                    example,
                    self.artifact_format,
                    path=path,
                    verify=example is not None,
                    # the last row measured this model: its fallback was warned about already (same reason)
                    warn=not last.get("artifact_note"),
                )
                if note:
                    self._add_note(note)
                paths["artifact"] = path
                bar.update(1)
            bar.set_postfix_str("writing the report", refresh=True)
            if self.plot and not _has_matplotlib():
                self._note("PNG not drawn: matplotlib is not installed (pip install matplotlib).")
            notes = list(self.notes)
            notes.extend(_weight_sharing_notes(trainer))
            if "artifact" in paths:
                notes.append(
                    f"Deployable model: {os.path.basename(paths['artifact'])}, "
                    f"{ARTIFACT_FORMAT_NOTES.get(self.artifact_written or '', self.artifact_written)}."
                )
            self.paths = write_report(self.rows, dirpath, self.filename, self.history, notes, plot=self.plot)
            self.paths.update(paths)
            bar.update(1)
        self._log_rows(trainer)
        if self.verbose:
            rank_zero_info(
                "\n"
                + format_markdown(self.rows, self.notes)
                + "\n"
                + format_paths(self.paths, artifact_format=self.artifact_written)
            )

    # ------------------------------------------------------------------------------------------ helpers
    def _measure_with_progress(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        with work_progress(trainer, desc=f"Compression report ({stage})", total=1) as bar:
            self._measure(trainer, pl_module, stage, progress=_labeller(bar, stage))
            bar.update(1)

    def _measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        model: nn.Module | None = None,
        epoch: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        row: dict[str, Any] | None = None
        network = self._network_to_measure(pl_module, model)  # every rank: gathering is a collective
        if trainer.is_global_zero:
            batches = list(self._test_batches(trainer, pl_module)) if self.test_metrics else None
            if batches is not None and not batches:
                batches = None
            example = self._example_input(trainer, pl_module, batches)
            with torch.random.fork_rng(devices=[]):  # the report must not change the run's random stream
                row = measure_model(
                    network,
                    example,
                    stage=stage,
                    batches=batches,
                    latency_batch_sizes=self.latency_batch_sizes,
                    latency_repeats=self.latency_repeats,
                    latency_warmup=self.latency_warmup,
                    threads=self.latency_threads,
                    artifact=True,
                    artifact_format=self.artifact_format,
                    progress=progress,
                )
            if row.get("artifact_note"):  # the reason (warned once by the measurement), once under the table
                self._add_note(row["artifact_note"])
            row["epoch"] = trainer.current_epoch if epoch is None else epoch  # epochs completed
            row["step"] = trainer.global_step
            row["phases"] = dict(phase_states(trainer))
        # rank 0 measures; every rank keeps the same rows (identical callback state in checkpoints)
        row, self._example, self.notes = broadcast_from_rank0(trainer, (row, self._example, self.notes))
        self.rows.append(row)

    def _test_batches(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Test ``(inputs, targets)`` on the CPU as the model sees them at evaluation; a note when there is none."""
        loader = eval_loader(trainer, pl_module, "test")
        if loader is None:
            self._note(NO_TEST_LOADER)
            return iter(())
        return eval_batches(trainer, pl_module, "test", limit=self.limit_test_batches, loader=loader)

    def _has_test_data(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        return bool(self.test_metrics) and eval_loader(trainer, pl_module, "test") is not None

    def _example_input(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batches: list | None
    ) -> Tensor:
        if batches:
            self._example = batches[0][0][:2].clone()
        if self._example is not None:
            return self._example
        example_array = getattr(pl_module, "example_input_array", None)
        if self.input_shape is None and isinstance(example_array, Tensor):
            self._example = example_array.detach().float().cpu()
            return self._example
        shape = known_input_shape(trainer, pl_module, self.input_shape)
        if shape is None:
            raise ValueError(
                "CompressionReport needs an example input: give `input_shape` (one sample, e.g. [1, 28, 28]), set "
                "`example_input_array` on the LightningModule, or use a data module with a test loader or `input_shape`."
            )
        self._example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        return self._example

    @staticmethod
    def _learning_rate(trainer: pl.Trainer) -> float | None:
        if not trainer.optimizers:
            return None
        return float(trainer.optimizers[0].param_groups[0]["lr"])

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            rank_zero_warn(message)

    def _add_note(self, message: str) -> None:
        """A note under the table, without a second warning (the measurement warned already)."""
        if message not in self.notes:
            self.notes.append(message)

    def _log_rows(self, trainer: pl.Trainer) -> None:
        if not trainer.loggers:
            return
        for row in self.rows:
            prefix = f"compression/{_slug(row['stage'])}"
            metrics = {
                f"{prefix}/{k}": float(v)
                for k, v in row.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")
            }
            log_metrics(trainer, metrics, step=row.get("step", trainer.global_step))
        for logger in trainer.loggers:
            logger.save()

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": [dict(r) for r in self.rows],
            "history": [dict(h) for h in self.history],
            "notes": list(self.notes),
            "last_phases": dict(self._last_phases) if self._last_phases is not None else None,
            "example": self._example.clone() if self._example is not None else None,
            "pending_start": self._pending_start,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.notes = list(state_dict.get("notes", []))
        last = state_dict.get("last_phases")
        self._last_phases = dict(last) if last is not None else None
        self._example = state_dict.get("example")
        self._pending_start = bool(state_dict.get("pending_start", False))


def _weight_sharing_notes(trainer: pl.Trainer) -> list[str]:
    """The weight-sharing artifact of the run (``WeightSharing``), its size and where its bytes go, per layer."""
    sharing = find_phase(trainer, "weight_sharing")
    breakdown = getattr(sharing, "size_breakdown", None)
    path = getattr(sharing, "exported_path", None)
    curve = _curve_note(getattr(sharing, "curve", None))
    if breakdown is None or path is None:
        return curve
    dense = getattr(sharing, "dense_bytes", None)
    ratio = (
        f", {dense / max(1, breakdown.total):.1f}x smaller than the dense fp32 state dict" if dense else ""
    )
    layers = "; ".join(
        f"{e.name} {e.total:,} B ({e.kind}{f', k={e.k}' if e.k else ''}: codebook {e.codebook}, indices {e.indices}, "
        f"positions {e.positions}, other {e.other})"
        for e in breakdown.entries
        if e.kind == "shared"
    )
    parts = breakdown.parts()
    return [
        f"Weight-sharing artifact: {os.path.basename(str(path))}, {breakdown.total:,} bytes{ratio} (codebooks "
        f"{parts['codebook']:,}, indices {parts['indices']:,}, positions {parts['positions']:,}, other "
        f"{parts['other']:,}, header {parts['header']:,}); per shared layer: {layers}. Load it with "
        "lightning_optim.functional.weight_sharing.load_shared(path, <the architecture>) (torch alone)."
    ] + curve


def _curve_note(rows: Any) -> list[str]:
    """One line for ``WeightSharing``'s size-accuracy curve (``curve_budgets``), ``[]`` without one."""
    if not rows:
        return []
    points = []
    for row in rows:
        if row.get("metric") is None:
            points.append(f"{int(row['budget']):,} B: {row.get('note') or 'not met'}")
        else:
            points.append(
                f"{int(row['budget']):,} B: {100 * float(row['metric']):.1f}% ({int(row['bytes']):,} B)"
            )
    return [
        "Size-accuracy curve (post-training sharing of the network when sharing started, top-1 on recent "
        f"training batches): {'; '.join(points)}."
    ]


def _labeller(bar: Any, stage: str) -> Callable[[str], None]:
    """A ``progress`` callback for :func:`measure_model` that shows the current step beside ``bar``."""

    def label(what: str) -> None:
        bar.set_postfix_str(f"{stage}: {what}", refresh=True)

    return label


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when all its tensors are on the CPU, else a CPU copy (the artifact is captured there)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
