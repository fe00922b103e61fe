"""SIGKILL a pruning + QAT + distillation run mid-epoch, restart with ``ckpt_path="last"``: nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = REPO_ROOT / "tests" / "reliability" / "kill_resume_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}


def _run(out: Path, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), *args],
        env=ENV,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "result.json").read_text())


def _run_and_kill(out: Path, kill_at_step: int) -> int:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(out)],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    killed_at = -1
    try:
        for line in proc.stdout:
            if line.startswith("STEP ") and int(line.split()[1]) >= kill_at_step:
                killed_at = int(line.split()[1])
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert killed_at >= 0, "the run ended before the kill point"
    assert proc.returncode == -signal.SIGKILL
    return killed_at


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return _run(tmp_path_factory.mktemp("full"))


@pytest.mark.slow
@pytest.mark.parametrize("kill_at_step", [13, 27], ids=["during-pruning-ramp", "during-qat"])
def test_sigkill_then_resume_from_last(tmp_path, uninterrupted, kill_at_step):
    killed_at = _run_and_kill(tmp_path, kill_at_step)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_file(), "no checkpoint survived the kill"
    leftovers = [p.name for p in (tmp_path / "ckpt").iterdir() if p.suffix != ".ckpt"]
    assert not leftovers, f"half-written files left behind: {leftovers}"
    state = torch.load(last, weights_only=True)  # loads: not half-written
    assert 0 < state["global_step"] <= killed_at
    resumed = _run(tmp_path, "--resume")
    assert resumed["global_step"] == uninterrupted["global_step"]
    assert resumed["sparsity"] == pytest.approx(uninterrupted["sparsity"])
    assert resumed["int8_modules"] and resumed["int8_modules"] == uninterrupted["int8_modules"]
    assert resumed["int8_nonzero"] <= resumed["float_parameters"] * (1 - 0.5 * 0.9)
    assert abs(resumed["int8_test_acc"] - uninterrupted["int8_test_acc"]) <= 0.05, (resumed, uninterrupted)
