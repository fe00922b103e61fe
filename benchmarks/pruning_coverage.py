"""Structured-pruning coverage (issue 23): dependency-group channel pruning of CNNs and transformers vs Torch-Pruning.

The command (the lead's run: random init, 224 px, batch 8, 1 thread, an idle machine)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning_coverage --threads 1

(the same as ``python -m benchmarks pruning_coverage --threads 1``). Torch-Pruning, timm and transformers are
benchmark-only dependencies: ``.venv/bin/python -m pip install -e '.[bench]'`` (``make bench`` does it). A model
whose library is missing is reported as "skipped: install .[bench]"; without Torch-Pruning its columns are empty.

Per model, in one process and side by side:

- **ours**: ``prune_channels(model, x, sparsity)`` (``lightning_optim.functional.pruning.groups``): trace the
  dependency groups, L2 importance per group, ``sparsity`` of every coupling group's units (layer scope), remove
  them and check the compacted model against the masked one;
- **Torch-Pruning 1.6.1**, its plain call: ``tp.pruner.MagnitudePruner(model, x,
  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=sparsity, ignored_layers=[classifier])``
  then ``pruner.step()`` (the classifier is the model's last ``nn.Linear``); a failure is reported with its text.

How the figures are counted:

- **prunable units**: the channels (units of ``build_dependency_graph``) that are not pinned for "the model's
  output" (the classifier's outputs are never requested) and, for the transformers (``vit_b_16``, ``vit_tiny``,
  ``bert``), not in the residual stream (the embedding width, read by layer norms across channels: optional
  in the issue, off by default; counted in the details); attention heads are units like channels (one per
  head); **requested** = ``round(sparsity x prunable)``;
  **removed / requested** = pruned units / requested units (units pinned for any other reason count as
  requested and not removed: that is the coverage gap). **raw** = pruned units / all units.
- **width removed**: ``1 - sum(out widths after) / sum(out widths before)`` over the convolutions and linear layers
  (same names before and after), the same measure for ours and Torch-Pruning.
- **params** (``count_parameters``) and **MACs** per sample (``count_flops(model, x[:1]) / 2``,
  ``torch.utils.flop_counter``), before and after.
- **latency**: median ms at ``--batch-size`` on ``--threads`` threads, dense / ours / Torch-Pruning interleaved in
  one ``compare_latency`` call (``--rounds`` rounds of ``--repeats`` runs); the load average is printed before
  and after. **speedup** = dense / pruned; **ratio** = our speedup / Torch-Pruning's.
- **max diff**: max |compacted - masked| output difference relative to the largest masked output
  (``check_equivalent``); ``prune_channels`` refuses above 1e-4, in which case the row says MISMATCH and the
  figures are those of the same units removed without the check.

Models (``--models``, all by default): ``convnet3`` (the zoo's ConvNet3, 28 px, 1 channel, 10 classes, whatever
``--image-size``), torchvision ``resnet18 resnet50 mobilenet_v2 mobilenet_v3_small efficientnet_b0 densenet121
convnext_tiny regnet_x_400mf vit_b_16`` (``weights=None``, 1000 classes, ``vit_b_16`` built for
``--image-size``), timm ``vit_tiny`` (``vit_tiny_patch16_224``, ``img_size=--image-size``) and ``resnet26d``
(``pretrained=False``, 1000 classes), and ``bert``: ``BertForSequenceClassification`` from a ``BertConfig``
(hidden 256, 4 layers, 4 heads, intermediate 1024, 10 labels, random init), fed ``--batch-size`` x
``--seq-len`` token ids, its logits returned by a thin wrapper. A model our tracer (``torch.fx``) cannot
trace is reported as refused, with the reason.

The last line: ``coverage: K/N models removed >= 95% of the request; min speed ratio vs Torch-Pruning R;
transformer speedup S`` - N counts the models that ran (refused ones included, as 0 removed; skipped ones not),
K those that ``prune_channels`` pruned without an error (no refusal, no mismatch) removing >= 95% of the request,
R is the smallest ratio over the CNNs both methods pruned (the issue's speed target is per CNN; on the
transformers Torch-Pruning's plain call also removes the embedding width, which ours keeps by default, so their
ratio is in the table, not in R; ``n/a`` without any), S the smallest of our
speedups over ``vit_b_16``, ``vit_tiny`` and ``bert`` (a refused one counts as 1.00x: nothing removed;
``n/a`` when none ran).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._models import HFLogits, MissingDependency
from lightning_optim.functional.compression_report.measure import (
    compare_latency,
    count_flops,
    count_parameters,
)
from lightning_optim.functional.pruning.dependency import DependencyError, build_dependency_graph
from lightning_optim.functional.pruning.groups import (
    CompactionMismatch,
    check_equivalent,
    group_unit_scores,
    masked_copy,
    prune_channels,
    remove_units,
    select_units,
)

warnings.filterwarnings("ignore", ".*is deprecated.*")

#: the reason ``build_dependency_graph`` gives for the classifier's outputs (not requested)
OUTPUT_REASON = "the model's output"
#: the models whose speedup is the line's "transformer speedup"
TRANSFORMERS = ("vit_b_16", "vit_tiny", "bert")
TORCHVISION = (
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "densenet121",
    "convnext_tiny",
    "regnet_x_400mf",
    "vit_b_16",
)
MODELS = ("convnet3", *TORCHVISION, "vit_tiny", "resnet26d", "bert")
SKIPPED = "skipped: install .[bench]"
#: the target of the coverage line: removed >= this fraction of the request
COVERAGE_TARGET = 0.95


def build_model(name: str, image_size: int, batch_size: int, seq_len: int) -> tuple[nn.Module, Tensor]:
    """``(model in eval mode, example batch)`` for one of :data:`MODELS` (random init, fixed seed).

    Raises:
        MissingDependency: timm or transformers is needed and missing.
    """
    torch.manual_seed(0)
    if name == "convnet3":
        from lightning_optim.models import ConvNet3

        return ConvNet3(in_channels=1, num_classes=10, image_size=28).eval(), torch.randn(
            batch_size, 1, 28, 28
        )
    x = torch.randn(batch_size, 3, image_size, image_size)
    if name in TORCHVISION:
        import torchvision

        kwargs: dict[str, Any] = {"weights": None, "num_classes": 1000}
        if name == "vit_b_16":
            kwargs["image_size"] = image_size
        return getattr(torchvision.models, name)(**kwargs).eval(), x
    if name in ("vit_tiny", "resnet26d"):
        try:
            import timm
        except ImportError as err:
            raise MissingDependency("timm") from err
        if name == "vit_tiny":
            return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size).eval(), x
        return timm.create_model("resnet26d", pretrained=False).eval(), x
    if name == "bert":
        try:
            from transformers import BertConfig, BertForSequenceClassification
        except ImportError as err:
            raise MissingDependency("transformers") from err
        config = BertConfig(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            num_labels=10,
        )
        ids = torch.randint(0, config.vocab_size, (batch_size, seq_len))
        return HFLogits(BertForSequenceClassification(config)).eval(), ids
    raise ValueError(f"Unknown model {name!r}; choose from {MODELS}.")


def classifier_of(model: nn.Module) -> nn.Module:
    """The model's last ``nn.Linear`` (the classifier of every model here)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier.")
    return linears[-1]


