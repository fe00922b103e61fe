"""``python -m lightning_optim.demo`` (``make demo``): dense -> pruned -> int8 on the embedded digits, measured.

No download: the data are the 1,797 8x8 handwritten digits bundled with the package. The demo tells the
library's story in one run (well under a minute on 2 cores, imports included) and writes every file into a new
run folder, ``runs/demo-YYYYMMDD-HHMMSS`` (``-2``, ``-3``... when that name is taken; never overwritten):

1. :func:`train_dense` - a small residual CNN (:class:`~lightning_optim.models.SmallResNet`) trained dense;
   ``dense.ckpt`` (Lightning) and ``dense_fp32.pt`` (its state dict, the size reference);
2. :func:`prune` - a short fine-tune with
   :class:`~lightning_optim.callbacks.ProgressivePruning` (``granularity="channel_groups"``): a ramp to
   ``sparsity`` of the channels of every coupling group (the residual additions tie a stage's stream), then
   fine-tuning, then compaction (the channels are removed); ``pruned.ckpt`` and ``pruned_fp32.pt`` (both
   checkpoints load with ``ClassificationModule.load_from_checkpoint(path, model=SmallResNet())``);
3. :func:`quantize` - :class:`~lightning_optim.callbacks.PostTrainingQuantization` of the pruned network
   (``backend="auto"``: PT2E) to ``model_int8.pt2`` (a ``torch.export`` program) and, where ``onnxruntime`` is
   installed (the ``dev``/``onnx`` extras), ``model_int8.onnx`` (written by ONNX Runtime's own quantizer);
4. :func:`measure` - test accuracy, parameters and file bytes of every stage, and its latency at batch 256
   on one thread, timed interleaved against the dense fp32 eager model on the same inputs;
5. :func:`format_table` - the printed table (at most 100 columns), also written to ``report.md`` with the
   figures in ``report.json``.

Every figure printed is measured in the run that prints it; the line under the table names the int8 file
and runtime that gave the speed-up.

Example::

    python -m lightning_optim.demo --epochs 10 --seed 1
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import logging
import os
import platform
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_optim.callbacks import (
    CompressionPipeline,
    CompressionReport,
    EarlyStopping,
    KnowledgeDistillation,
    PostTrainingQuantization,
    ProgressivePruning,
    QuantizationAwareTraining,
    WarmStart,
)
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.functional.compression_report.measure import compare_latency, count_parameters
from lightning_optim.functional.compression_report.report import format_markdown
from lightning_optim.models import LeNet300100, SmallResNet
from lightning_optim.modules import ClassificationModule

#: the speed-up at batch 256 the int8 model must reach over the dense fp32 eager model
TARGET_SPEEDUP = 2.0
#: the most test accuracy (in points) the int8 model may lose against the dense model
TARGET_ACCURACY_DROP = 1.0
#: the widest line of the printed table
TABLE_WIDTH = 100
#: dependency warnings (none about a format we ship) that would crowd the first screen: (message regex, category);
#: every other warning shows
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # lightning's utilities/_pytree.py builds torch's deprecated LeafSpec (Lightning's code, not ours)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
_ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")


@dataclass
class DemoConfig:
    """Settings of the demo run (the defaults take about 20 s on 2 cores, imports included).

    Attributes:
        epochs: dense training epochs.
        finetune_epochs: epochs of the pruning fine-tune (the ramp, then fine-tuning of the final masks).
        ramp_epochs: the pruning events are at the start of fine-tune epochs ``0..ramp_epochs`` (cubic ramp to
            ``sparsity``); at most ``finetune_epochs - 1``, so the final masks are fine-tuned at least one epoch.
        sparsity: fraction of the channels of each coupling group removed.
        batch_size: training batch size.
        lr: AdamW learning rate of the dense training (cosine decay).
        finetune_lr: AdamW learning rate of the fine-tune (cosine decay).
        weight_decay: L2 on weights (never on biases and norms).
        calibration_batches: training batches the int8 ranges are calibrated on.
        latency_batch_size: the batch size timed.
        latency_repeats: timed runs of each model per round.
        latency_rounds: interleaved rounds (the median of the per-round medians is reported).
        seed: random seed (weights, data split, batch order).
        threads: torch CPU threads for training (timing always runs on one).
        progress: show Lightning's progress bars and info lines.
        runs_dir: the folder the run folder is created in.
        onnx: write and time the ONNX file (``None``: when onnx, onnxscript and onnxruntime are installed).
    """

    epochs: int = 10
    finetune_epochs: int = 10
    ramp_epochs: int = 4
    sparsity: float = 0.5
    batch_size: int = 64
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    weight_decay: float = 1e-4
    calibration_batches: int = 8
    latency_batch_size: int = 256
    latency_repeats: int = 3
    latency_rounds: int = 15
    seed: int = 0
    #: one thread: for a model this small, a second OpenMP thread costs more in synchronization than it
    #: gains, and on a busy machine it is many times slower (measured: 1.0 s vs 23 s for 2 epochs)
    threads: int = 1
    progress: bool = False
    runs_dir: str = "runs"
    onnx: bool | None = None


@dataclass
class StageRow:
    """One line of the table: a model as saved in the run folder, measured.

    Attributes:
        stage: ``"dense"``, ``"pruned"`` or ``"int8"``.
        fmt: the number format and file kind (``"fp32"``, ``".onnx"``, ``".pt2"``).
        runtime: what ran it for the accuracy and the timing.
        path: the file measured (its bytes are :attr:`file_bytes`).
        file_bytes: size of :attr:`path` on disk.
        parameters: parameter entries of the network (int8 files: those of the float network quantized).
        test_accuracy: accuracy on the test split.
        latency_ms: median latency at the timed batch size, one thread.
        speedup: dense latency / this latency (same inputs, interleaved).
        smaller: dense state-dict bytes / :attr:`file_bytes`.
    """

    stage: str
    fmt: str
    runtime: str
    path: Path
    file_bytes: int
    parameters: int
    test_accuracy: float
    latency_ms: float
    speedup: float = 1.0
    smaller: float = 1.0


@dataclass
class DemoResult:
    """What the demo measured and wrote.

    Attributes:
        run_dir: the run folder (created by this run).
        rows: the measured stages, dense first.
        best: the int8 row with the largest speed-up (``None`` without an int8 row).
        files: name -> path of every file written.
        table: the printed table.
        notes: lines printed under the table.
        targets: ``{"speedup", "smaller", "accuracy"}`` -> whether the best int8 row meets it.
        seconds: wall time of each stage and in total.
        pruned_channels: ``(removed, total)`` channels of the coupling groups pruned.
        info: data sizes, versions, threads, batch size, load average.
    """

    run_dir: Path
    rows: list[StageRow]
    best: StageRow | None
    files: dict[str, Path]
    table: str
    notes: list[str]
    targets: dict[str, bool]
    seconds: dict[str, float] = field(default_factory=dict)
    pruned_channels: tuple[int, int] = (0, 0)
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, stage: str, fmt: str | None = None) -> StageRow:
        """The row of ``stage`` (and ``fmt``, for the int8 files)."""
        for r in self.rows:
            if r.stage == stage and (fmt is None or r.fmt == fmt):
                return r
        raise KeyError((stage, fmt))


# ------------------------------------------------------------------------------------------------ setup
def make_run_dir(root: str | Path = "runs", prefix: str = "demo") -> Path:
    """Create and return a new run folder ``<root>/<prefix>-YYYYMMDD-HHMMSS`` (``-2``, ``-3``... when that name
    is taken): the creation is atomic, so two runs never share (or overwrite) one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    k = 1
    while True:
        candidate = root / (f"{prefix}-{stamp}" if k == 1 else f"{prefix}-{stamp}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            k += 1


def onnx_available() -> bool:
    """Whether onnx, onnxscript and onnxruntime are installed (the ONNX file and its runtime)."""
    return all(importlib.util.find_spec(m) is not None for m in _ONNX_MODULES)


@contextmanager
def quiet(info: bool = False) -> Iterator[None]:
    """The dependency warnings of :data:`QUIET_WARNINGS` ignored (by exact message; every other warning still
    shows) and, unless ``info``, Lightning's info lines (accelerator, logger tips) off; restored on exit."""
    loggers = [] if info else [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def build_data(config: DemoConfig) -> ImageClassificationDataModule:
    """The embedded 8x8 digits, 10% of the training split held out for validation (z-score fitted on the
    training split only)."""
    datamodule = ImageClassificationDataModule("digits", batch_size=config.batch_size, seed=config.seed)
    datamodule.setup("fit")
    return datamodule


def build_module(network: nn.Module, lr: float, epochs: int, weight_decay: float) -> ClassificationModule:
    """:class:`ClassificationModule` around ``network``: AdamW with cosine decay over ``epochs``."""
    return ClassificationModule(
        network,
        optimizer="adamw",
        lr=lr,
        weight_decay=weight_decay,
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
    )


def build_trainer(
    config: DemoConfig, max_epochs: int = 1, callbacks: list[pl.Callback] | None = None
) -> pl.Trainer:
    """A quiet CPU Trainer: no logger, no checkpoint callback (the demo saves its own), no model summary."""
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=config.progress,
        callbacks=callbacks or [],
        num_sanity_val_steps=0,
    )


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _save_state_dict(model: nn.Module, path: Path) -> Path:
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path


# ------------------------------------------------------------------------------------------------ stages
def train_dense(
    config: DemoConfig, datamodule: ImageClassificationDataModule, run_dir: Path
) -> tuple[ClassificationModule, dict[str, Path]]:
    """Stage 1: train :class:`SmallResNet` dense; saves ``dense.ckpt`` and ``dense_fp32.pt`` (state dict)."""
    channels, _, _ = datamodule.input_shape
    network = SmallResNet(in_channels=channels, num_classes=datamodule.num_classes)
    module = build_module(network, config.lr, config.epochs, config.weight_decay)
    trainer = build_trainer(config, config.epochs)
    trainer.fit(module, datamodule=datamodule)
    files = {"dense.ckpt": run_dir / "dense.ckpt"}
    trainer.save_checkpoint(files["dense.ckpt"], weights_only=True)
    files["dense_fp32.pt"] = _save_state_dict(module.model, run_dir / "dense_fp32.pt")
    return module, files


def prune(
    config: DemoConfig, dense: nn.Module, datamodule: ImageClassificationDataModule, run_dir: Path
) -> tuple[ClassificationModule, ProgressivePruning, dict[str, Path]]:
    """Stage 2: fine-tune a copy of ``dense`` under channel-group pruning, compacted at the end (the pruned
    channels are removed); saves ``pruned.ckpt`` and ``pruned_fp32.pt``."""
    module = build_module(
        copy.deepcopy(dense), config.finetune_lr, config.finetune_epochs, config.weight_decay
    )
    pruning = ProgressivePruning(
        final_sparsity=config.sparsity,
        start=0,
        end=max(0, min(config.ramp_epochs, config.finetune_epochs - 1)),
        unit="epoch",
        granularity="channel_groups",
        compact_at_end=True,
        verbose=False,
    )
    trainer = build_trainer(config, config.finetune_epochs, [pruning])
    trainer.fit(module, datamodule=datamodule)
    files = {"pruned.ckpt": run_dir / "pruned.ckpt"}
    trainer.save_checkpoint(files["pruned.ckpt"], weights_only=True)
    files["pruned_fp32.pt"] = _save_state_dict(module.model, run_dir / "pruned_fp32.pt")
    return module, pruning, files


def quantize(
    config: DemoConfig,
    module: ClassificationModule,
    datamodule: ImageClassificationDataModule,
    run_dir: Path,
    onnx: bool,
) -> tuple[PostTrainingQuantization, dict[str, Path]]:
    """Stage 3: post-training int8 quantization of the pruned network (PT2E), calibrated on training
    batches; writes ``model_int8.pt2`` and, with ``onnx``, ``model_int8.onnx`` (ONNX Runtime's quantizer)."""
    ptq = PostTrainingQuantization(
        backend="auto",
        calibration_batches=config.calibration_batches,
        export_path=str(run_dir / "model_int8.pt2"),
        export_format=["pt2", "onnx"] if onnx else ["pt2"],
        replace_model=False,
        report=False,
        verbose=False,
    )
    build_trainer(config, callbacks=[ptq]).validate(module, datamodule=datamodule, verbose=False)
    files = {p.name: p for p in ptq.exported_paths.values()}
    return ptq, files


def _with_state(model: nn.Module, path: Path) -> nn.Module:
    """A CPU copy of ``model`` in eval mode holding the state dict saved at ``path``."""
    copied = copy.deepcopy(model).cpu().eval()
    copied.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return copied


def _accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(-1) == y).float().mean())


