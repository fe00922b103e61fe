"""Per-rank peak memory of a pruning ramp under FSDP2 on 2 processes, against one process (issue 26, "Memory").

One command::

    .venv/bin/python -m benchmarks.fsdp2_memory --params 50e6 --out benchmarks/results/fsdp2_memory.md

An MLP of about ``--params`` parameters (the exact count is printed), Adam, synthetic data, and a
``ProgressivePruning`` ramp (unstructured, ``--scope`` layer or global, final sparsity 0.75, pruning steps at
optimizer steps 0, 2, 4 and 6) is fitted (a) in one process (``devices=1``, no sharding) and (b) in 2 processes
under ``ModelParallelStrategy`` with ``ClassificationModule(sharding="fsdp2")`` (parameters, gradients, optimizer
state and pruning masks sharded), each rank started by this script with Lightning's environment variables
(``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), so Lightning starts no process of its own. The global batch
is the same in both (``--batch``; each rank gets half).

**Memory** (``--only memory``): each process measures its own resident set size (RSS, ``/proc/self/status``):

- its *baseline*, after the imports (torch, Lightning, this package) and before the model is built;
- its peak RSS (the kernel's high-water mark ``VmHWM``, what ``ru_maxrss`` reports) over the whole run, and per
  phase (the high-water mark is reset with ``/proc/self/clear_refs`` at each phase boundary): setup (the model
  built and sharded, the optimizer made), training steps, and the pruning steps (the callback's work at a
  pruning step: scores, masks, optimizer state cleared);
- a sampled peak (every ``--sample-ms``) of the anonymous memory (``RssAnon``: tensors and the heap, not the
  mapped library files) as a cross-check.

The figure of record is the **peak minus the baseline**, per rank: the memory the training of this model takes,
measured with glibc's mmap threshold held at its default 128 KiB (``MALLOC_MMAP_THRESHOLD_``, ``--malloc fixed``):
by default glibc raises the threshold as large blocks are freed (up to 32 MiB), after which blocks under it come
from the heap and stay in the process when freed, so RSS would count freed tensors too -- in the 2-rank run,
whose shard-sized blocks (31 MiB at 50M parameters) fall just under that limit, several hundred MiB of them.
``--malloc dynamic`` measures with glibc's defaults instead.
The baseline (about 0.75 GiB: the CUDA build of torch maps its libraries even on a CPU, and Lightning) is paid
once per process whatever the model, so it does not shrink with sharding; at 50M parameters it is as large as
the model's own state and would hide the ratio (on a GPU the analogous figure, device memory, has no such
baseline). Both are reported, with the ratio 2-rank / 1-process of each (the larger of the two ranks).

**Time** (``--only timing``): one fit per mode with ``--timing-steps`` more steps after the ramp, in which
ProgressivePruning's per-step hooks (gradient and weight masking) run on every other step and are skipped on the
others: the step-time ratio with/without them, within one fit (pruning steps excepted: the issue's target is
<= 1.05), the share of the step spent in the hooks, and the time per step of each mode (2 processes on the
2 cores of this machine against one process with 2 threads: no speed-up is expected). Wall-time figures are only
comparable when the machine is idle: the script prints ``uptime`` at the start and the end.

The results file (``--out``) gets one section per part and scope run, between marker comments; a section not
run again is kept (so ``--only timing`` updates the timing figures and leaves the memory figures as they are).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the pruning ramp: optimizer steps 0, 2, 4, 6, to a final sparsity of 0.75 (unstructured)
RAMP: dict[str, Any] = {"final_sparsity": 0.75, "start": 0, "end": 6, "unit": "step", "frequency": 2}
#: hidden layers of the MLP (all of one width, chosen to reach ``--params``)
HIDDEN = 4
FEATURES, CLASSES = 256, 10
#: the most a run of the 2 ranks may take before both are killed
RUN_TIMEOUT_S = 1800
KIB = 1024
MIB = 1024 * 1024
PARTS = ("memory", "timing")
#: glibc's default mmap threshold, held fixed (``MALLOC_MMAP_THRESHOLD_``) with ``--malloc fixed``
MMAP_THRESHOLD = 128 * 1024


# ------------------------------------------------------------------------------------------------ model
def hidden_width(
    params: float, features: int = FEATURES, classes: int = CLASSES, hidden: int = HIDDEN
) -> int:
    """The width (a multiple of 8, at least 8) of :func:`network` whose parameter count is closest to ``params``:
    ``features*w + w + (hidden-1)*(w*w + w) + w*classes + classes``."""
    a, b, c = hidden - 1, features + classes + hidden, classes - params
    w = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) if a else -c / b
    candidates = {max(8, 8 * math.floor(w / 8)), max(8, 8 * math.ceil(w / 8))}
    return min(candidates, key=lambda x: abs(count_parameters(x, features, classes, hidden) - params))


def count_parameters(
    width: int, features: int = FEATURES, classes: int = CLASSES, hidden: int = HIDDEN
) -> int:
    """Parameters of :func:`network` of ``width``."""
    return features * width + width + (hidden - 1) * (width * width + width) + width * classes + classes


def network(width: int) -> Any:
    from torch import nn

    layers: list[nn.Module] = [nn.Linear(FEATURES, width), nn.ReLU()]
    for _ in range(HIDDEN - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------- memory
def _status() -> dict[str, int]:
    """``/proc/self/status`` memory fields in bytes (``VmRSS``, ``VmHWM``, ``RssAnon``, ...)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0]) * KIB
    return out


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (``clear_refs`` 5); ``False`` where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryPhases:
    """Peak RSS per phase of a run: at each :meth:`close` the kernel's high-water mark since the last one is
    added to a phase (``max``) and reset; a thread samples ``RssAnon``/``VmRSS`` in between."""

    def __init__(self, sample_s: float) -> None:
        self.peaks: dict[str, int] = {}
        self.sampled_anon: dict[str, int] = {}
        self.sampled_rss: dict[str, int] = {}
        self.resettable = True
        self._interval_anon = self._interval_rss = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sample_s = sample_s
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self._sample_s):
            s = _status()
            with self._lock:
                self._interval_anon = max(self._interval_anon, s.get("RssAnon", 0))
                self._interval_rss = max(self._interval_rss, s["VmRSS"])

    def close(self, phase: str) -> None:
        """End the current interval and count it into ``phase``; the next interval starts now."""
        s = _status()
        with self._lock:
            anon = max(self._interval_anon, s.get("RssAnon", 0))
            rss = max(self._interval_rss, s["VmRSS"])
            self._interval_anon = self._interval_rss = 0
        self.peaks[phase] = max(self.peaks.get(phase, 0), s["VmHWM"])
        self.sampled_anon[phase] = max(self.sampled_anon.get(phase, 0), anon)
        self.sampled_rss[phase] = max(self.sampled_rss.get(phase, 0), rss)
        self.resettable = _reset_peak() and self.resettable