def layer_widths(model: nn.Module) -> dict[str, int]:
    """``{name: output width}`` of the convolutions and linear layers."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            widths[name] = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = m.out_channels
    return widths


def width_removed(before: nn.Module, after: nn.Module) -> float:
    """``1 - sum(widths after) / sum(widths before)`` over the conv/linear layers present in both."""
    a, b = layer_widths(before), layer_widths(after)
    common = [n for n in a if n in b]
    total = sum(a[n] for n in common)
    return 1.0 - sum(b[n] for n in common) / total if total else 0.0


def macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of one sample (``count_flops / 2``)."""
    return count_flops(model, x[:1]) // 2


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kept_reasons(summary: str, limit: int = 6) -> list[str]:
    """``graph.summary()`` shortened: its first line, then the "kept N: reason" lines merged where they differ
    only by a dotted module path or a number (``grouped convolution `a` (groups=25)`` x 20 -> one line with the total
    count, the first module as an example and how many modules alike), largest first, at most ``limit``."""
    lines = summary.splitlines()
    merged: dict[str, list] = {}  # pattern -> [count, first reason, how many reasons]
    for line in lines[1:]:
        match = re.match(r"\s*kept (\d+): (.*)", line)
        if not match:
            continue
        n, reason = int(match[1]), match[2]
        key = re.sub(r"\d+", "N", re.sub(r"`[^`]*\.[^`]*`", "`*`", reason))  # dotted: a module path
        entry = merged.setdefault(key, [0, reason, 0])
        entry[0] += n
        entry[2] += 1
    out = [_short(lines[0], 140)] if lines else []
    for count, reason, alike in sorted(merged.values(), key=lambda e: -e[0])[:limit]:
        more = f" (and {alike - 1} more alike)" if alike > 1 else ""
        out.append(_short(f"kept {count}: {reason}{more}", 160))
    return out