def _file_bytes(path: Path) -> int:
    """Bytes of ``path`` (an ONNX file with its external data file, if any)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if path.suffix == ".onnx" and data.is_file() else 0)


def measure(
    config: DemoConfig,
    datamodule: ImageClassificationDataModule,
    dense: nn.Module,
    pruned: nn.Module,
    files: dict[str, Path],
) -> list[StageRow]:
    """Stage 4: every stage measured from the files in the run folder.

    Test accuracy on the whole test split; parameters; bytes of the file on disk; latency at
    ``config.latency_batch_size`` on one thread, all models timed in interleaved rounds on the same inputs
    (:func:`~lightning_optim.functional.compression_report.measure.compare_latency`). The int8 rows run the
    deploy files as written: ``model_int8.onnx`` in ONNX Runtime, ``model_int8.pt2`` loaded by
    ``torch.export`` (the uncompiled int8 graph).
    """
    from lightning_optim.functional.quantization.pt2e import load_pt2

    x = datamodule.to_model_input(datamodule.test_split.images)
    y = datamodule.test_split.labels
    # the timed batch: the first test images (repeated when the test split is smaller than the batch)
    reps = -(-config.latency_batch_size // x.shape[0])
    batch = x.repeat(reps, *([1] * (x.dim() - 1)))[: config.latency_batch_size].contiguous()
    # the fp32 networks with the weights of their files (the architectures: the trained modules')
    dense, pruned = (
        _with_state(m, files[f]) for m, f in ((dense, "dense_fp32.pt"), (pruned, "pruned_fp32.pt"))
    )
    pruned_params = count_parameters(pruned)
    candidates: list[tuple[str, str, str, Path, int, Callable[[Tensor], Tensor]]] = [
        ("dense", "fp32", "torch eager", files["dense_fp32.pt"], count_parameters(dense), dense),
        ("pruned", "fp32", "torch eager", files["pruned_fp32.pt"], pruned_params, pruned),
    ]
    if "model_int8.onnx" in files:
        import onnxruntime

        from lightning_optim.functional.quantization.onnx import OnnxRunner

        runner = OnnxRunner(files["model_int8.onnx"], threads=1)
        runtime = f"ONNX Runtime {onnxruntime.__version__}"
        candidates.append(("int8", ".onnx", runtime, files["model_int8.onnx"], pruned_params, runner))
    if "model_int8.pt2" in files:
        program = load_pt2(files["model_int8.pt2"])
        candidates.append(("int8", ".pt2", "torch.export", files["model_int8.pt2"], pruned_params, program))
    accuracies = [_accuracy(model, x, y) for *_, model in candidates]
    timed = compare_latency(
        {str(i): c[-1] for i, c in enumerate(candidates)},
        batch,
        repeats=config.latency_repeats,
        warmup=1,
        rounds=config.latency_rounds,
        threads=1,
    )
    rows = [
        StageRow(stage, fmt, runtime, path, _file_bytes(path), params, acc, timed[str(i)]["median_ms"])
        for i, ((stage, fmt, runtime, path, params, _), acc) in enumerate(zip(candidates, accuracies))
    ]
    for r in rows:
        r.speedup = rows[0].latency_ms / r.latency_ms
        r.smaller = rows[0].file_bytes / r.file_bytes
    return rows


def format_table(rows: list[StageRow], batch_size: int = 256) -> str:
    """The table printed by ``make demo`` (plain text, at most :data:`TABLE_WIDTH` columns)."""
    headers = [
        "stage",
        "file",
        "runtime",
        "test acc",
        "params",
        "size",
        "smaller",
        f"b{batch_size} ms",
        "faster",
    ]
    cells = [
        [
            r.stage,
            r.path.name,
            r.runtime,
            f"{100 * r.test_accuracy:.2f}%",
            f"{r.parameters:,}",
            f"{r.file_bytes / 1024:.1f} KiB",
            f"{r.smaller:.1f}x",
            f"{r.latency_ms:.2f}",
            f"{r.speedup:.1f}x",
        ]
        for r in rows
    ]
    left = {0, 1, 2}
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return " ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(c) for c in cells)])


def write_report(result: DemoResult) -> dict[str, Path]:
    """``report.md`` (the table and the notes) and ``report.json`` (every figure) in the run folder."""
    md = result.run_dir / "report.md"
    md.write_text(
        "# lightning-optim demo\n\n```\n" + result.table + "\n```\n\n" + "\n".join(result.notes) + "\n"
    )
    data = {
        "rows": [{**asdict(r), "path": r.path.name} for r in result.rows],
        "best": None if result.best is None else {"stage": result.best.stage, "fmt": result.best.fmt},
        "targets": result.targets,
        "pruned_channels": list(result.pruned_channels),
        "seconds": result.seconds,
        "info": result.info,
        "files": sorted(result.files),
    }
    js = result.run_dir / "report.json"
    js.write_text(json.dumps(data, indent=2) + "\n")
    return {"report.md": md, "report.json": js}


def _notes(result: DemoResult, batch_size: int) -> list[str]:
    """The lines under the table (each at most :data:`TABLE_WIDTH` columns): which file and runtime gave the
    speed-up, the targets, and what the other rows show."""
    dense, best = result.rows[0], result.best
    paragraphs = []
    if best is None:
        paragraphs.append("No int8 row: the int8 files were not written.")
    else:
        drop = 100 * (dense.test_accuracy - best.test_accuracy)
        paragraphs.append(
            f"Speed-up: {best.path.name} in {best.runtime}, {best.speedup:.1f}x faster than the dense fp32 "
            f"model in torch eager (batch {batch_size}, 1 thread, timed interleaved in this run), "
            f"{best.smaller:.1f}x smaller than the dense state dict; test accuracy "
            f"{100 * best.test_accuracy:.2f}% vs {100 * dense.test_accuracy:.2f}% dense ({-drop:+.2f} pt)."
        )
        mark = {True: "met", False: "NOT met"}
        paragraphs.append(
            f"Targets: >= {TARGET_SPEEDUP:g}x faster: {mark[result.targets['speedup']]}; smaller: "
            f"{mark[result.targets['smaller']]}; within {TARGET_ACCURACY_DROP:g} pt of dense: "
            f"{mark[result.targets['accuracy']]}."
        )
    pruned = next((r for r in result.rows if r.stage == "pruned"), None)
    for r in result.rows:
        if r.fmt == ".pt2" and pruned is not None and r.latency_ms > pruned.latency_ms:
            paragraphs.append(
                f"{r.path.name} is timed uncompiled in torch (its int8 ops run as reference code): slower "
                "than the pruned fp32 model here."
            )
    if not any(r.fmt == ".onnx" for r in result.rows):
        paragraphs.append(
            "No ONNX file: pip install 'lightning-optim[onnx]' for model_int8.onnx and its ONNX Runtime timing."
        )
    return [line for p in paragraphs for line in textwrap.wrap(p, TABLE_WIDTH)]


def run_demo(config: DemoConfig | None = None, echo: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage into a new run folder and return what was measured.

    Args:
        config: the settings (default :class:`DemoConfig`).
        echo: called with each progress line (``print`` from :func:`main`; ``None``: silent).

    The warnings of :data:`QUIET_WARNINGS` are off during the run, and Lightning's info lines too unless
    ``config.progress``.
    """
    config = config or DemoConfig()
    with quiet(info=config.progress):
        return _run_demo(config, echo or (lambda _: None))


