"""The flagship (issue 27): torchvision ResNet-18 on MNIST compressed end to end by ``examples/compress_resnet18.yaml``.

Per seed, each fit a fresh ``lightning-optim fit`` process running the recipe files as they are (only the output
folder, the seed, the data folder and, with ``--limit-train-batches``, the epoch length are rewritten):

1. **teacher**: ``examples/compress_resnet18_teacher.yaml`` (dense fp32, 6 epochs of half the training batches);
2. **flagship**: ``examples/compress_resnet18.yaml``: warm start from the teacher, 50% of the channel groups
   pruned over epochs 0-3 and removed, QAT on PT2E in epochs 4-5, distilled from the teacher throughout; its
   deploy files (``.pt2``, ONNX) and report in the run folder;
3. **no KD**: the same recipe without the ``KnowledgeDistillation`` callback (``CompressionPipeline(distill=
   false)``): distillation's share.

Then, on the 10,000 MNIST test images (the inputs as the data module gives them at test time): the test error
of the dense teacher (fp32) and of each run's int8 deploy files (the ONNX file in ONNX Runtime, the ``.pt2``
program with torch alone); file sizes against the dense fp32 state dict; latency at ``--batch-size`` (1 thread,
interleaved rounds, medians) of dense fp32 eager, dense fp32 ``torch.compile``, the flagship's ONNX file in ONNX
Runtime and its ``.pt2`` program compiled. Each step's results are appended to ``--out-dir/results.jsonl`` and a
rerun skips the steps done (a killed run resumes where it stopped; fits are not resumed mid-way).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks flagship --data-dir ../shared/data --seeds 0 1 2 --threads 1

The last line: ``flagship resnet18: Sx faster (vs eager), Cx (vs compiled), Mx smaller, error E% (dense D%),
KD closes G% of the gap`` - S, C and M of the ONNX deploy file (the faster int8 path here; both are in the
table), E and D means over the seeds, G = (no-KD error - flagship error) / (no-KD error - dense error) of the
means.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEACHER_RECIPE = ROOT / "examples" / "compress_resnet18_teacher.yaml"
FLAGSHIP_RECIPE = ROOT / "examples" / "compress_resnet18.yaml"
#: the output folder the recipes name, rewritten per seed
RECIPE_DIR = "artifacts/compress_resnet18"
STEPS = ("teacher", "flagship", "no_kd")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _replace_paths(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace_paths(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace_paths(v, old, new) for k, v in value.items()}
    return value


def _class_name(entry: dict[str, Any]) -> str:
    return str(entry.get("class_path", "")).rsplit(".", 1)[-1]


def recipe_for(
    step: str, seed: int, folder: Path, data_dir: str, limit_train_batches: float | None = None
) -> dict[str, Any]:
    """The recipe of ``step`` for ``seed``, its files under ``folder`` (see the module docstring)."""
    source = TEACHER_RECIPE if step == "teacher" else FLAGSHIP_RECIPE
    config = yaml.safe_load(source.read_text())
    config = _replace_paths(config, RECIPE_DIR, str(folder))
    config["seed_everything"] = seed
    config["data"]["init_args"]["data_dir"] = data_dir
    trainer = config["trainer"]
    trainer["enable_progress_bar"] = False
    if limit_train_batches is not None:
        trainer["limit_train_batches"] = limit_train_batches
    if step == "no_kd":
        trainer["callbacks"] = [c for c in trainer["callbacks"] if _class_name(c) != "KnowledgeDistillation"]
        for callback in trainer["callbacks"]:
            if _class_name(callback) == "CompressionPipeline":
                callback["init_args"]["distill"] = False
        trainer["logger"]["init_args"]["name"] = "no_kd"
    return config


def run_fit(config: dict[str, Any], path: Path, log_path: Path) -> None:
    """``lightning-optim fit --config path`` in a fresh process (1 thread), its output to ``log_path``."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    with open(log_path, "w") as out:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from lightning_optim.cli import build_cli; build_cli()",
                "fit",
                "--config",
                str(path),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"the fit of {path} failed (exit {result.returncode}):\n{tail}")