@dataclass
class Row:
    """One model's results (``None``: not measured)."""

    model: str
    status: str = "ok"  # "ok", "refused: ...", "failed: ...", "skipped: ...", "MISMATCH: ..."
    units: int = 0
    prunable: int = 0
    stream: int = 0  # transformers: residual-stream units, not requested
    requested: int = 0
    pruned: int = 0
    params: tuple[int, int | None, int | None] | None = None  # dense, ours, tp
    macs: tuple[int, int | None, int | None] | None = None
    width_ours: float | None = None
    width_tp: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    max_diff: float | None = None
    tp_status: str = "-"
    kept: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return not self.status.startswith("skipped")

    @property
    def removed_of_request(self) -> float:
        return self.pruned / self.requested if self.requested else 0.0

    @property
    def raw_fraction(self) -> float:
        return self.pruned / self.units if self.units else 0.0

    def speedup(self, variant: str) -> float | None:
        if variant in self.latency_ms and "dense" in self.latency_ms:
            return self.latency_ms["dense"] / self.latency_ms[variant]
        if variant == "ours" and self.status.startswith("refused"):
            return 1.0  # nothing removed: the model as it is
        return None

    @property
    def ratio(self) -> float | None:
        ours, tp = self.speedup("ours"), self.speedup("tp")
        return ours / tp if ours is not None and tp is not None and "ours" in self.latency_ms else None


def torch_pruning(model: nn.Module, x: Tensor, sparsity: float) -> nn.Module:
    """Torch-Pruning 1.6.1's plain call on a copy of ``model``.

    Raises:
        MissingDependency: ``torch_pruning`` is not installed.
    """
    try:
        import torch_pruning as tp
    except ImportError as err:
        raise MissingDependency("torch_pruning") from err
    pruned = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=sparsity,
        ignored_layers=[classifier_of(pruned)],
    )
    pruner.step()
    with torch.no_grad():
        pruned.eval()(x)  # a pruned model that does not run is a failure too
    return pruned


def residual_stream(graph: Any) -> set[int]:
    """The units of a transformer's residual stream (its embedding width): the channels a layer norm across
    channels reads. Pruning them is optional in the issue and off by default, so they are not requested."""
    norms = {m for m, roles in graph.roles.items() if "layernorm" in roles}
    return {u.id for u in graph.units if any(s.module in norms for s in u.outputs)}


