"""Block (layer) pruning of ResNet-50 (issue 23): 25% of its bottleneck blocks replaced by identity, dense vs pruned.

The command (random init, 224 px, batch 8, 1 thread, an idle machine)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning_blocks --threads 1

(the same as ``python -m benchmarks pruning_blocks --threads 1``). A quick check that it runs (not a timing)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pruning_blocks --image-size 64 --repeats 3 --rounds 1

What it does, in one process:

1. builds torchvision ``resnet50`` (``weights=None``, 1000 classes, eval mode, seed ``--seed``) and counts its
   residual blocks (``Bottleneck``: 16);
2. finds the candidate blocks at ``--image-size`` (:func:`lightning_optim.functional.pruning.find_blocks`: the
   blocks that keep the shape and add their input back, i.e. not the first block of a stage, which downsamples or
   widens: 12 of the 16);
3. measures each candidate's importance (:func:`~lightning_optim.functional.pruning.block_importance`) on
   ``--importance-batches`` batches of **random data** (Gaussian images, batch ``--batch-size``): the loss is the
   mean squared difference between the logits without the block and the dense network's own logits on the same
   images, i.e. how much the block's removal changes the network's function (there is no trained task here:
   the figure says nothing about accuracy);
4. removes ``round(--fraction x 16)`` blocks (25%: 4), the cheapest candidates, with
   :func:`~lightning_optim.functional.pruning.remove_blocks` (a copy of the network);
5. counts parameters (``count_parameters``) and MACs per sample (``count_flops / 2``) before and after, and times
   fp32 eager latency at ``--batch-size`` on ``--threads`` threads, dense and pruned interleaved in one
   ``compare_latency`` call (``--rounds`` rounds of ``--repeats`` runs after ``--warmup``; medians); the load
   average is printed before and after. **speedup** = dense median / pruned median.

The last line: ``block pruning: resnet50 K/N blocks removed (25%), params -P%, MACs -M%, speedup S (target >= 1.3x)``.
:func:`run_block_pruning` returns the figures as a dict, for other benchmarks.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_optim.functional.compression_report.measure import (
    compare_latency,
    count_flops,
    count_parameters,
    num_threads,
)
from lightning_optim.functional.pruning.blocks import (
    BLOCK_RANKINGS,
    block_importance,
    block_latency,
    find_blocks,
    rank_blocks,
    remove_blocks,
)

#: torchvision ResNets this benchmark builds (the issue's target is resnet50)
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: the issue's target: the block-pruned ResNet-50 at least this much faster than the dense one
TARGET_SPEEDUP = 1.3


def residual_blocks(model: nn.Module) -> list[str]:
    """The names of a torchvision ResNet's residual blocks (``BasicBlock``/``Bottleneck``), all of them."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return [n for n, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one sample (``count_flops / 2``)."""
    return count_flops(model, x[:1]) // 2


def run_block_pruning(
    model_name: str = "resnet50",
    image_size: int = 224,
    batch_size: int = 8,
    fraction: float = 0.25,
    importance_batches: int = 2,
    threads: int | None = 1,
    repeats: int = 10,
    warmup: int = 2,
    rounds: int = 3,
    seed: int = 0,
    time_latency: bool = True,
    log: Callable[[str], None] = print,
    ranking: str = "loss",
    shortcuts: bool = False,
) -> dict[str, Any]:
    """Remove ``round(fraction x blocks)`` residual blocks of a torchvision ResNet (the cheapest candidates on
    random data) and measure what it gains.

    Args:
        model_name: one of :data:`MODELS`.
        image_size: input side in pixels (finding the blocks, importance, MACs and latency).
        batch_size: images per batch, for the importance batches and the latency.
        fraction: the fraction of *all* residual blocks to remove (chosen among the candidates; at most all
            candidates but one).
        importance_batches: random batches the importance is measured on.
        threads: intra-op threads for the whole run (``None``: torch's setting).
        repeats: timed runs per round.
        warmup: untimed runs per round.
        rounds: interleaved rounds (medians over rounds).
        seed: seed of the weights and of the random data.
        time_latency: time dense vs pruned (``False``: counts only).
        log: where progress lines go.

    Returns:
        ``model``, ``image_size``, ``batch_size``, ``threads``, ``data`` (``"random"``), ``blocks`` (all residual
        blocks), ``candidates``, ``requested``, ``removed`` (names), ``importance`` (``{candidate: loss increase}``),
        ``params`` and ``macs`` (``{"dense": .., "pruned": ..}``), ``latency_ms`` (``{"dense": .., "pruned": ..}``
        medians, empty without timing), ``speedup`` (``None`` without timing), ``load_before``, ``load_after``.

    Raises:
        ValueError: an unknown ``model_name``, ``fraction`` outside ``[0, 1)``, or sizes below 1.
    """
    import torchvision

    if model_name not in MODELS:
        raise ValueError(f"Unknown `model_name` {model_name!r}; allowed: {list(MODELS)}.")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}.")
    if min(image_size, batch_size, importance_batches, repeats, rounds) < 1 or warmup < 0:
        raise ValueError(
            "`image_size`, `batch_size`, `importance_batches`, `repeats` and `rounds` must be >= 1, `warmup` >= 0."
        )
    load_before = os.getloadavg()
    with num_threads(threads):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, model_name)(weights=None, num_classes=1000).eval()
        blocks = residual_blocks(model)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, 3, image_size, image_size, generator=gen)
        candidates = find_blocks(model, x[:1], shortcuts=shortcuts)
        requested = min(int(round(fraction * len(blocks))), max(len(candidates) - 1, 0))
        log(
            f"{model_name}: {len(blocks)} residual blocks, {len(candidates)} candidates ({', '.join(candidates)}); "
            f"removing {requested}"
        )
        batches = []
        with torch.no_grad():
            for _ in range(importance_batches):
                images = torch.randn(batch_size, 3, image_size, image_size, generator=gen)
                batches.append((images, model(images)))  # targets: the dense network's own logits
        importance = block_importance(model, candidates, batches, F.mse_loss)
        latency_of = block_latency(model, candidates, x) if ranking == "loss_per_latency" else None
        removed = rank_blocks(importance, latency_of, ranking)[:requested]
        pruned = copy.deepcopy(model)
        remove_blocks(pruned, removed)
        log("removed " + ", ".join(f"{b} ({importance[b]:.3g})" for b in removed))
        params = {"dense": count_parameters(model), "pruned": count_parameters(pruned)}
        mac = {"dense": macs(model, x), "pruned": macs(pruned, x)}
        latency: dict[str, float] = {}
        if time_latency:
            timed = compare_latency(
                {"dense": model, "pruned": pruned},
                x,
                repeats=repeats,
                warmup=warmup,
                rounds=rounds,
                threads=threads,
            )
            latency = {k: v["median_ms"] for k, v in timed.items()}
    return {
        "model": model_name,
        "image_size": image_size,
        "batch_size": batch_size,
        "threads": threads,
        "data": "random",
        "blocks": blocks,
        "candidates": candidates,
        "requested": requested,
        "removed": removed,
        "importance": importance,
        "ranking": ranking,
        "shortcuts": shortcuts,
        "block_latency_ms": latency_of,
        "params": params,
        "macs": mac,
        "latency_ms": latency,
        "speedup": latency["dense"] / latency["pruned"] if latency else None,
        "load_before": tuple(round(v, 2) for v in load_before),
        "load_after": tuple(round(v, 2) for v in os.getloadavg()),
    }


