"""Extreme compression on full MNIST: pruning + trained weight sharing + entropy coding (a `.lws` file).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks extreme_compression --model lenet5 --seeds 0
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks extreme_compression --model lenet300 --seeds 0 1 2

Per seed, one process, 1 thread by default (``--threads``):

1. the dense fp32 teacher (``--teacher-epochs``; cached as ``<out>/<model>/teacher-s<seed>.ckpt``);
2. one fit, warm-started from the teacher: :class:`~lightning_optim.callbacks.ProgressivePruning` with per-layer
   final sparsities (``--sparsity``, cubic ramp over ``--prune-epochs``), then
   :class:`~lightning_optim.callbacks.WeightSharing` (``start_after: pruning``) with trained centroids, per-layer
   bit widths chosen under ``--budget`` bytes (HAWQ-V2 sensitivity) or given by ``--bits``, distilled from the
   teacher (:class:`~lightning_optim.callbacks.KnowledgeDistillation`) after the ramp; the artifact (``.lws``:
   codebooks, Huffman-coded indices and positions) is written at fit end and loaded back into the network;
3. the test error of that network, and the test error of the artifact **reloaded in a fresh process** by the
   loader alone (the two ``.py`` files of ``functional/weight_sharing`` copied to a temporary folder, torch and
   the architecture's class; the same test tensors and batch size): the two must be equal;
4. the ratio: dense fp32 state-dict bytes (``torch.save``) / artifact bytes.

Every configuration tried is recorded in ``benchmarks/results/extreme_compression.md``. The last line of a run is
``<model>: <ratio>x at <error>% error (budget <bytes>)`` (the worst seed). Anchors: soft weight-sharing (Ullrich
et al. 2017) LeNet-5 162x at 0.97%, LeNet-300-100 64x at 1.94%; Deep Compression 39x at 0.74% / 40x at 1.58%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*is deprecated.*")

REPO = Path(__file__).resolve().parents[1]
#: (ratio, error %) targets of the issue, and the stretch
TARGETS = {"lenet5": ((160.0, 0.80), (300.0, 0.90)), "lenet300": ((64.0, 1.64), (100.0, 1.80))}
#: default per-layer final sparsities (glob -> sparsity), after Dynamic Network Surgery's allocation (Guo et al.
#: 2016, Table 2: the big fully connected layer the sparsest, the first convolution the densest)
SPARSITY = {
    "lenet5": {"features.conv1": 0.5, "features.conv2": 0.94, "classifier.fc1": 0.99, "classifier.fc2": 0.85},
    "lenet300": {"fc1": 0.975, "fc2": 0.94, "fc3": 0.7},
}
#: default budgets: the dense state dict / the target ratio, rounded down
BUDGET = {"lenet5": 10_500, "lenet300": 16_500}


def _network(model: str) -> torch.nn.Module:
    from lightning_optim.models import LeNet5, LeNet300100

    return LeNet5("caffe") if model == "lenet5" else LeNet300100()


def dense_bytes(model: str) -> int:
    """``torch.save`` bytes of the dense fp32 state dict (the issue's reference: 1,728,013 / 1,069,269)."""
    import io

    buf = io.BytesIO()
    torch.save(_network(model).state_dict(), buf)
    return len(buf.getvalue())


def _datamodule(args: argparse.Namespace, seed: int):
    from lightning_optim.data import ImageClassificationDataModule

    aug = [{"name": "crop", "size": 28, "padding": 2}] if args.model == "lenet5" else "none"
    return ImageClassificationDataModule(
        "mnist", data_dir=args.data_dir, batch_size=args.batch_size, augmentation=aug, seed=seed
    )


def _trainer(args, out: Path, epochs: int, callbacks: list, name: str) -> pl.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=callbacks,
        logger=CSVLogger(str(out), name=name),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        deterministic=False,
    )


def teacher(args: argparse.Namespace, seed: int, out: Path) -> Path:
    """Train (or reuse) the dense teacher of this seed."""
    from lightning_optim.modules import ClassificationModule

    path = out / f"teacher-s{seed}.ckpt"
    if path.is_file():
        return path
    pl.seed_everything(seed, verbose=False)
    module = ClassificationModule(
        _network(args.model),
        optimizer="momentum",
        lr=0.05,
        weight_decay=1e-4,
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=args.teacher_epochs),
    )
    trainer = _trainer(args, out, args.teacher_epochs, [], f"teacher-s{seed}")
    trainer.fit(module, datamodule=_datamodule(args, seed))
    trainer.save_checkpoint(str(path), weights_only=True)
    return path