def ours(model: nn.Module, x: Tensor, sparsity: float, row: Row) -> nn.Module | None:
    """Our pruning, filling ``row``; returns the compacted copy (``None`` when refused or failed)."""
    try:
        compact, graph, pruned = prune_channels(model, x, sparsity)
    except DependencyError as err:
        row.status = f"refused: {_short(err, 300)}"
        return None
    except CompactionMismatch as err:
        # the same units removed without the check, to report the difference and the figures anyway
        graph = build_dependency_graph(model, x)
        pruned = select_units(graph, group_unit_scores(model, graph, "l2"), sparsity)
        compact = remove_units(model, graph, pruned)
        row.status = f"MISMATCH: {_short(err)}"
    except Exception as err:  # noqa: BLE001 - reported per model
        row.status = f"failed: {type(err).__name__}: {_short(err, 300)}"
        return None
    row.units = len(graph.units)
    stream = residual_stream(graph) if row.model in TRANSFORMERS else set()
    row.stream = len(stream)
    row.prunable = sum(u.pinned != OUTPUT_REASON and u.id not in stream for u in graph.units)
    row.requested = int(round(sparsity * row.prunable))
    row.pruned = len(pruned)
    row.kept = kept_reasons(graph.summary())
    masked = masked_copy(model, graph, pruned)  # what compaction is checked against
    row.max_diff = check_equivalent(masked, compact, x, tol=math.inf) if pruned else 0.0
    with torch.no_grad():
        reference = masked.eval()(x)
    if isinstance(reference, Tensor) and float(reference.float().std()) == 0.0:
        row.kept.append(
            "max diff not informative: the output is constant at random init (zero-initialised classifier)"
        )
    return compact


def run_model(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    """Build, prune both ways, count and time one model."""
    row = Row(name)
    start = time.perf_counter()
    try:
        model, x = build_model(name, args.image_size, args.batch_size, args.seq_len)
    except MissingDependency as err:
        row.status = f"{SKIPPED} ({err} missing)"
        log(f"{name}: {row.status}")
        return row
    compact = ours(model, x, args.sparsity, row)
    tp_model = None
    if args.skip_torch_pruning:
        row.tp_status = "not run (--skip-torch-pruning)"
    else:
        try:
            tp_model = torch_pruning(model, x, args.sparsity)
            row.tp_status = "ok"
        except MissingDependency:
            row.tp_status = SKIPPED
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's failure is a result
            row.tp_status = f"failed: {type(err).__name__}: {_short(err)}"
    dense_macs = macs(model, x)
    row.params = (
        count_parameters(model),
        count_parameters(compact) if compact is not None else None,
        count_parameters(tp_model) if tp_model is not None else None,
    )
    row.macs = (
        dense_macs,
        macs(compact, x) if compact is not None else None,
        macs(tp_model, x) if tp_model is not None else None,
    )
    if compact is not None:
        row.width_ours = width_removed(model, compact)
    if tp_model is not None:
        row.width_tp = width_removed(model, tp_model)
    variants = {"dense": model}
    if compact is not None:
        variants["ours"] = compact
    if tp_model is not None:
        variants["tp"] = tp_model
    if len(variants) > 1:
        timed = compare_latency(
            variants, x, repeats=args.repeats, warmup=args.warmup, rounds=args.rounds, threads=args.threads
        )
        row.latency_ms = {k: v["median_ms"] for k, v in timed.items()}
    log(
        f"{name}: {row.status.split(':')[0]}, removed {row.pruned}/{row.requested} requested units, "
        f"Torch-Pruning {row.tp_status.split(':')[0]}, "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in row.latency_ms.items())
        + f" ({time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f})"
    )
    return row


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _m(v: int | None, scale: float = 1e6) -> str:
    return "-" if v is None else f"{v / scale:.2f}"


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | status | prunable units | requested | removed / requested | raw removed | width removed ours / TP "
        "| params M dense / ours / TP | MACs M dense / ours / TP | latency ms dense / ours / TP "
        "| speedup ours | speedup TP | ratio ours/TP | max diff | Torch-Pruning |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if not r.ran:
            lines.append(f"| {r.model} | {r.status} |" + " - |" * 12 + f" {r.tp_status} |")
            continue
        params = " / ".join(_m(v) for v in r.params) if r.params else "-"
        mac = " / ".join(_m(v) for v in r.macs) if r.macs else "-"
        lat = " / ".join(
            f"{r.latency_ms[k]:.1f}" if k in r.latency_ms else "-" for k in ("dense", "ours", "tp")
        )
        diff = "-" if r.max_diff is None else f"{r.max_diff:.1e}"
        status = r.status.split(":")[0]
        lines.append(
            f"| {r.model} | {status} | {r.prunable} | {r.requested} | {_pct(r.removed_of_request)} "
            f"| {_pct(r.raw_fraction)} | {_pct(r.width_ours)} / {_pct(r.width_tp)} | {params} | {mac} | {lat} "
            f"| {_x(r.speedup('ours') if 'ours' in r.latency_ms else None)} | {_x(r.speedup('tp'))} "
            f"| {'-' if r.ratio is None else f'{r.ratio:.2f}'} | {diff} | {r.tp_status.split(':')[0]} |"
        )
    return lines