def _network_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def dense_teacher(checkpoint: Path) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.load_state_dict(_network_state(checkpoint))
    return model.eval()


def test_batches(data_dir: str, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The MNIST test split as the recipes' data module gives it at test time (normalized on the training split's
    statistics, grey repeated to 3 channels; no trainer attached: the evaluation path of its batch hooks)."""
    from lightning_optim.data import ImageClassificationDataModule
    from lightning_optim.modules.loss_terms import unpack_batch

    init = yaml.safe_load(TEACHER_RECIPE.read_text())["data"]["init_args"]
    init.update(data_dir=data_dir, batch_size=batch_size, eval_batch_size=batch_size)
    dm = ImageClassificationDataModule(**init)
    dm.setup("fit")
    dm.setup("test")
    batches = []
    for batch in dm.test_dataloader():
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
        x, y, _ = unpack_batch(batch)
        batches.append((x.float(), y))
    return batches


def _error(predict: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    wrong = total = 0
    with torch.no_grad():
        for x, y in batches:
            wrong += int((predict(x).argmax(-1) != y).sum())
            total += int(y.numel())
    return 100.0 * wrong / total


def deploy_files(run_dir: Path) -> dict[str, Path]:
    """The newest ``.onnx`` and ``.pt2`` files of the run's ``quantization`` folder."""
    found: dict[str, Path] = {}
    for suffix in (".onnx", ".pt2"):
        files = sorted(run_dir.rglob(f"quantization/*{suffix}"), key=lambda p: p.stat().st_mtime)
        if files:
            found[suffix[1:]] = files[-1]
    return found


def _load_pt2(path: Path) -> torch.nn.Module:
    return torch.export.load(str(path)).module()


def evaluate_run(run_dir: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    from lightning_optim.functional.quantization import OnnxRunner, read_onnx_metadata

    files = deploy_files(run_dir)
    missing = {"onnx", "pt2"} - set(files)
    if missing:
        raise RuntimeError(f"no {sorted(missing)} deploy file under {run_dir}/**/quantization/")
    row: dict[str, Any] = {"files": {k: str(v) for k, v in files.items()}}
    row["bytes"] = {k: v.stat().st_size for k, v in files.items()}
    row["onnx_format"] = read_onnx_metadata(files["onnx"]).get("format")
    row["onnx_error"] = _error(OnnxRunner(files["onnx"], threads=1), batches)
    row["pt2_error"] = _error(_load_pt2(files["pt2"]), batches)
    lopt = sorted(run_dir.rglob("*.lopt"))
    if lopt:
        row["bytes"]["lopt"] = lopt[-1].stat().st_size
    return row


def _as_function(module: Any) -> Any:
    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x)

    return run


def latency(
    teacher: torch.nn.Module, files: dict[str, Path], batch_size: int, repeats: int, threads: int
) -> dict[str, float]:
    from lightning_optim.functional.compression_report.measure import compare_latency
    from lightning_optim.functional.quantization import OnnxRunner

    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, 28, 28)
    runners = {
        "dense fp32 eager": teacher,
        "dense fp32 compile": torch.compile(copy.deepcopy(teacher)),
        "int8 ONNX Runtime": OnnxRunner(files["onnx"], threads=threads),
        # a callable: the unflattened program refuses .eval(), which the timing calls on modules
        "int8 .pt2 compile": _as_function(torch.compile(_load_pt2(files["pt2"]))),
    }
    result = compare_latency(runners, x, repeats=repeats, warmup=3, rounds=3, threads=threads)
    return {k: v["median_ms"] for k, v in result.items()}


def _done(results: Path) -> dict[tuple[int, str], dict[str, Any]]:
    done: dict[tuple[int, str], dict[str, Any]] = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["seed"], row["step"])] = row
    return done