# --------------------------------------------------------------------------------------------- workers
def _callbacks(pruning: Any, memory: MemoryPhases | None, timing: dict[str, Any] | None) -> list[Any]:
    """Two probes around ``pruning`` (Lightning calls callbacks in list order): the interval between them at
    ``on_train_start``/``on_train_batch_end`` is the callback's own work, a pruning step when its history grew.
    With ``timing``: step times, and the callback's per-step hooks skipped on every other step after the ramp."""
    import lightning.pytorch as pl

    class Before(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if memory is not None:
                memory.close("setup")
            self.events = len(pruning.history)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if timing is not None:
                done = pruning.phase_state(trainer) == "done"
                timing["after_ramp"] = timing["after_ramp"] + 1 if done else 0
                timing["off"] = done and timing["after_ramp"] % 2 == 0
                timing["hook_s"] = 0.0
                timing["t0"] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if memory is not None:
                memory.close("train")
            self.events = len(pruning.history)

    before = Before()

    class After(pl.Callback):
        def _pruned(self) -> bool:
            return len(pruning.history) > before.events

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if memory is not None:
                memory.close("prune" if self._pruned() else "setup")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            pruned = self._pruned()
            if memory is not None:
                memory.close("prune" if pruned else "train")
            if timing is not None:
                seconds = time.perf_counter() - timing["t0"]
                kind = "prune" if pruned else ("off" if timing["off"] else "on")
                if timing["after_ramp"] == 0 or pruned:
                    kind = "prune" if pruned else "ramp"
                timing["steps"].append({"kind": kind, "s": seconds, "hook_s": timing["hook_s"]})

    if timing is not None:
        for hook in ("on_before_optimizer_step", "on_train_batch_end"):
            original = getattr(pruning, hook)

            def wrapped(*args: Any, _original: Any = original, **kwargs: Any) -> None:
                if timing["off"]:
                    return
                t = time.perf_counter()
                _original(*args, **kwargs)
                timing["hook_s"] += time.perf_counter() - t

            setattr(pruning, hook, wrapped)  # an instance attribute: Lightning calls it in the hook's place
    return [before, pruning, After()]


def run_worker(args: argparse.Namespace) -> None:
    """One process of one run: ``--worker single`` (devices=1) or ``--worker fsdp2`` (one of 2 ranks, started
    with Lightning's environment variables); writes its measurements to ``--json``."""
    import torch

    torch.set_num_threads(args.threads)
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_optim import ClassificationModule
    from lightning_optim.callbacks import ProgressivePruning

    sharded = args.worker == "fsdp2"
    world = 2 if sharded else 1
    memory = MemoryPhases(args.sample_ms / 1000) if args.part == "memory" else None
    gc.collect()
    baseline = _status()
    if memory is not None:
        memory.close("imports")
        memory.start()
    width = hidden_width(args.params)
    timing: dict[str, Any] | None = None
    if args.part == "timing":
        timing = {"steps": [], "after_ramp": 0, "off": False, "hook_s": 0.0, "t0": 0.0}
    # timing: the last pruning step ends batch end-1; then `timing_steps` batches, hooks on and off in turn
    steps = args.steps if args.part == "memory" else RAMP["end"] + args.timing_steps

    pl.seed_everything(0)
    g = torch.Generator().manual_seed(1)
    samples = steps * args.batch
    data = TensorDataset(
        torch.randn(samples, FEATURES, generator=g), torch.randint(0, CLASSES, (samples,), generator=g)
    )
    loader = DataLoader(data, batch_size=args.batch // world, shuffle=False)
    pruning = ProgressivePruning(scope=args.scope, granularity=args.granularity, verbose=False, **RAMP)
    strategy: Any = "auto"
    if sharded:
        strategy = ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=RUN_TIMEOUT_S)
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=strategy,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=_callbacks(pruning, memory, timing),
    )
    net = ClassificationModule(
        network(width), num_classes=CLASSES, optimizer="adam", lr=1e-4, sharding="fsdp2" if sharded else None
    )
    trainer.fit(net, train_dataloaders=loader)
    result: dict[str, Any] = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "width": width,
        "parameters": count_parameters(width),
        "threads": torch.get_num_threads(),
        "global_step": trainer.global_step,
        "history": [dict(h) for h in pruning.history],
        "sharded": sharded and all(type(p).__name__ == "DTensor" for p in net.model.parameters()),
        "baseline_rss": baseline["VmRSS"],
        "baseline_anon": baseline.get("RssAnon", 0),
    }
    if memory is not None:
        memory.close("end")
        memory.stop()
        result.update(
            {
                "peaks": memory.peaks,
                "sampled_anon": memory.sampled_anon,
                "sampled_rss": memory.sampled_rss,
                "resettable": memory.resettable,
            }
        )
    if timing is not None:
        result["steps"] = timing["steps"]
    Path(args.json).write_text(json.dumps(result, indent=1))
    if sharded:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=120))
            finally:
                dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no interpreter teardown while gloo threads are joinable