def _run_demo(config: DemoConfig, say: Callable[[str], None]) -> DemoResult:
    start = time.perf_counter()
    onnx = onnx_available() if config.onnx is None else config.onnx
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    seconds: dict[str, float] = {}
    try:
        run_dir = make_run_dir(config.runs_dir)
        pl.seed_everything(config.seed, verbose=False)
        datamodule = build_data(config)
        sizes = (len(datamodule.train_split), len(datamodule.val_split_data), len(datamodule.test_split))
        say(
            f"lightning-optim demo: SmallResNet, embedded 8x8 digits ({sizes[0]}/{sizes[1]}/{sizes[2]} "
            "train/val/test, no download)"
        )
        t = time.perf_counter()
        dense_module, files = train_dense(config, datamodule, run_dir)
        seconds["dense"] = time.perf_counter() - t
        say(f"[1/4] dense     {_epochs(config.epochs)} in {seconds['dense']:.1f} s")
        t = time.perf_counter()
        pruned_module, pruning, pruned_files = prune(config, dense_module.model, datamodule, run_dir)
        files.update(pruned_files)
        seconds["prune"] = time.perf_counter() - t
        _, _, removed, total = pruning.compaction_summary()
        say(
            f"[2/4] pruned    {removed} of {total} channels removed (channel groups to {config.sparsity:.0%}, "
            f"{_epochs(config.finetune_epochs)}) in {seconds['prune']:.1f} s"
        )
        t = time.perf_counter()
        ptq, int8_files = quantize(config, pruned_module, datamodule, run_dir, onnx)
        files.update(int8_files)
        seconds["quantize"] = time.perf_counter() - t
        say(
            f"[3/4] int8      PTQ ({ptq.backend_name}, {ptq.calibrated_batches} calibration batches) -> "
            f"{', '.join(sorted(int8_files))} in {seconds['quantize']:.1f} s"
        )
        t = time.perf_counter()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        say(
            f"[4/4] measure   test split; batch {config.latency_batch_size}, 1 thread, {config.latency_rounds}"
            f" interleaved rounds x {config.latency_repeats} runs (load {load:.2f})"
        )
        rows = measure(config, datamodule, dense_module.model, pruned_module.model, files)
        seconds["measure"] = time.perf_counter() - t
        int8 = [r for r in rows if r.stage == "int8"]
        best = max(int8, key=lambda r: r.speedup) if int8 else None
        dense = rows[0]
        targets = {
            "speedup": best is not None and best.speedup >= TARGET_SPEEDUP,
            "smaller": best is not None and best.file_bytes < dense.file_bytes,
            "accuracy": best is not None
            and 100 * (dense.test_accuracy - best.test_accuracy) <= TARGET_ACCURACY_DROP,
        }
        result = DemoResult(
            run_dir=run_dir,
            rows=rows,
            best=best,
            files=files,
            table=format_table(rows, config.latency_batch_size),
            notes=[],
            targets=targets,
            seconds=seconds,
            pruned_channels=(removed, total),
            info={
                "train_val_test": list(sizes),
                "config": {k: v for k, v in asdict(config).items()},
                "torch": torch.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "timing_threads": 1,
                "load_average_before_timing": load,
                "backend": ptq.backend_name,
            },
        )
        result.notes = _notes(result, config.latency_batch_size)
        seconds["total"] = time.perf_counter() - start
        files.update(write_report(result))
        return result
    finally:
        torch.set_num_threads(previous_threads)