def compress(args: argparse.Namespace, seed: int, out: Path, teacher_ckpt: Path) -> dict:
    """The one-fit pipeline; returns the run's figures."""
    from lightning_optim.callbacks import KnowledgeDistillation, ProgressivePruning, WarmStart, WeightSharing
    from lightning_optim.modules import ClassificationModule

    pl.seed_everything(seed, verbose=False)
    epochs = args.prune_epochs + args.share_epochs
    module = ClassificationModule(
        _network(args.model),
        optimizer="adam",
        lr=args.lr,
        lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
    )
    sparsity = json.loads(args.sparsity) if args.sparsity else SPARSITY[args.model]
    pruning = ProgressivePruning(
        final_sparsity=max(sparsity.values()),
        layer_sparsity=sparsity,
        start=0,
        end=max(1, args.prune_epochs - args.fix_epochs),
        unit="epoch",
        frequency=args.prune_frequency,
        schedule="cubic",
        scope="layer",
        module_types=["Linear", "Conv2d"],
    )
    sharing_kwargs = dict(
        start_after="pruning",
        start_epoch=args.prune_epochs,
        init=args.init,
        codebook_dtype="float16",
        other_dtype="float16",
        export_path=str(out / f"{args.model}-s{seed}.lws"),
    )
    if args.bits:
        sharing = WeightSharing(bits=json.loads(args.bits), **sharing_kwargs)
    else:
        sharing = WeightSharing(bits=8, size_budget_bytes=args.budget, **sharing_kwargs)
    kd = KnowledgeDistillation(
        teacher=_network(args.model),
        teacher_checkpoint=str(teacher_ckpt),
        temperature=4.0,
        alpha=0.5,
        start_epoch=max(0, args.prune_epochs - args.fix_epochs),
    )
    callbacks = [WarmStart(str(teacher_ckpt)), pruning, kd, sharing]
    trainer = _trainer(args, out, epochs, callbacks, f"compress-s{seed}")
    dm = _datamodule(args, seed)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - started
    # the network now holds exactly what the file holds (the callback loaded it back)
    dm.setup("test")
    x = torch.cat([dm.to_model_input(b[0]) for b in dm.test_dataloader()])
    y = torch.cat([b[1] for b in dm.test_dataloader()])
    # per seed: the normalization is fitted on the seed's training split
    torch.save({"x": x, "y": y}, out / f"test_tensors-s{seed}.pt")
    net = module.model.eval()
    error = _error(net, x, y, args.eval_batch)
    path = Path(sharing.exported_path)
    return {
        "seed": seed,
        "artifact": str(path),
        "bytes": path.stat().st_size,
        "error_pct": error,
        "fit_s": round(fit_s, 1),
        "bits": {k: v for k, v in getattr(sharing, "layer_bits", {}).items()},
        "breakdown": sharing.size_breakdown.markdown() if sharing.size_breakdown else "",
    }