def report(result: dict[str, Any], argv: list[str]) -> list[str]:
    """The Markdown of one result: the command, the machine, a table, the removed blocks, the last line."""
    params, mac, lat = result["params"], result["macs"], result["latency_ms"]
    n_blocks, removed = len(result["blocks"]), result["removed"]

    def drop(d: dict[str, int]) -> float:
        return 1.0 - d["pruned"] / d["dense"] if d["dense"] else 0.0

    latency = f"{lat['dense']:.1f} / {lat['pruned']:.1f}" if lat else "not timed"
    speedup = f"{result['speedup']:.2f}x" if result["speedup"] is not None else "n/a"
    lines = [
        f"## Block pruning of {result['model']} (issue 23)",
        "",
        f"`OMP_NUM_THREADS={result['threads']} python -m {' '.join(['benchmarks.pruning_blocks', *argv])}`",
        "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{result['threads']} thread(s), batch {result['batch_size']}, {result['image_size']} px, fp32 eager, random "
        f"init; importance on random images against the dense logits; load average before {result['load_before']}, "
        f"after {result['load_after']}",
        "",
        "| model | blocks removed / all (candidates) | params M dense / pruned | MACs G dense / pruned "
        "| latency ms dense / pruned | speedup |",
        "|---|---|---|---|---|---:|",
        f"| {result['model']} | {len(removed)} / {n_blocks} ({len(result['candidates'])}) "
        f"| {params['dense'] / 1e6:.2f} / {params['pruned'] / 1e6:.2f} "
        f"| {mac['dense'] / 1e9:.2f} / {mac['pruned'] / 1e9:.2f} | {latency} | {speedup} |",
        "",
        f"Removed (ranking `{result['ranking']}`"
        + (", downsampling blocks replaced by their shortcut" if result["shortcuts"] else "")
        + "; output change without the block, MSE of the logits"
        + (", and the block's own time in ms" if result["block_latency_ms"] else "")
        + "): "
        + ", ".join(
            f"`{b}` ({result['importance'][b]:.3g}"
            + (f", {result['block_latency_ms'][b]:.1f} ms" if result["block_latency_ms"] else "")
            + ")"
            for b in removed
        ),
        "",
        f"block pruning: {result['model']} {len(removed)}/{n_blocks} blocks removed "
        f"({len(removed) / n_blocks:.0%}), params -{drop(params):.0%}, MACs -{drop(mac):.0%}, "
        f"speedup {speedup} (target >= {TARGET_SPEEDUP}x)",
    ]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pruning_blocks", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="resnet50", choices=MODELS)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fraction", type=float, default=0.25, help="fraction of all residual blocks removed")
    p.add_argument("--importance-batches", type=int, default=2, help="random batches for the importance")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ranking",
        default="loss",
        choices=BLOCK_RANKINGS,
        help="loss: least output change first; loss_per_latency: least change per ms the block takes",
    )
    p.add_argument(
        "--shortcuts",
        action="store_true",
        help="downsampling blocks are candidates too: removing one keeps its shortcut (relu(downsample(x)))",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    if not 0.0 <= args.fraction < 1.0:
        p.error("--fraction must be in [0, 1)")
    for name in ("image_size", "batch_size", "importance_batches", "threads", "repeats", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_block_pruning(
        model_name=args.model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        fraction=args.fraction,
        importance_batches=args.importance_batches,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        rounds=args.rounds,
        seed=args.seed,
        log=lambda text: print(text, flush=True),
        ranking=args.ranking,
        shortcuts=args.shortcuts,
    )
    lines = report(result, list(sys.argv[1:] if argv is None else argv))
    print("\n".join(lines), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