def run_seed(args: argparse.Namespace, seed: int, results: Path) -> None:
    folder = Path(args.out_dir).resolve() / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    done = _done(results)
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    for step in STEPS:
        if (seed, step) in done:
            continue
        t0 = time.perf_counter()
        config = recipe_for(step, seed, folder, args.data_dir, args.limit_train_batches)
        run_fit(config, folder / f"{step}.yaml", folder / f"{step}.log")
        seconds = time.perf_counter() - t0
        batches = batches if batches is not None else test_batches(args.data_dir)
        row: dict[str, Any] = {"seed": seed, "step": step, "fit_s": round(seconds, 1)}
        if step == "teacher":
            teacher = dense_teacher(folder / "teacher.ckpt")
            row["fp32_error"] = _error(teacher, batches)
            buffer = io.BytesIO()
            torch.save(teacher.state_dict(), buffer)
            row["fp32_state_dict_bytes"] = len(buffer.getvalue())
            row["params"] = sum(p.numel() for p in teacher.parameters())
        else:
            row.update(evaluate_run(folder / ("flagship" if step == "flagship" else "no_kd"), batches))
            if step == "flagship":
                teacher = dense_teacher(folder / "teacher.ckpt")
                files = {k: Path(v) for k, v in row["files"].items()}
                row["latency_ms"] = latency(teacher, files, args.batch_size, args.repeats, args.threads)
                row["load"] = os.getloadavg()[0]
        with open(results, "a") as out:
            out.write(json.dumps(row) + "\n")
        _log(f"seed {seed} {step}: {json.dumps({k: v for k, v in row.items() if k != 'files'})}")


def remeasure(args: argparse.Namespace, results: Path) -> None:
    """Time each done seed's dense teacher and deploy files again (all seeds' fits over: a quiet machine)."""
    done = _done(results)
    for seed in args.seeds:
        row = done.get((seed, "flagship"))
        if row is None:
            continue
        folder = Path(args.out_dir).resolve() / f"seed{seed}"
        files = {k: Path(v) for k, v in row["files"].items()}
        timing = {
            "seed": seed,
            "step": "latency",
            "latency_ms": latency(
                dense_teacher(folder / "teacher.ckpt"), files, args.batch_size, args.repeats, args.threads
            ),
            "load": os.getloadavg()[0],
        }
        with open(results, "a") as out:
            out.write(json.dumps(timing) + "\n")
        _log(f"seed {seed} latency: {json.dumps(timing)}")


def _mean_worst(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), max(values)


