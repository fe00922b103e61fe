"""Imported once by the tests' fork server (:mod:`tests.launch`): the per-process start-up work of PT2E done there,
so that no rank forked from it pays it again.

The first PT2E quantization-aware capture of a process exports torchao's conv-bn pattern graphs (~40 strict
``torch.export`` captures, cached per process by ``lightning_optim.functional.quantization.pt2e``) and
initializes ``torch.export``: ~7 s of CPU in every rank that runs QAT. This module prepares and converts one
small conv-bn network, filling that cache in the server; the ranks inherit it. It leaves no thread running
(checked: forking a process with threads is what the fork server avoids).
"""

from __future__ import annotations

import os
import threading
import time

import torch
from torch import nn

from lightning_optim.functional.quantization.pt2e import Pt2eBackend


def warm() -> None:
    """One PT2E QAT prepare, a forward and a conversion of a conv-bn-linear network."""
    torch.set_num_threads(1)  # no OpenMP pool in the server (the ranks set their own thread count)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    x = torch.randn(4, 1, 8, 8)
    backend = Pt2eBackend(example_input=x)
    prepared = backend.prepare_qat_module(net)
    with torch.no_grad():  # no backward: the autograd engine's threads would make the ranks refuse autograd
        prepared(x)
    prepared.eval()
    backend.convert(prepared)


def _native_threads() -> int:
    return (
        len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
    )


def _warm_without_threads() -> None:
    """:func:`warm` with tqdm's monitor thread off (its first progress bar would start one), then a check that
    the process has one thread (a thread that just ended may linger a moment in ``/proc``: waited for, 5 s)."""
    from tqdm import tqdm

    interval, tqdm.monitor_interval = tqdm.monitor_interval, 0
    try:
        warm()
    finally:
        tqdm.monitor_interval = interval
    deadline = time.monotonic() + 5.0
    while (threading.active_count() != 1 or _native_threads() != 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    if (
        threading.active_count() != 1 or _native_threads() != 1
    ):  # pragma: no cover - copied half-alive otherwise
        raise RuntimeError(
            f"the fork server's warm-up left threads running: {threading.enumerate()}, {_native_threads()} in all"
        )


_warm_without_threads()
