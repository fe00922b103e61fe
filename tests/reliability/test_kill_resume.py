"""Interrupt a prune -> QAT -> distill run with dropout (SIGKILL at 5 points, SIGTERM at 2), resume it with
``ckpt_path="last"``: every resumed run ends bit-identical to the uninterrupted one.

Bit-identical means: the float weights (masks and quantization buffers included), the pruning masks, the int8
model's state (int8 values, scales, zero points), every metric the loggers received after the resume point
(with its step) and the training loss of every step the resumed run trained. The runs are forked from one
worker process that has imported everything once (``kill_resume_worker.py --serve``), and each pauses at its
point (``--pause``) so that the signal lands exactly there. The schedule (6 batches an epoch, 4 epochs): pruning
events at steps 0, 2, 4, 6, 8; QAT from epoch 2 (step 12), observers frozen from epoch 3 (step 18); a
checkpoint at every step (``ModelCheckpoint(every_n_train_steps=1, save_last=True)``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_optim.plugins import AtomicCheckpointIO

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = REPO_ROOT / "tests" / "reliability" / "kill_resume_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
TIMEOUT = 300

#: metrics that measure wall time (the teacher's milliseconds per step): they differ between any two runs
TIMINGS = ("distill/teacher_ms_per_step",)
#: KnowledgeDistillation's epoch aggregates: it keeps them outside its state_dict (``_epoch_stats``), so a run
#: resumed at an epoch's end (no step of that epoch left) does not log them; checked apart (xfail, below)
KD_EPOCH_AGGREGATES = ("distill/alpha", "distill/temperature")
#: the resumed runs by case id, for the checks that look at one case more closely
RESUMED: dict[str, dict] = {}

#: (id, signal, where the run pauses for it, the step of the checkpoint the resume starts from)
CASES = [
    ("sigkill-mid-pruning-ramp", signal.SIGKILL, "batch_end:3", 2),
    ("sigkill-at-a-pruning-event", signal.SIGKILL, "batch_start:8", 8),
    ("sigkill-before-epoch-end-validation-qat-next", signal.SIGKILL, "validation:12", 12),
    ("sigkill-while-writing-a-checkpoint-mid-qat", signal.SIGKILL, "save:15", 14),
    ("sigkill-after-observer-freeze", signal.SIGKILL, "batch_end:21", 20),
    ("sigterm-mid-epoch-during-ramp", signal.SIGTERM, "batch_end:5", 5),
    ("sigterm-during-validation-before-freeze", signal.SIGTERM, "validation:18", 18),
]


class Server:
    """The worker in ``--serve`` mode: one run at a time, each a fork of the imported worker."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--serve"],
            env=ENV,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pids: list[int] = []
        assert self._line() == "READY"

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        assert line, "the worker server ended"
        return line.strip()

    def start(self, out: Path, resume: bool = False, pause: str | None = None) -> int:
        request = {"out": str(out), "resume": resume, "pause": pause}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        kind, pid = self._line().split()
        assert kind == "PID"
        self.pids.append(int(pid))
        return int(pid)

    def wait(self, pid: int) -> int:
        kind, done, code = self._line().split()
        assert kind == "EXIT" and int(done) == pid
        self.pids.remove(pid)  # reaped: its number may now belong to another process
        return int(code)

    def close(self) -> None:
        for pid in self.pids:  # a run a failed test left paused (not reaped yet: still the server's child)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _log(out: Path) -> str:
    path = out / "log.txt"
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(out: Path, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in _log(out):
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{_log(out)[-4000:]}"
        time.sleep(0.02)


def _complete(server: Server, out: Path, resume: bool = False) -> dict:
    pid = server.start(out, resume=resume)
    code = server.wait(pid)
    assert code == 0, _log(out)[-6000:]
    return torch.load(out / "result.pt", weights_only=True)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def uninterrupted(server, tmp_path_factory) -> dict:
    return _complete(server, tmp_path_factory.mktemp("uninterrupted"))


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def _untimed_rows(rows: list, skip: tuple[str, ...] = KD_EPOCH_AGGREGATES) -> list:
    return [row for row in rows if row[1] not in TIMINGS + skip]


def _assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:8]}"
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{what}[{key}] differs"


@pytest.mark.slow
def test_the_uninterrupted_run_prunes_quantizes_and_distills(uninterrupted):
    assert int(uninterrupted["global_step"]) == 24
    masks = uninterrupted["masks"]
    assert masks and 0.45 <= 1 - sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert any(k.endswith(".int_repr") for k in uninterrupted["int8"])
    assert bool(uninterrupted["qat_frozen"])
    names = {name for _, name, _ in uninterrupted["logged"]}
    assert {"train_loss_kd", "pruning/sparsity", "quantization/start_epoch", "val_loss"} <= names, sorted(
        names
    )


@pytest.mark.slow
@pytest.mark.parametrize(("case", "sig", "pause", "resume_step"), CASES, ids=[c[0] for c in CASES])
def test_interrupted_then_resumed_ends_bit_identical(
    server, uninterrupted, tmp_path, case, sig, pause, resume_step
):
    pid = server.start(tmp_path, pause=pause)
    _wait_for(tmp_path, "PAUSED")
    os.kill(pid, sig)
    code = server.wait(pid)
    ckpt_dir = tmp_path / "ckpt"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # InterruptCheckpoint: the step finished, a checkpoint saved, exit status 128 + signal
        assert code == 128 + sig, _log(tmp_path)[-4000:]
        assert f"STOPPED {resume_step} {ckpt_dir / 'last.ckpt'}" in _log(tmp_path)
    temps = sorted(p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp"))
    if pause.startswith("save:"):
        assert temps, "the kill during the write left no temporary file (was it written in place?)"
    else:
        assert not temps, temps
    state = AtomicCheckpointIO().load_checkpoint(ckpt_dir / "last.ckpt")  # loads: never half-written
    assert state["global_step"] == resume_step

    resumed = _complete(server, tmp_path, resume=True)
    RESUMED[case] = resumed
    assert not [p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")], "stale temporary file left"
    assert int(resumed["global_step"]) == int(uninterrupted["global_step"])
    _assert_identical(uninterrupted["weights"], resumed["weights"], "weights")
    _assert_identical(uninterrupted["masks"], resumed["masks"], "masks")
    _assert_identical(uninterrupted["int8"], resumed["int8"], "int8 model")
    _assert_identical(
        _untimed(uninterrupted["callback_metrics"]), _untimed(resumed["callback_metrics"]), "callback_metrics"
    )
    steps = sorted(resumed["losses"])
    assert steps == list(range(resume_step + 1, 25)), steps
    assert all(resumed["losses"][s] == uninterrupted["losses"][s] for s in steps), [
        (s, resumed["losses"][s], uninterrupted["losses"][s]) for s in steps
    ]
    logged, full = _untimed_rows(resumed["logged"]), _untimed_rows(uninterrupted["logged"])
    assert logged and logged == full[-len(logged) :], (logged[:6], full[-len(logged) :][:6])
    assert logged[0][0] <= resume_step + 1  # the metrics of the first step after the checkpoint on


@pytest.mark.slow
def test_distillation_epoch_aggregates_are_logged_after_a_resume_at_an_epochs_end(uninterrupted):
    resumed = RESUMED.get("sigkill-before-epoch-end-validation-qat-next")
    if resumed is None:
        pytest.skip("the case did not run")
    logged = _untimed_rows(resumed["logged"], skip=())
    full = _untimed_rows(uninterrupted["logged"], skip=())
    assert logged == full[-len(logged) :]