def report(results: Path, seeds: list[int]) -> str:
    done = _done(results)
    lines = [
        "| seed | dense fp32 error % | flagship int8 error % (ONNX / .pt2) | no-KD int8 error % (ONNX) | "
        "KD closes | b64 ms: dense eager / dense compile / int8 ONNX / int8 .pt2 | ONNX vs eager / vs compile | "
        "fp32 / ONNX / .pt2 / .lopt MB | smaller (ONNX / .pt2) | load |",
        "|---:|---:|---|---:|---:|---|---|---|---|---:|",
    ]
    dense, flag, nokd, speed_e, speed_c, smaller = [], [], [], [], [], []
    for seed in seeds:
        t, f, n = (done.get((seed, s)) for s in STEPS)
        if not (t and f and n):
            lines.append(f"| {seed} | (steps done: {[s for s in STEPS if (seed, s) in done]}) |||||||||")
            continue
        timing = done.get((seed, "latency"), f)  # a quiet remeasurement when there is one
        lat = timing["latency_ms"]
        se = lat["dense fp32 eager"] / lat["int8 ONNX Runtime"]
        sc = lat["dense fp32 compile"] / lat["int8 ONNX Runtime"]
        fp32 = t["fp32_state_dict_bytes"]
        m_onnx, m_pt2 = fp32 / f["bytes"]["onnx"], fp32 / f["bytes"]["pt2"]
        gap = n["onnx_error"] - t["fp32_error"]
        closes = (n["onnx_error"] - f["onnx_error"]) / gap if gap > 0 else None
        dense.append(t["fp32_error"])
        flag.append(f["onnx_error"])
        nokd.append(n["onnx_error"])
        speed_e.append(se)
        speed_c.append(sc)
        smaller.append(m_onnx)
        mb = " / ".join(
            f"{b / 1e6:.2f}" for b in (fp32, f["bytes"]["onnx"], f["bytes"]["pt2"], f["bytes"].get("lopt", 0))
        )
        lines.append(
            f"| {seed} | {t['fp32_error']:.2f} | {f['onnx_error']:.2f} / {f['pt2_error']:.2f} | {n['onnx_error']:.2f} "
            f"| {'no gap' if closes is None else f'{100 * closes:.0f}%'} | {lat['dense fp32 eager']:.1f} / {lat['dense fp32 compile']:.1f} / "
            f"{lat['int8 ONNX Runtime']:.1f} / {lat['int8 .pt2 compile']:.1f} | {se:.2f}x / {sc:.2f}x | {mb} | "
            f"{m_onnx:.1f}x / {m_pt2:.1f}x | {timing['load']:.2f} |"
        )
    if not dense:
        return "\n".join(lines)
    d_mean, _ = _mean_worst(dense)
    f_mean, f_worst = _mean_worst(flag)
    n_mean, _ = _mean_worst(nokd)
    differences = [f - d for f, d in zip(flag, dense)]
    gap = n_mean - d_mean
    share = (n_mean - f_mean) / gap if gap > 0 else None
    kd_line = (
        f"distillation closes {100 * share:.0f}% of the gap to the dense teacher (target >= 50%)"
        if share is not None
        else f"no gap to close: the no-KD model is as accurate as the dense teacher ({n_mean:.2f}% vs {d_mean:.2f}%); "
        f"with distillation {f_mean - n_mean:+.2f} pt"
    )
    kd_last = (
        f"KD closes {100 * share:.0f}% of the gap"
        if share is not None
        else f"KD: no gap (no-KD {n_mean:.2f}%)"
    )
    lines += [
        "",
        f"- flagship int8 - dense fp32: mean {statistics.fmean(differences):+.2f} pt, worst {max(differences):+.2f} pt "
        f"(target <= +0.3 pt); flagship error mean {f_mean:.2f}%, worst {f_worst:.2f}%",
        f"- no-KD error mean {n_mean:.2f}%: {kd_line}",
        f"- speed (ONNX file, b64): {min(speed_e):.2f}-{max(speed_e):.2f}x vs dense eager, "
        f"{min(speed_c):.2f}-{max(speed_c):.2f}x vs dense compile (targets >= 6x, >= 3x); "
        f"size {min(smaller):.1f}x smaller than the dense fp32 state dict (target >= 8x)",
        "",
        f"flagship resnet18: {statistics.median(speed_e):.1f}x faster (vs eager), {statistics.median(speed_c):.1f}x "
        f"(vs compiled), {statistics.median(smaller):.1f}x smaller, error {f_mean:.2f}% (dense {d_mean:.2f}%), "
        + kd_last,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="latency batch")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out-dir", default="artifacts/flagship_benchmark")
    p.add_argument(
        "--limit-train-batches",
        type=float,
        default=None,
        help="override the recipes' epoch length (smoke runs)",
    )
    p.add_argument("--report-only", action="store_true", help="print the table of the results so far")
    p.add_argument(
        "--remeasure-latency",
        action="store_true",
        help="time the done seeds again (on a quiet machine); the table uses the latest measurement",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.out_dir) / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    if args.remeasure_latency:
        remeasure(args, results)
    elif not args.report_only:
        for seed in args.seeds:
            run_seed(args, seed, results)
    print(report(results, args.seeds))


if __name__ == "__main__":
    main()