# --------------------------------------------------------------------------------------------- driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_command(args: argparse.Namespace, worker: str, part: str, json_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.fsdp2_memory",
        "--worker",
        worker,
        "--part",
        part,
        "--json",
        str(json_path),
        "--params",
        str(args.params),
        "--steps",
        str(args.steps),
        "--timing-steps",
        str(args.timing_steps),
        "--batch",
        str(args.batch),
        "--scope",
        args.scope,
        "--granularity",
        args.granularity,
        "--sample-ms",
        str(args.sample_ms),
        "--threads",
        str(args.threads),
    ]


#: the ``--granularity`` choices (the masks' kinds measured)
GRANULARITIES = ("unstructured", "structured", "channel_groups")


def _granularity_key(args: argparse.Namespace) -> str:
    """The section key's suffix: none for unstructured masks (the sections of record), else the granularity."""
    return "" if args.granularity == "unstructured" else f", granularity {args.granularity}"


def _granularity_title(args: argparse.Namespace) -> str:
    return "" if args.granularity == "unstructured" else f", granularity `{args.granularity}`"


def run_mode(args: argparse.Namespace, mode: str, part: str, tmp: Path) -> list[dict[str, Any]]:
    """Run ``mode`` (``single``: one process with ``--cores`` threads; ``fsdp2``: 2 ranks of one thread each)
    for ``part``; the workers' results, by rank."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    procs = []
    if mode == "single":
        ranks = [0]
        threads = args.cores
    else:
        ranks = [0, 1]
        threads = max(1, args.cores // 2)
        port = str(_free_port())
    for rank in ranks:
        worker_env = dict(env, OMP_NUM_THREADS=str(threads))
        if part == "memory" and args.malloc == "fixed":
            worker_env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        if mode == "fsdp2":
            worker_env.update(
                LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
            )
        json_path = tmp / f"{part}_{mode}_{rank}.json"
        log = open(tmp / f"{part}_{mode}_{rank}.log", "w")  # noqa: SIM115 - closed below
        command = _worker_command(
            argparse.Namespace(**{**vars(args), "threads": threads}), mode, part, json_path
        )
        proc = subprocess.Popen(command, env=worker_env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, log, json_path))
    codes: list[Any] = []
    try:
        for proc, _, _ in procs:
            codes.append(proc.wait(timeout=RUN_TIMEOUT_S))
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if any(c != 0 for c in codes):
        logs = "\n".join((tmp / f"{part}_{mode}_{r}.log").read_text()[-4000:] for r in ranks)
        raise RuntimeError(f"{mode} {part} run failed (exit codes {codes}):\n{logs}")
    return [json.loads(path.read_text()) for _, _, path in procs]


def _mib(n: float) -> str:
    return f"{n / MIB:,.0f}"


def memory_rows(single: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of the memory part: per process, the baseline, the peak RSS (whole run and per phase), peak minus
    baseline, the sampled anonymous-memory peak; and the ratios 2-rank (the larger rank) / 1-process."""

    def figures(r: dict[str, Any]) -> dict[str, float]:
        peaks, base = r["peaks"], r["baseline_rss"]
        run = max(v for k, v in peaks.items() if k != "imports")
        anon = max(v for k, v in r["sampled_anon"].items() if k != "imports")
        out = {
            "baseline": base,
            "peak": max(peaks.values()),
            "run_peak": run,
            "above": run - base,
            "anon_above": anon - r["baseline_anon"],
        }
        for phase in ("setup", "train", "prune"):
            out[f"{phase}_above"] = peaks.get(phase, base) - base
        return out

    one = figures(single)
    two = [figures(r) for r in ranks]
    worst = {k: max(t[k] for t in two) for k in one}
    ratios = {k: worst[k] / one[k] if one[k] else float("nan") for k in one}
    return {"single": one, "ranks": two, "worst": worst, "ratios": ratios}


