"""DDP: a SIGTERM to one rank stops both at the same step with a checkpoint and status 143; the resume gives
each rank its own random states back and ends bit-identical to the uninterrupted run on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = REPO_ROOT / "tests" / "reliability" / "ddp_interrupt_worker.py"


def _torchrun(out: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(out),
        mode,
    ]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_and_each_rank_resumes_exactly(tmp_path):
    full, run = tmp_path / "full", tmp_path / "run"
    for folder, mode in ((full, "full"), (run, "stop"), (run, "resume")):
        folder.mkdir(exist_ok=True)
        proc = _torchrun(folder, mode)
        if mode != "stop":
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for rank in (0, 1):
        stopped = torch.load(run / f"stop_rank{rank}.pt", weights_only=True)
        assert stopped == {"code": 143, "step": 5}, stopped  # rank 0 was never signalled: it stopped too
    for rank in (0, 1):
        a = torch.load(full / f"full_rank{rank}.pt", weights_only=True)
        b = torch.load(run / f"resume_rank{rank}.pt", weights_only=True)
        assert a["step"] == b["step"] == 8
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]), f"rank {rank}"
