"""The tests' ``ddp_spawn``: Lightning's, with workers that leave in lockstep and skip interpreter teardown.

Why: in full-suite runs (2 of 5 in the fourteenth session, 1 of 6 in the issue's count) one spawned gloo worker
aborted *after* its fit had finished, at interpreter exit ("terminate called without an active exception",
SIGABRT), so ``torch.multiprocessing`` reported a failed process and the test failed with every assertion met.
The abort comes from C++ objects torn down during interpreter finalization while one of their threads is still
joinable: c10d/gloo worker threads (which may also hold work items with tensors whose destruction needs the GIL
of an interpreter that is being torn down; pytorch/pytorch#179291 describes the same abort and why an atexit
``destroy_process_group`` does not always avoid it) or the TCPStore's libuv thread (the earlier mitigation,
``USE_LIBUV=0``). Which one it is depends on the timing of two processes exiting at once on a loaded machine:
70 targeted reruns (fourteenth session) and 63 looped 2-process fits (fifteenth session, load 4-6, torch's
default libuv store) never reproduced it.

The fix removes the window rather than one of its causes: after the worker's function has returned and rank 0
has put its results on the (synchronous) return queue, every worker waits at a barrier for the others, destroys
the process group while the interpreter is fully alive, flushes its streams and ends with ``os._exit(0)``:
no interpreter finalization, hence no destructor of a joinable thread, in any worker. A worker whose function
raised is left to torch's normal error path (the exception reaches the test).

Registered over Lightning's ``"ddp_spawn"`` in ``tests/conftest.py``: the main process builds the strategy from
the registry; the spawned workers unpickle it and import this module by name.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

#: how long a worker waits at the exit barrier for the other (a hung peer fails the test, never hangs it)
EXIT_BARRIER_TIMEOUT = timedelta(seconds=120)


def leave_in_lockstep() -> None:
    """Barrier, destroy the process group, flush, ``os._exit(0)`` (see the module docstring)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.monitored_barrier(
                timeout=EXIT_BARRIER_TIMEOUT
            ) if dist.get_backend() == "gloo" else dist.barrier()
        finally:
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class LockstepExitLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher whose workers end with :func:`leave_in_lockstep` once their work is done."""

    def _wrapping_function(self, process_idx: int, *args: Any, **kwargs: Any) -> None:
        super()._wrapping_function(process_idx, *args, **kwargs)
        leave_in_lockstep()


class LockstepSpawnDDP(DDPStrategy):
    """``DDPStrategy(start_method="spawn")`` with :class:`LockstepExitLauncher`."""

    def _configure_launcher(self) -> None:
        self._launcher = LockstepExitLauncher(self, start_method=self._start_method)


def register() -> None:
    """Make ``strategy="ddp_spawn"`` (and ``"ddp_spawn_find_unused_parameters_*"`` stay Lightning's) build
    :class:`LockstepSpawnDDP`."""
    StrategyRegistry.register(
        "ddp_spawn",
        LockstepSpawnDDP,
        description="ddp_spawn whose workers leave in lockstep (tests/ddp_support.py)",
        start_method="spawn",
        override=True,
    )
