"""The ranks of the tests' multi-process runs, forked from a warm fork server.

A fresh Python process spends ~5 s of CPU here before it runs a line of a test (torch, Lightning and, through
Lightning, torchmetrics, torchvision and transformers are imported), and the suite starts dozens of 2-rank runs:
on CI's 2 cores that start-up alone was a sixth of the suite. ``multiprocessing``'s ``"forkserver"`` start method
removes it: one server per pytest process, started the first time a run needs it, imports :data:`PRELOAD` once;
every rank is forked from that server. Forking it is safe where forking the pytest process is not: the server is
single-threaded and has run no test (the pytest-xdist worker has execnet's thread and every earlier test's
state), and each rank is a copy of a clean interpreter with the imports done.

:func:`run_ranks` starts a worker module's ranks from the server (``python -m MODULE ARGS`` in each, with the
environment torchrun would give it); ``strategy="ddp_spawn"`` in the tests starts Lightning's workers from the
same server (:mod:`tests.ddp_support`).
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
#: imported once by the fork server; every rank starts with them imported (never a worker module itself:
#: ``runpy`` runs that fresh as ``__main__``); the last one does PT2E's per-process start-up work there
PRELOAD = (
    "torch",
    "lightning.pytorch",
    "lightning_optim.callbacks",
    "tests.callbacks.matrix_support",
    "tests.forkserver_warm",
)
#: the most a run may take before its ranks are killed (their collectives time out sooner)
RUN_TIMEOUT_S = 300.0


def configure() -> None:
    """Name :data:`PRELOAD` for the fork server (before it starts: it starts at the first run)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(PRELOAD))


def context() -> Any:
    """The ``"forkserver"`` multiprocessing context the ranks are started from."""
    configure()
    return multiprocessing.get_context("forkserver")


def after_fork() -> None:
    """First thing in a rank forked from the server, on its main thread: rebuild torch's intra-op thread pool.

    The server's warm-up made that pool (``torch.set_num_threads``); in a forked process torch replaces it at the
    next use, and if the first uses are the autograd engine's worker threads starting together (the first
    backward), one of them can find no pool and abort ("Invalid thread pool!", seen in 2 of ~20 DDP runs)."""
    import torch

    torch.set_num_threads(torch.get_num_threads())


def _rank_main(module: str, args: list[str], env: dict[str, str], log: str) -> None:
    """One rank: output to ``log``, the given environment, ``python -m module args``; exits with its status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))  # also what after_fork() does
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the log, the status says it failed
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tail(log: Path, chars: int = 4000) -> str:
    if not log.exists():
        return "(no log: the rank never started)"
    return log.read_text(errors="replace")[-chars:]


def rank_env(rank: int, nprocs: int, port: int, **extra: str) -> dict[str, str]:
    """The environment of rank ``rank`` of ``nprocs`` on one node (as torchrun sets it), plus ``extra``."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "NODE_RANK": "0",
        "WORLD_SIZE": str(nprocs),
        "LOCAL_WORLD_SIZE": str(nprocs),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        **extra,
    }


def run_ranks(
    module: str,
    args: Sequence[str],
    logs: Path,
    *,
    name: str = "run",
    nprocs: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> None:
    """Run ``python -m module *args`` as ``nprocs`` ranks of one node, forked from the fork server.

    Each rank writes its output to ``logs/<name>_rank<r>.log``. Fails with the ranks' statuses and the ends of
    their logs if any rank fails or the run takes longer than ``timeout`` seconds (every rank is killed then).
    """
    logs.mkdir(parents=True, exist_ok=True)
    ctx = context()
    port = free_port()
    procs = []
    for rank in range(nprocs):
        log = logs / f"{name}_rank{rank}.log"
        proc = ctx.Process(
            target=_rank_main,
            args=(module, [str(a) for a in args], rank_env(rank, nprocs, port, **(env or {})), str(log)),
            name=f"{name}-rank{rank}",
        )
        proc.start()
        procs.append(proc)
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    codes = [proc.exitcode for proc in procs]
    if codes != [0] * nprocs:
        tails = "\n".join(f"--- rank {r} ---\n" + _tail(logs / f"{name}_rank{r}.log") for r in range(nprocs))
        timed_out = f" (killed after {timeout:.0f} s)" if time.monotonic() >= deadline else ""
        raise AssertionError(f"{module} {' '.join(map(str, args))}: exit codes {codes}{timed_out}\n{tails}")


#: the most one scenario of a worker may take (a run's limit: this times its number of scenarios)
SCENARIO_TIMEOUT_S = 150.0


def scenarios_launch(
    module: str,
    scenarios: Sequence[str],
    name: str,
    per_scenario_s: float = SCENARIO_TIMEOUT_S,
    nprocs: int = 2,
) -> Callable[[Path], None]:
    """``launch(out)``: :func:`run_ranks` of a worker that runs ``scenarios`` in turn (``module OUT SCENARIO...``) on
    ``nprocs`` ranks, logs ``out/<name>_rank<r>.log``; for :func:`tests.conftest.run_once_per_session`."""

    def launch(out: Path) -> None:
        run_ranks(
            module, [out, *scenarios], out, name=name, nprocs=nprocs, timeout=per_scenario_s * len(scenarios)
        )

    return launch