def main(argv: list[str] | None = None) -> DemoResult:
    """Command-line entry point: runs :func:`run_demo`, prints the table and names the run folder."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_optim.demo", description=__doc__.splitlines()[0].strip("`")
    )
    default = DemoConfig()
    parser.add_argument("--epochs", type=int, default=default.epochs, help="dense training epochs")
    parser.add_argument(
        "--finetune-epochs", type=int, default=default.finetune_epochs, help="pruning fine-tune epochs"
    )
    parser.add_argument(
        "--sparsity", type=float, default=default.sparsity, help="fraction of the channels removed"
    )
    parser.add_argument("--seed", type=int, default=default.seed, help="random seed")
    parser.add_argument("--threads", type=int, default=default.threads, help="torch CPU threads for training")
    parser.add_argument("--runs-dir", default=default.runs_dir, help="where the run folder is created")
    parser.add_argument(
        "--progress", action="store_true", help="show Lightning's progress bars and info lines"
    )
    parser.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="afterwards, also run the older LeNet-300-100 prune -> distill -> QAT pipeline (run_digits_pipeline)",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "finetune_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.sparsity < 1.0:
        parser.error(f"--sparsity must be in (0, 1), got {args.sparsity}")
    config = DemoConfig(
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        sparsity=args.sparsity,
        seed=args.seed,
        threads=args.threads,
        progress=args.progress,
        runs_dir=args.runs_dir,
    )
    with quiet(info=args.progress):
        result = run_demo(config, echo=partial(print, flush=True))
        print(f"\n{result.table}\n", flush=True)
        for note in result.notes:
            print(note)
        print(textwrap.fill(f"Files: {', '.join(sorted(result.files))}", TABLE_WIDTH, subsequent_indent="  "))
        print(f"Run folder: {result.run_dir}", flush=True)
        if args.pipeline:
            result.info["pipeline"] = run_digits_pipeline(
                workdir=str(result.run_dir / "pipeline"), seed=args.seed, latency_threads=1
            )
    return result


def run_digits_pipeline(
    workdir: str | None = None,
    teacher_epochs: int = 6,
    prune_epochs: int = 3,
    finetune_epochs: int = 1,
    qat_epochs: int = 2,
    final_sparsity: float = 0.8,
    seed: int = 0,
    latency_threads: int | None = None,
    latency_batch_sizes: tuple[int, ...] = (1, 256),
    verbose: bool = True,
) -> dict[str, Any]:
    """The compression pipeline, short, on the embedded 8x8 digits (no download; about a minute on 2 cores).

    1. a dense teacher (LeNet-300-100 for 8x8 inputs) is trained and checkpointed;
    2. one ``fit`` of a student warm-started from it: cubic pruning ramp to ``final_sparsity``, fine-tuning,
       QAT from the end of the ramp (``start_after: pruning``) with conversion to int8 at fit end,
       distillation from the teacher during fine-tuning and QAT, EarlyStopping held off until the schedule is
       done, and the :class:`~lightning_optim.callbacks.CompressionReport`.

    Returns:
        ``rows`` (the report rows), ``table`` (Markdown), ``paths`` (report files), ``handoffs`` and ``seconds``.
    """
    start = time.perf_counter()
    workdir = workdir or tempfile.mkdtemp(prefix="lightning_optim_demo_")
    quiet_trainer = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )

    def network() -> nn.Module:
        return LeNet300100(in_features=64, hidden=(128, 64))

    pl.seed_everything(seed, verbose=False)
    teacher = ClassificationModule(network(), optimizer="adam", lr=3e-3)
    trainer = pl.Trainer(
        max_epochs=teacher_epochs, default_root_dir=workdir, enable_checkpointing=False, **quiet_trainer
    )
    trainer.fit(teacher, datamodule=ImageClassificationDataModule("digits", batch_size=64))
    teacher_ckpt = os.path.join(workdir, "teacher.ckpt")
    trainer.save_checkpoint(teacher_ckpt, weights_only=True)

    pl.seed_everything(seed, verbose=False)
    ramp_end = prune_epochs
    max_epochs = prune_epochs + finetune_epochs + qat_epochs
    pipeline = CompressionPipeline(order=("pruning", "quantization"), distill=True, distill_from="pruning")
    report = CompressionReport(
        latency_batch_sizes=latency_batch_sizes,
        latency_repeats=5,
        latency_warmup=2,
        latency_threads=latency_threads,
        dirpath=workdir,
        verbose=False,
    )
    callbacks = [
        WarmStart(teacher_ckpt),
        ProgressivePruning(final_sparsity=final_sparsity, start=0, end=ramp_end, unit="epoch", verbose=False),
        KnowledgeDistillation(
            teacher=network(),
            teacher_checkpoint=teacher_ckpt,
            temperature=4.0,
            alpha=0.7,
            start_epoch=ramp_end,
            end_epoch=max_epochs,
        ),
        QuantizationAwareTraining(
            start_after="pruning",
            start_epoch=ramp_end + finetune_epochs,
            freeze_observers_epoch=max_epochs - 1 if qat_epochs >= 2 else None,
            export=False,
            report=False,
            verbose=False,
        ),
        EarlyStopping(monitor="val_acc", mode="max", patience=1),
        pipeline,
        report,
    ]
    student = ClassificationModule(network(), optimizer="adam", lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        default_root_dir=workdir,
        enable_checkpointing=False,
        callbacks=callbacks,
        **quiet_trainer,
    )
    trainer.fit(student, datamodule=ImageClassificationDataModule("digits", batch_size=64))
    table = format_markdown(report.rows, report.notes)
    if verbose:
        print(
            "\nCompression pipeline on the embedded digits (dense teacher -> prune -> fine-tune + KD -> QAT + KD -> int8)\n"
        )
        print(table)
        print(f"Files: {report.paths}")
    return {
        "rows": report.rows,
        "table": table,
        "paths": report.paths,
        "handoffs": pipeline.handoffs,
        "seconds": time.perf_counter() - start,
    }


if __name__ == "__main__":
    main()
