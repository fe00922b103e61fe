"""int8 coverage on unmodified models (issue 24): PT2E + inductor and ONNX Runtime vs fp32 eager and torch.compile.

The command (1 thread, interleaved, batch 1 and 64)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.quantization_coverage --threads 1

(the same as ``python -m benchmarks quantization_coverage --threads 1``). Needs the ``onnx`` extra
(``pip install -e '.[onnx]'``) for the ONNX columns; timm (``vit_tiny``) and transformers (``bert``) for those
models (``.[bench]``); a model whose library is missing is reported as skipped.

Per model (random init, batch-norm statistics settled on a few random batches as a trained model has them,
10 classes), in one process:

- **fp32 eager** and **fp32 compile** (``torch.compile`` of a copy, compiled in the warm-up runs);
- **pt2e int8**: ours, ``Pt2eBackend`` PTQ (``torch.export`` + torchao ``X86InductorQuantizer``, calibrated on
  ``--calibration-batches`` random batches of ``--calibration-batch-size``), ``convert``, then ``lower``
  (``torch.compile`` with freezing: oneDNN int8 kernels; a per-shape compile where the dynamic one fails);
- **ORT QDQ**: ONNX Runtime's own static quantization of the fp32 model (``quantize_onnx_static``: fp32 ONNX
  export, ``quant_pre_process``, ``quantize_static`` QDQ, per-channel int8 weights, uint8 activations, MinMax
  on the same calibration batches) run in ONNX Runtime;
- **ours ONNX**: our ONNX deploy file as the callbacks write it (``export_quantized(..., "onnx", float_model=...,
  calibration=...)``): ONNX Runtime's own static quantizer on our (possibly pruned) float network with the same
  calibration batches, checked against our PT2E int8 model; for an unpruned model it is the ORT QDQ file;
- **PT2E graph ONNX**: the ONNX file QAT writes (and PTQ where ONNX Runtime's own file is not kept):
  ``export_quantized(..., "onnx", calibration=...)`` without the float network: our PT2E int8 graph
  (``export_onnx``, the PyTorch int8 model's ranges) with the residual additions that the x86 quantizer leaves in
  float quantized on the calibration batches (``complete_qdq``), run in ONNX Runtime. Before ``complete_qdq``
  (runs 1-5 below) ONNX Runtime ran the convolutions before those additions in float.

``resnet18_pruned50`` is resnet18 with 50% of its channel groups removed (``prune_channels``, L2 scores,
compacted) before everything above; the last line's Z is its pt2e int8 at ``--batch-size`` against resnet18's
dense fp32 eager (and the line also gives it against dense fp32 compile), so run both models together.

How the figures are counted:

- **latency**: median ms at batch 1 and ``--batch-size`` on ``--threads`` threads (ONNX Runtime: the same intra-op
  threads, sequential), the five paths interleaved in one ``compare_latency`` call per batch size
  (``--rounds`` rounds of ``--repeats`` runs, ``--warmup`` untimed runs first, which also compile);
- **sizes**: the fp32 state dict (``torch.save``), our ``.pt2`` deploy file (``Pt2eBackend.export``), our ONNX
  file and ORT's QDQ file, in MB; **ratio** = fp32 state dict / ``.pt2``;
- **agreement**: argmax agreement with fp32 on ``--eval-samples`` random inputs (the models are untrained,
  so this measures how far int8 moves the outputs, not accuracy);
- a stage that fails is reported with its error and the row's other columns stay empty.

The last line: ``int8 coverage: K/N models; resnet18 b64 vs best fp32 X; b1 vs ORT QDQ Y; pruned+int8 resnet18
vs dense eager Z`` - N counts the models that ran (skipped ones not), K those our PT2E path converted, lowered
and exported (``.pt2`` and ONNX); X = the faster of fp32 eager and fp32 compile / pt2e int8 at
``--batch-size`` on resnet18; Y = ORT QDQ / the fastest of pt2e int8, ours ONNX and PT2E graph ONNX at batch 1, the smallest over
the models (the issue's target: >= 0.9 on each); Z needs the structured-pruning step (not in this skeleton
yet: ``n/a``).
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import platform
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._models import HFLogits, MissingDependency
from lightning_optim.functional.compression_report.measure import compare_latency
from lightning_optim.functional.quantization import (
    OnnxRunner,
    Pt2eBackend,
    export_quantized,
    lower,
    quantize_onnx_static,
)

warnings.filterwarnings("ignore", ".*is deprecated.*")

ZOO = ("convnet3", "lenet5", "separable_cnn")
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")
#: every model of the issue's target list, and the structured-50% resnet18
MODELS = (*ZOO, *TORCHVISION, "vit_tiny", "bert", "resnet18_pruned50")
#: what runs by default
DEFAULT_MODELS = ("convnet3", "resnet18", "mobilenet_v2")
#: the timed paths, in table order
PATHS = ("fp32 eager", "fp32 compile", "pt2e int8", "ORT QDQ", "ours ONNX", "PT2E graph ONNX")
#: the warning ``export_quantized`` gives when ONNX Runtime's QDQ file of the float network is not kept
ORT_NOT_KEPT = "ONNX Runtime's own quantization of the float network is not kept"


class _SameFile(Exception):
    """The ORT QDQ path is our ONNX file itself: nothing to quantize again."""


def build_model(name: str, image_size: int, seq_len: int) -> tuple[nn.Module, tuple[int, ...], str]:
    """``(fp32 model, per-sample input shape, input kind)`` for ``name`` (random init, 10 classes).

    Raises:
        MissingDependency: timm or transformers is not installed.
    """
    if name in ZOO:
        from lightning_optim.models import ConvNet3, LeNet5, SeparableCNN

        if name == "separable_cnn":  # global pooling: any input size
            return SeparableCNN(num_classes=10), (1, 28, 28), "image"
        factory = {"convnet3": ConvNet3, "lenet5": LeNet5}[name]
        return factory(num_classes=10, image_size=28), (1, 28, 28), "image"
    if name in TORCHVISION:
        import torchvision

        kwargs: dict[str, Any] = {"weights": None, "num_classes": 10}
        if name == "vit_b_16":
            kwargs["image_size"] = image_size
        return getattr(torchvision.models, name)(**kwargs), (3, image_size, image_size), "image"
    if name == "vit_tiny":
        try:
            import timm
        except ImportError as err:
            raise MissingDependency("timm") from err
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=image_size, num_classes=10
        )
        return model, (3, image_size, image_size), "image"
    if name == "bert":
        try:
            from transformers import BertConfig, BertForSequenceClassification
        except ImportError as err:
            raise MissingDependency("transformers") from err
        config = BertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, num_labels=10
        )
        return HFLogits(BertForSequenceClassification(config)), (seq_len,), "tokens"
    if name == "resnet18_pruned50":
        return build_model("resnet18", image_size, seq_len)
    raise ValueError(f"Unknown model {name!r}; allowed: {list(MODELS)}.")


def make_input(shape: tuple[int, ...], kind: str, batch: int) -> Tensor:
    if kind == "tokens":
        return torch.randint(0, 1000, (batch, *shape))
    return torch.randn(batch, *shape)


def settle(model: nn.Module, shape: tuple[int, ...], kind: str, steps: int = 4) -> nn.Module:
    """Batch-norm statistics from a few random batches (fresh ones make deep nets output ~1e-10)."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(make_input(shape, kind, 16))
    return model.eval()