def memory_section(args: argparse.Namespace, single: dict[str, Any], ranks: list[dict[str, Any]]) -> str:
    figs = memory_rows(single, ranks)
    one, two, ratios = figs["single"], figs["ranks"], figs["ratios"]
    cols = [
        ("baseline", "baseline RSS (after imports)"),
        ("peak", "peak RSS (`ru_maxrss`)"),
        ("above", "**peak - baseline**"),
        ("setup_above", "setup peak - baseline"),
        ("train_above", "training steps peak - baseline"),
        ("prune_above", "pruning steps peak - baseline"),
        ("anon_above", "sampled `RssAnon` peak - baseline"),
    ]
    lines = [
        f"MLP {FEATURES}-{single['width']}x{HIDDEN}-{CLASSES}: **{single['parameters']:,} parameters** "
        f"({single['parameters'] * 4 / MIB:,.0f} MiB of float32 weights); Adam; global batch {args.batch}; "
        f"{args.steps} optimizer steps; ProgressivePruning {args.granularity}, scope `{args.scope}`, pruning steps at "
        f"{list(range(RAMP['start'], RAMP['end'] + 1, RAMP['frequency']))} to sparsity {RAMP['final_sparsity']} "
        f"(reached: {single['history'][-1]['sparsity']:.3f} in one process, "
        f"{ranks[0]['history'][-1]['sparsity']:.3f} sharded); every parameter a DTensor in the 2-rank run: "
        f"{all(r['sharded'] for r in ranks)}.",
        "",
        "| MiB per process | " + " | ".join(c for _, c in cols) + " |",
        "|---|" + "---:|" * len(cols),
        "| 1 process | " + " | ".join(_mib(one[k]) for k, _ in cols) + " |",
    ]
    for i, t in enumerate(two):
        lines.append(f"| FSDP2 rank {i} of 2 | " + " | ".join(_mib(t[k]) for k, _ in cols) + " |")
    lines.append(
        "| **ratio 2-rank / 1 process** (larger rank) | "
        + " | ".join(f"{ratios[k]:.3f}" if k != "baseline" else f"{ratios[k]:.2f}" for k, _ in cols)
        + " |"
    )
    held = "holds" if ratios["above"] <= 0.6 else "misses"
    allocator = (
        f"glibc's mmap threshold fixed at {MMAP_THRESHOLD // 1024} KiB (`MALLOC_MMAP_THRESHOLD_`)"
        if args.malloc == "fixed"
        else "glibc's dynamic mmap threshold (its default)"
    )
    lines += [
        "",
        f"Allocator: {allocator}. "
        f"Figure of record: peak - baseline, ratio **{ratios['above']:.3f}** (target <= 0.6: {held}); the raw "
        f"peak RSS ratio is {ratios['peak']:.3f} (each process also holds its ~{_mib(one['baseline'])} MiB "
        "baseline of libraries).",
    ]
    if not (single.get("resettable") and all(r.get("resettable") for r in ranks)):
        lines.append(
            "(The high-water mark could not be reset here: the per-phase peaks include earlier phases.)"
        )
    return "\n".join(lines)


