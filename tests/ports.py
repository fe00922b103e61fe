"""Ports for the tests' process groups, never shared between two tests running at once.

``make test`` runs the suite on two pytest-xdist workers. A port drawn with ``bind(("127.0.0.1", 0))`` comes
from the kernel's ephemeral range, so a port one worker has just released can be handed to the other worker's
test a moment later, while the first test's processes are still about to bind it. Here each worker draws from
its own block below the ephemeral range (Linux: 32768-60999), each port once per session, and checks that it is
free; a single process (no xdist) uses block 0 from an offset drawn from its process id, so that two sessions
run side by side by hand start far apart.
"""

from __future__ import annotations

import itertools
import os
import socket

#: the first port of worker 0's block; worker ``gwN`` starts at ``BASE + N * BLOCK``
BASE = 20000
#: ports per worker (blocks of 8 workers stay below the ephemeral range)
BLOCK = 1500


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


_counter = itertools.count(0 if "PYTEST_XDIST_WORKER" in os.environ else (os.getpid() * 97) % BLOCK)


def free_port() -> int:
    """A port of this worker's block not drawn before in this session and free to bind on 127.0.0.1."""
    start = BASE + _worker_index() * BLOCK
    for _ in range(BLOCK):
        port = start + next(_counter) % BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"No free port in {start}-{start + BLOCK - 1} for the tests' process groups.")


def pin_master_port() -> None:
    """Give this test process its own ``MASTER_PORT`` (Lightning's ``ddp_spawn`` reads it, and otherwise draws
    one from the ephemeral range), from this worker's block."""
    os.environ["MASTER_PORT"] = str(free_port())
