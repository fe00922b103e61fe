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
the registry; the workers unpickle it and import this module by name. The workers are forked from the tests'
warm fork server (:mod:`tests.launch`) rather than spawned as fresh interpreters (~5 s of imports each), and
start as spawned ones would (:class:`LockstepExitLauncher`).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.multiprocessing import (
    _disable_module_memory_sharing,
    _GlobalStateSnapshot,
    _MultiProcessingLauncher,
)

from tests import launch

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
    """Lightning's spawn launcher whose workers end with :func:`leave_in_lockstep` once their work is done.

    With ``start_method="forkserver"`` the workers are forked from the tests' warm fork server
    (:mod:`tests.launch`: no ~5 s of imports per worker) and start as spawned ones do: with the pytest process's
    environment and global state (random generators, deterministic flags: Lightning restores these for "spawn"
    only) and their own copies of the module's tensors (not shared memory with each other and the test). While
    CUDA is initialized in the test's process the workers are spawned (Lightning refuses to fork then)."""

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self._parent_state = None
        if self._start_method in ("forkserver", "spawn"):
            self._start_method = "spawn" if torch.cuda.is_initialized() else "forkserver"
        if self._start_method == "forkserver":
            launch.configure()
            self._parent_state = (_GlobalStateSnapshot.capture(), dict(os.environ))
        return super().launch(function, *args, trainer=trainer, **kwargs)

    def _wrapping_function(
        self, process_idx: int, trainer: Any, function: Any, args: Any, kwargs: Any, *rest: Any
    ) -> None:
        if self._start_method == "forkserver" and getattr(self, "_parent_state", None) is not None:
            launch.after_fork()
            snapshot, env = self._parent_state
            os.environ.clear()
            os.environ.update(env)
            snapshot.restore()
            if isinstance(self._strategy.accelerator, CPUAccelerator):
                args, kwargs = _disable_module_memory_sharing((args, kwargs))
        super()._wrapping_function(process_idx, trainer, function, args, kwargs, *rest)
        leave_in_lockstep()


class LockstepSpawnDDP(DDPStrategy):
    """``DDPStrategy`` with :class:`LockstepExitLauncher`, its workers forked from the warm fork server."""

    def _configure_launcher(self) -> None:
        self._launcher = LockstepExitLauncher(self, start_method=self._start_method)


def register() -> None:
    """Make ``strategy="ddp_spawn"`` (and ``"ddp_spawn_find_unused_parameters_*"`` stay Lightning's) build
    :class:`LockstepSpawnDDP`."""
    StrategyRegistry.register(
        "ddp_spawn",
        LockstepSpawnDDP,
        description="ddp_spawn whose workers leave in lockstep (tests/ddp_support.py)",
        start_method="forkserver",
        override=True,
    )