def _short(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit].replace("|", "/")


def _mb(size: int | None) -> str:
    return "" if size is None else f"{size / 1e6:.2f}"


@dataclass
class Row:
    """One model's figures."""

    name: str
    status: str = "ok"
    failures: dict[str, str] = field(default_factory=dict)
    latency: dict[int, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return not self.status.startswith("skipped")

    @property
    def covered(self) -> bool:
        """Our PT2E path converted, lowered and exported the model (.pt2 and ONNX)."""
        return self.ran and not any(
            k in self.failures for k in ("build", "pt2e", "lower", "pt2", "ours ONNX")
        )

    def speed(self, batch: int, path: str, reference: str | tuple[str, ...]) -> float | None:
        """``reference`` latency / ``path`` latency (the faster of several references or paths)."""
        times = self.latency.get(batch, {})
        refs = (reference,) if isinstance(reference, str) else reference
        paths = (path,) if isinstance(path, str) else path
        ref = min((times[r] for r in refs if r in times), default=None)
        mine = min((times[p] for p in paths if p in times), default=None)
        return None if ref is None or mine is None or mine <= 0 else ref / mine


def _file_size(write) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp))
        return Path(path).stat().st_size


def run_model(name: str, args: argparse.Namespace, log) -> Row:
    row = Row(name)
    try:
        model, shape, kind = build_model(name, args.image_size, args.seq_len)
    except MissingDependency as err:
        row.status = f"skipped: install {err} (.[bench])"
        return row
    except Exception as err:  # noqa: BLE001 - one model that cannot be built does not stop the run
        row.status = f"failed to build: {_short(err)}"
        row.failures["build"] = _short(err)
        return row
    torch.manual_seed(0)
    model = settle(model, shape, kind)
    example = make_input(shape, kind, args.calibration_batch_size)
    if name.endswith("_pruned50"):
        from lightning_optim.functional.pruning.groups import prune_channels

        before = sum(p.numel() for p in model.parameters())
        model = prune_channels(model, example, 0.5)[0].eval()
        row.notes.append(
            f"50% of the channel groups removed: {before:,} -> {sum(p.numel() for p in model.parameters()):,} parameters"
        )
    calibration = [
        make_input(shape, kind, args.calibration_batch_size) for _ in range(args.calibration_batches)
    ]
    evaluation = make_input(shape, kind, args.eval_samples)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    row.sizes["fp32 state dict"] = len(buffer.getvalue())
    with torch.no_grad():
        reference = model(evaluation)
    runners: dict[str, Any] = {"fp32 eager": model, "fp32 compile": torch.compile(copy.deepcopy(model))}
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name)

    # ours: PT2E PTQ, lowered
    quantized = None
    ours_is_ort = True  # until export_quantized says it fell back to the PT2E graph
    start = time.perf_counter()
    try:
        backend = Pt2eBackend(example_input=example)
        observed, capture = backend.prepare_ptq(model)
        backend.calibrate(observed, calibration)
        quantized = backend.convert(observed)
        row.notes.append(capture.summary().splitlines()[0])
        if capture.note:
            row.notes.append(capture.note[:200])
        with torch.no_grad():
            row.agreement["pt2e int8"] = float(
                (quantized(evaluation).argmax(-1) == reference.argmax(-1)).float().mean()
            )
    except Exception as err:  # noqa: BLE001 - reported in the table
        row.failures["pt2e"] = _short(err)
    log(f"  {name}: pt2e {time.perf_counter() - start:.0f} s")
    if quantized is not None:
        try:
            lowered = lower(quantized, example)
            runners["pt2e int8"] = lambda x, m=lowered: m(x)
            if lowered.note:
                row.notes.append(lowered.note[:200])
        except Exception as err:  # noqa: BLE001
            row.failures["lower"] = _short(err)
        try:
            path = backend.export(quantized, folder / f"{name}_int8.pt2")
            row.sizes["ours .pt2"] = path.stat().st_size
        except Exception as err:  # noqa: BLE001
            row.failures["pt2"] = _short(err)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                path = export_quantized(
                    quantized,
                    folder / f"{name}_int8.onnx",
                    "onnx",
                    example,
                    backend=backend,
                    float_model=model,
                    calibration=calibration,
                )
            for w in caught:  # said again, except the one this benchmark reads
                if ORT_NOT_KEPT in str(w.message):
                    ours_is_ort = False
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            row.sizes["ours ONNX"] = path.stat().st_size
            runner = OnnxRunner(path, threads=args.threads)
            runners["ours ONNX"] = runner
            row.agreement["ours ONNX"] = float(
                (runner(evaluation).argmax(-1) == reference.argmax(-1)).float().mean()
            )
        except Exception as err:  # noqa: BLE001
            row.failures["ours ONNX"] = _short(err)
        try:
            path = export_quantized(
                quantized,
                folder / f"{name}_int8_graph.onnx",
                "onnx",
                example,
                backend=backend,
                calibration=calibration,
            )
            runners["PT2E graph ONNX"] = OnnxRunner(path, threads=args.threads)
        except Exception as err:  # noqa: BLE001
            row.failures["PT2E graph ONNX"] = _short(err)
    log(f"  {name}: ours done {time.perf_counter() - start:.0f} s")

    # ONNX Runtime's own static QDQ of the fp32 model: our ONNX file is that very file when it was kept (the same
    # call, the same inputs), so it is not quantized (nor timed) a second time
    same_file = ours_is_ort and "ours ONNX" in runners and "ours ONNX" in row.agreement
    if same_file:
        row.sizes["ORT QDQ"] = row.sizes["ours ONNX"]
        row.agreement["ORT QDQ"] = row.agreement["ours ONNX"]
        row.notes.append("ORT QDQ: the same file as ours ONNX (ONNX Runtime's QDQ of the float network)")
    try:
        if same_file:
            raise _SameFile
        path = quantize_onnx_static(model, folder / f"{name}_ort_qdq.onnx", example, calibration)
        row.sizes["ORT QDQ"] = path.stat().st_size
        runner = OnnxRunner(path, threads=args.threads)
        runners["ORT QDQ"] = runner
        row.agreement["ORT QDQ"] = float(
            (runner(evaluation).argmax(-1) == reference.argmax(-1)).float().mean()
        )
    except _SameFile:
        pass
    except Exception as err:  # noqa: BLE001
        row.failures["ORT QDQ"] = _short(err)
    log(f"  {name}: ORT QDQ done {time.perf_counter() - start:.0f} s")

    for batch in (1, args.batch_size):
        x = make_input(shape, kind, batch)
        timed = {k: runners[k] for k in PATHS if k in runners}
        try:
            result = compare_latency(
                timed, x, repeats=args.repeats, warmup=args.warmup, rounds=args.rounds, threads=args.threads
            )
            row.latency[batch] = {k: v["median_ms"] for k, v in result.items()}
            if same_file and "ours ONNX" in row.latency[batch]:
                row.latency[batch]["ORT QDQ"] = row.latency[batch]["ours ONNX"]
        except Exception as err:  # noqa: BLE001 - one failing path: time the others
            row.failures[f"latency b{batch}"] = _short(err)
            log(traceback.format_exc(limit=3))
    log(f"  {name}: latency done {time.perf_counter() - start:.0f} s")
    tmp.cleanup()
    if row.failures:
        row.status = "partial"
    return row