def _step_stats(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Medians of the step times after the ramp (on: hooks ran, off: hooks skipped), the ratio on/off of the
    medians, the median share of the step spent in the hooks, the mean pruning-step time."""
    on = [s["s"] for s in steps if s["kind"] == "on"]
    off = [s["s"] for s in steps if s["kind"] == "off"]
    hooks = [s["hook_s"] / s["s"] for s in steps if s["kind"] == "on" and s["s"] > 0]
    prune = [s["s"] for s in steps if s["kind"] == "prune"]
    on_med = statistics.median(on) if on else float("nan")
    off_med = statistics.median(off) if off else float("nan")
    return {
        "on": on_med,
        "off": off_med,
        "ratio": on_med / off_med if off else float("nan"),
        "hook_share": statistics.median(hooks) if hooks else float("nan"),
        "prune": statistics.mean(prune) if prune else float("nan"),
        "pairs": min(len(on), len(off)),
    }


def load_note(loads: tuple[float, float]) -> str:
    """What the 1-minute load averages at the start and the end of a run say about its wall times."""
    where = f"1-minute load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end, on {os.cpu_count()} cores"
    if max(loads) >= 0.5:
        return (
            f"**Measured under load** ({where}): other processes' work is in these wall times; rerun "
            "`--only timing` on an idle machine for figures of record."
        )
    return f"Measured on an idle machine ({where})."


def timing_section(
    args: argparse.Namespace, single: dict[str, Any], ranks: list[dict[str, Any]], loads: tuple[float, float]
) -> str:
    one = _step_stats(single["steps"])
    two = _step_stats(ranks[0]["steps"])
    lines = [
        load_note(loads),
        "",
        "| mode | threads per process | step, hooks on (ms) | step, hooks off (ms) | on / off | hooks' share "
        "of an on step | step with a pruning step (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, stats, threads in (
        ("1 process", one, single["threads"]),
        ("FSDP2, 2 ranks (rank 0)", two, ranks[0]["threads"]),
    ):
        lines.append(
            f"| {name} | {threads} | {stats['on'] * 1e3:.1f} | {stats['off'] * 1e3:.1f} | {stats['ratio']:.3f} | "
            f"{stats['hook_share']:.2%} | {stats['prune'] * 1e3:.0f} |"
        )
    lines += [
        "",
        f"Time per step, 2 ranks / 1 process (hooks on): **{two['on'] / one['on']:.2f}** (2 processes of 1 thread "
        f"against 1 process of {single['threads']} threads on the same {os.cpu_count()} cores: no speed-up is "
        "expected; the ranks add the all-gathers and reduce-scatters of FSDP2).",
        f"ProgressivePruning's per-step overhead within one fit (median step with its hooks / without, pruning "
        f"steps excepted, {one['pairs']} and {two['pairs']} pairs): **{one['ratio']:.3f}** in one process, "
        f"**{two['ratio']:.3f}** under FSDP2 (target <= 1.05).",
    ]
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine() -> str:
    import torch

    mem = ""
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * KIB
        mem = f", {total / 1024**3:.1f} GiB RAM"
    except OSError:
        pass
    return f"`nproc` {os.cpu_count()}{mem}, {platform.machine()}, torch {torch.__version__}"


def _replace_section(text: str, part: str, body: str) -> str:
    start, end = f"<!-- fsdp2_memory: {part} -->", f"<!-- end fsdp2_memory: {part} -->"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


HEADER = "# FSDP2: per-rank memory and time of a pruning ramp (issue 26)\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=50e6, help="parameters of the MLP (about)")
    parser.add_argument(
        "--steps", type=int, default=8, help="optimizer steps of the memory runs (>= 7: the ramp)"
    )
    parser.add_argument(
        "--timing-steps", type=int, default=24, help="steps after the ramp in the timing runs"
    )
    parser.add_argument("--batch", type=int, default=64, help="global batch (each of 2 ranks gets half)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer")
    parser.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default="unstructured",
        help="of the masks: unstructured (sharded, computed shard-wise), structured (whole unit masks from each "
        "whole weight) or channel_groups (traced and scored on a gathered copy at each pruning step)",
    )
    parser.add_argument("--only", choices=PARTS, default=None, help="run one part only (default: both)")
    parser.add_argument(
        "--cores", type=int, default=2, help="threads of the single process (each rank: half)"
    )
    parser.add_argument(
        "--malloc",
        choices=("fixed", "dynamic"),
        default="fixed",
        help="memory part: glibc's mmap threshold fixed at its default 128 KiB (freed tensors go back to the OS), "
        "or glibc's dynamic threshold (the timing part always runs with the allocator's defaults)",
    )
    parser.add_argument("--sample-ms", type=float, default=5.0, help="RssAnon sampling period")
    parser.add_argument("--out", type=Path, default=None, help="the results file (Markdown) to update")
    # the workers' own options (started by this script)
    parser.add_argument("--worker", choices=("single", "fsdp2"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=PARTS, default="memory", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return {}
    if args.steps < RAMP["end"] + 1:
        parser.error(
            f"`--steps` must be >= {RAMP['end'] + 1} (the ramp's last pruning step is step {RAMP['end']})"
        )
    if args.batch % 2:
        parser.error("`--batch` must be even (each of 2 ranks gets half)")
    parts = [args.only] if args.only else list(PARTS)
    start, start_load = _uptime(), os.getloadavg()[0]
    width = hidden_width(args.params)
    print(f"uptime at start: {start}", flush=True)
    print(f"MLP width {width}: {count_parameters(width):,} parameters; parts {parts}", flush=True)
    results: dict[str, Any] = {}
    sections: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fsdp2_memory_") as tmp_dir:
        tmp = Path(tmp_dir)
        for part in parts:
            single = run_mode(args, "single", part, tmp)[0]
            ranks = run_mode(args, "fsdp2", part, tmp)
            results[part] = {"single": single, "ranks": ranks}
            if part == "memory":
                results["memory_figures"] = memory_rows(single, ranks)
                sections[part] = memory_section(args, single, ranks)
            else:
                sections[part] = timing_section(args, single, ranks, (start_load, os.getloadavg()[0]))
            print(sections[part] + "\n", flush=True)
    end = _uptime()
    print(f"uptime at end: {end}", flush=True)
    command = "python -m benchmarks.fsdp2_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    for part, body in sections.items():
        title = {"memory": "Memory per process", "timing": "Time per step and the callback's overhead"}[part]
        sections[part] = (
            f"## {title}, scope `{args.scope}`{_granularity_title(args)}\n\nCommand: `{command}`\n"
            f"Machine: {_machine()}.\n"
            f"Load: `uptime` at the start: `{start}`; at the end: `{end}`.\n\n{body}"
        )
    if args.out is not None:
        text = args.out.read_text() if args.out.exists() else HEADER
        for part, body in sections.items():
            text = _replace_section(text, f"{part}, scope {args.scope}{_granularity_key(args)}", body)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written: {args.out}")
    return results


if __name__ == "__main__":
    main()
