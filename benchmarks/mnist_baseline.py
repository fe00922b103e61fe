"""MNIST baseline: wall time and test accuracy of `lightning-optim fit --config examples/mnist_baseline.yaml`.

Runs the recipe's exact command in a fresh process (start-up, data loading, training and the final test
included in the wall time) and reads the test accuracy from the run's ``metrics.csv``::

    .venv/bin/python -m benchmarks.mnist_baseline --data-dir ../shared/data

``--config`` may be given several times to compare recipes side by side in one run (ratios against the
first). The target of issue 2 is >= 99.0% test accuracy on the 10,000 MNIST test images. The load
average (``uptime``) before and after is printed with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.99


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("lightning-optim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_optim.cli"]


def last_value(metrics_csv: Path, key: str, where: str | None = None) -> float | None:
    """The last non-empty ``key`` in the CSV (only in rows where ``where`` is also non-empty, if given)."""
    value = None
    with metrics_csv.open() as fh:
        for row in csv.DictReader(fh):
            if row.get(key) and (where is None or row.get(where)):
                value = float(row[key])
    return value


def run_recipe(config: str, data_dir: str, threads: int, extra: list[str]) -> dict:
    """Run one ``fit`` of ``config`` in a fresh process; returns wall time, test accuracy and epochs."""
    out = Path(tempfile.mkdtemp(prefix="mnist_baseline_"))
    args = ["fit", "--config", config, "--data.init_args.data_dir", data_dir]
    args += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out)]
    args += ["--trainer.enable_progress_bar", "false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run([*cli_command(), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = next(out.rglob("metrics.csv"))
    result = {
        "config": config,
        "command": " ".join(["lightning-optim", *args[:3], "--data.init_args.data_dir", data_dir, *extra]),
        "wall_s": wall,
        "test_acc": last_value(metrics, "test_acc"),
        "val_acc": last_value(metrics, "val_acc"),
        "epochs": int(last_value(metrics, "epoch", where="val_acc") or 0) + 1,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument(
        "--config", action="append", default=None, help="recipe(s); default examples/mnist_baseline.yaml"
    )
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the run")
    parser.add_argument("overrides", nargs="*", help="extra CLI arguments for every run, after `--`")
    args = parser.parse_args(argv)
    configs = args.config or ["examples/mnist_baseline.yaml"]

    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads; load average before: {load_average()}",
        flush=True,
    )
    results = []
    for config in configs:
        results.append(run_recipe(config, args.data_dir, args.threads, args.overrides))
        print(f"  {config}: {results[-1]['wall_s']:.1f} s, test_acc {results[-1]['test_acc']}", flush=True)
    print(f"load average after: {load_average()}\n")
    base = results[0]["wall_s"]
    print("| recipe | epochs | wall time (s) | time ratio | test accuracy | >= 99.0% |")
    print("|---|---|---|---|---|---|")
    for r in results:
        acc = r["test_acc"]
        ok = "yes" if acc is not None and acc >= TARGET else "no"
        acc_s = f"{100 * acc:.2f}%" if acc is not None else "n/a"
        print(
            f"| {r['config']} | {r['epochs']} | {r['wall_s']:.1f} | {r['wall_s'] / base:.2f} | {acc_s} | {ok} |"
        )
    print("\ncommands:")
    for r in results:
        print(f"  {r['command']}")


if __name__ == "__main__":
    main()