def markdown(rows: list[Row], batch: int) -> str:
    lines = [
        f"| model | status | {' | '.join(f'{p} b1 / b{batch} ms' for p in PATHS)} | pt2e int8 vs best fp32 b1 / b{batch} "
        "| best ours vs ORT QDQ b1 | fp32 / .pt2 / ours ONNX / ORT QDQ MB | size ratio | agreement pt2e / ours ONNX / ORT |",
        "|---|---|" + "---|" * len(PATHS) + "---|---|---|---|---|",
    ]
    for row in rows:
        if not row.ran:
            lines.append(f"| {row.name} | {row.status} |" + " |" * (len(PATHS) + 5))
            continue
        cells = []
        for path in PATHS:
            b1 = row.latency.get(1, {}).get(path)
            bn = row.latency.get(batch, {}).get(path)
            cells.append(
                "" if b1 is None and bn is None else f"{b1 or float('nan'):.2f} / {bn or float('nan'):.2f}"
            )
        best = ("fp32 eager", "fp32 compile")
        s1, sn = row.speed(1, "pt2e int8", best), row.speed(batch, "pt2e int8", best)
        vs_ort = row.speed(1, ("pt2e int8", "ours ONNX", "PT2E graph ONNX"), "ORT QDQ")
        ratio = (
            row.sizes["fp32 state dict"] / row.sizes["ours .pt2"]
            if "ours .pt2" in row.sizes and "fp32 state dict" in row.sizes
            else None
        )
        sizes = " / ".join(
            _mb(row.sizes.get(k)) for k in ("fp32 state dict", "ours .pt2", "ours ONNX", "ORT QDQ")
        )
        agree = " / ".join(
            f"{row.agreement[k]:.3f}" if k in row.agreement else ""
            for k in ("pt2e int8", "ours ONNX", "ORT QDQ")
        )
        speed = f"{s1:.2f}x / {sn:.2f}x" if s1 is not None and sn is not None else ""
        lines.append(
            f"| {row.name} | {row.status} | {' | '.join(cells)} | {speed} | "
            f"{'' if vs_ort is None else f'{vs_ort:.2f}x'} | {sizes} | {'' if ratio is None else f'{ratio:.2f}x'} | {agree} |"
        )
    details = [f"- {row.name}: {stage}: {text}" for row in rows for stage, text in row.failures.items()]
    details += [f"- {row.name}: {note}" for row in rows for note in row.notes]
    return "\n".join(lines + ([""] + details if details else []))