def details(rows: list[Row]) -> list[str]:
    """What was kept and why (graph summary, shortened), and every refusal or failure in full."""
    lines = []
    for r in rows:
        if not r.ran:
            continue
        lines.append(f"- **{r.model}**: {r.status}")
        if r.stream:
            lines.append(f"    - residual stream: {r.stream} units, not requested (optional, off by default)")
        lines += [f"    - {k}" for k in r.kept]
        if r.tp_status not in ("ok", "-") and not r.tp_status.startswith("not run"):
            lines.append(f"    - Torch-Pruning: {r.tp_status}")
    return lines


def coverage_line(rows: list[Row]) -> str:
    """The issue's last line (see the module docstring for how K, N, R and S are counted)."""
    ran = [r for r in rows if r.ran]
    k = sum(r.removed_of_request >= COVERAGE_TARGET and r.status == "ok" for r in ran)
    ratios = [r.ratio for r in ran if r.ratio is not None and r.model not in TRANSFORMERS]
    speedups = [r.speedup("ours") for r in ran if r.model in TRANSFORMERS]
    speedups = [s for s in speedups if s is not None]
    r_text = f"{min(ratios):.2f}" if ratios else "n/a"
    s_text = f"{min(speedups):.2f}x" if speedups else "n/a"
    return (
        f"coverage: {k}/{len(ran)} models removed >= 95% of the request; "
        f"min speed ratio vs Torch-Pruning {r_text}; transformer speedup {s_text}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pruning_coverage", description=__doc__.splitlines()[0]
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence for bert")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--skip-torch-pruning", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(text: str) -> None:
        print(text, flush=True)

    load_before = os.getloadavg()
    header = [
        f"## Pruning coverage at {args.sparsity:.0%} (issue 23)",
        "",
        f"`OMP_NUM_THREADS={args.threads} python -m benchmarks.pruning_coverage "
        + " ".join(_argv_text(argv))
        + "`",
        "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{args.threads} thread(s), batch {args.batch_size}, {args.image_size} px (ConvNet3 28 px), "
        f"random init; load average before {tuple(round(v, 2) for v in load_before)}",
        "",
    ]
    log("\n".join(header))
    rows = []
    for name in args.models:
        rows.append(run_model(name, args, log))
        gc.collect()
    load_after = os.getloadavg()
    out = [
        "",
        *table(rows),
        "",
        "What was kept and why (graph summary), refusals and failures:",
        "",
        *details(rows),
        "",
        f"load average before {tuple(round(v, 2) for v in load_before)}, "
        f"after {tuple(round(v, 2) for v in load_after)}",
        "",
        coverage_line(rows),
    ]
    log("\n".join(out))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join([*header, *out]) + "\n", encoding="utf-8")
    return rows


def _argv_text(argv: list[str] | None) -> list[str]:
    import sys

    return list(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
