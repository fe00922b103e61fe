"""DDP: a SIGTERM to one rank stops both at the same step with a checkpoint and status 143; the resume gives
each rank its own random states back and ends bit-identical to the uninterrupted run on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.launch import run_ranks

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = "tests.reliability.ddp_interrupt_worker"


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_and_each_rank_resumes_exactly(tmp_path):
    full, run = tmp_path / "full", tmp_path / "run"
    for folder, mode in ((full, "full"), (run, "stop"), (run, "resume")):
        folder.mkdir(exist_ok=True)
        try:
            run_ranks(WORKER, [folder, mode], folder / "logs", name=mode)
        except AssertionError:
            if mode != "stop":  # the stopped run's status is checked in its results below
                raise
    for rank in (0, 1):
        stopped = torch.load(run / f"stop_rank{rank}.pt", weights_only=True)
        assert stopped == {"code": 143, "step": 5}, stopped  # rank 0 was never signalled: it stopped too
    for rank in (0, 1):
        a = torch.load(full / f"full_rank{rank}.pt", weights_only=True)
        b = torch.load(run / f"resume_rank{rank}.pt", weights_only=True)
        assert a["step"] == b["step"] == 8
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]), f"rank {rank}"