def last_line(rows: list[Row], batch: int) -> str:
    ran = [r for r in rows if r.ran]
    covered = sum(r.covered for r in ran)
    resnet = next((r for r in ran if r.name == "resnet18"), None)
    x = resnet.speed(batch, "pt2e int8", ("fp32 eager", "fp32 compile")) if resnet else None
    ys = [r.speed(1, ("pt2e int8", "ours ONNX", "PT2E graph ONNX"), "ORT QDQ") for r in ran]
    ys = [y for y in ys if y is not None]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    pruned = next((r for r in ran if r.name == "resnet18_pruned50"), None)
    z = z_compile = None
    if pruned is not None and resnet is not None:
        mine = pruned.latency.get(batch, {}).get("pt2e int8")
        dense = resnet.latency.get(batch, {})
        if mine:
            z = dense["fp32 eager"] / mine if "fp32 eager" in dense else None
            z_compile = dense["fp32 compile"] / mine if "fp32 compile" in dense else None
    return (
        f"int8 coverage: {covered}/{len(ran)} models; resnet18 b{batch} vs best fp32 {fmt(x)}; "
        f"b1 vs ORT QDQ {fmt(min(ys) if ys else None)}; pruned+int8 resnet18 vs dense eager {fmt(z)} "
        f"(vs dense compile {fmt(z_compile)})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quantization_coverage", description=__doc__.splitlines()[0]
    )
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS, metavar="MODEL")
    p.add_argument("--image-size", type=int, default=64, help="torchvision/timm input size (the zoo uses 28)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence for bert")
    p.add_argument("--batch-size", type=int, default=64, help="the large batch size timed beside batch 1")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--calibration-batch-size", type=int, default=16)
    p.add_argument("--eval-samples", type=int, default=256, help="random inputs for the argmax agreement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per round (the first ones compile)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(text: str) -> None:
        print(text, flush=True)

    load_before = os.getloadavg()
    header = (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{args.threads} thread(s); random init; load average before {tuple(round(v, 2) for v in load_before)}"
    )
    log(header)
    rows = []
    for name in args.models:
        start = time.perf_counter()
        rows.append(run_model(name, args, log))
        log(f"{name}: {rows[-1].status} ({time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f})")
    table = markdown(rows, args.batch_size)
    summary = last_line(rows, args.batch_size)
    footer = f"load average after {tuple(round(v, 2) for v in os.getloadavg())}"
    print("\n" + table + "\n\n" + footer + "\n\n" + summary, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{table}\n\n{footer}\n\n{summary}\n")
    return rows


if __name__ == "__main__":
    main()