def _error(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            wrong += int((net(x[i : i + batch]).argmax(1) != y[i : i + batch]).sum())
    return 100.0 * wrong / len(x)


FRESH = r"""
import sys
from collections import OrderedDict
import torch
from torch import nn
sys.path.insert(0, sys.argv[1])        # the loader's two files, copied: nothing of lightning_optim is imported
from artifact import load_shared

def lenet300():                         # the architecture, as the user's own code (state-dict names of the zoo's)
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(784, 300), act1=nn.ReLU(),
                                     fc2=nn.Linear(300, 100), act2=nn.ReLU(), fc3=nn.Linear(100, 10)))

def lenet5():
    features = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 20, 5), act1=nn.ReLU(), pool1=nn.MaxPool2d(2),
                                         conv2=nn.Conv2d(20, 50, 5), act2=nn.ReLU(), pool2=nn.MaxPool2d(2)))
    classifier = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(800, 500), act3=nn.ReLU(),
                                           fc2=nn.Linear(500, 10)))
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))

assert not any(m.startswith("lightning_optim") for m in sys.modules)
torch.set_num_threads(int(sys.argv[5]))
net = load_shared(sys.argv[2], lenet5() if sys.argv[3] == "lenet5" else lenet300())
data = torch.load(sys.argv[4], weights_only=True)
x, y, batch, wrong = data["x"], data["y"], int(sys.argv[6]), 0
with torch.no_grad():
    for i in range(0, len(x), batch):
        wrong += int((net(x[i : i + batch]).argmax(1) != y[i : i + batch]).sum())
assert not any(m.startswith("lightning_optim") for m in sys.modules)
print(repr(100.0 * wrong / len(x)))
"""


def fresh_error(args: argparse.Namespace, artifact: str, tensors: Path) -> float:
    """The test error of the artifact reloaded in a fresh process by the copied loader alone."""
    with tempfile.TemporaryDirectory() as tmp:
        src = REPO / "lightning_optim" / "functional" / "weight_sharing"
        for name in ("artifact.py", "entropy.py"):
            shutil.copy(src / name, Path(tmp) / name)
        proc = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                FRESH,
                tmp,
                artifact,
                args.model,
                str(tensors),
                str(args.threads),
                str(args.eval_batch),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )
    if proc.returncode != 0:
        raise RuntimeError(f"fresh-process load failed: {proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(TARGETS), default="lenet300")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out-dir", default="/tmp/extreme")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--prune-epochs", type=int, default=12, help="ramp + fixed-mask fine-tuning epochs")
    parser.add_argument(
        "--fix-epochs", type=int, default=3, help="last epochs of the pruning stage with masks fixed"
    )
    parser.add_argument("--share-epochs", type=int, default=6, help="epochs of centroid training")
    parser.add_argument("--prune-frequency", type=int, default=200, help="steps between pruning steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--init", default="linear")
    parser.add_argument("--budget", type=int, default=None, help="bytes of the whole .lws file")
    parser.add_argument(
        "--bits", default=None, help="JSON {glob: bits} instead of a budget, e.g. '{\"*\": 4}'"
    )
    parser.add_argument("--sparsity", default=None, help="JSON {glob: final sparsity} (default: SPARSITY)")
    parser.add_argument("--teachers-only", action="store_true", help="train (or find) the teachers and stop")
    args = parser.parse_args(argv)
    if args.budget is None and not args.bits:
        args.budget = BUDGET[args.model]
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir) / args.model
    out.mkdir(parents=True, exist_ok=True)
    dense = dense_bytes(args.model)
    load = os.getloadavg()
    print(
        f"# extreme compression, {args.model}: torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.machine()}, load average at start {load[0]:.1f}; dense fp32 state dict {dense:,} B",
        flush=True,
    )
    print(f"# settings: {json.dumps({k: v for k, v in vars(args).items()})}", flush=True)
    if args.teachers_only:
        for seed in args.seeds:
            print(f"teacher of seed {seed}: {teacher(args, seed, out)}", flush=True)
        return
    rows = []
    for seed in args.seeds:
        ckpt = teacher(args, seed, out)
        row = compress(args, seed, out, ckpt)
        row["ratio"] = dense / row["bytes"]
        print(row["breakdown"], flush=True)
        print(f"seed {seed}: in-process test error {row['error_pct']:.2f}%", flush=True)
        row["fresh_error_pct"] = fresh_error(args, row["artifact"], out / f"test_tensors-s{seed}.pt")
        rows.append(row)
        print(
            f"seed {seed}: {row['bytes']:,} B = {row['ratio']:.1f}x, test error {row['error_pct']:.2f}% "
            f"(fresh process: {row['fresh_error_pct']:.2f}%, {'equal' if row['fresh_error_pct'] == row['error_pct'] else 'DIFFERENT'}), "
            f"bits {row['bits']}, fit {row['fit_s']} s",
            flush=True,
        )
    (target, stretch) = TARGETS[args.model]
    print("\n| seed | bytes | ratio | test error | fresh-process error | bits |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['bytes']:,} | {r['ratio']:.1f}x | {r['error_pct']:.2f}% | {r['fresh_error_pct']:.2f}% | {r['bits']} |"
        )
    ratios, errors = [r["ratio"] for r in rows], [r["error_pct"] for r in rows]
    print(
        f"\nmean {statistics.mean(ratios):.1f}x at {statistics.mean(errors):.2f}%; worst {min(ratios):.1f}x, "
        f"{max(errors):.2f}% (target >= {target[0]:.0f}x at <= {target[1]:.2f}%; stretch >= {stretch[0]:.0f}x at "
        f"<= {stretch[1]:.2f}%); load average at end {os.getloadavg()[0]:.1f}"
    )
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    budget = args.budget if args.budget is not None else "none: --bits " + args.bits
    print(f"{args.model}: {min(ratios):.1f}x at {max(errors):.2f}% error (budget {budget})")


if __name__ == "__main__":
    main()
