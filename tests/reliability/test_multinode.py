"""Two "nodes" on localhost: two torchrun launchers (``--nnodes=2``, one process each, rendezvous on
127.0.0.1) fit every settings-table entry with ``num_nodes=2`` under DDP and under FSDP2 (or see it refused at
setup, as its class declares); both nodes must end identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.callbacks import matrix_support as ms
from tests.callbacks.callback_settings import CALLBACK_SETTINGS
from tests.conftest import run_once_per_session
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: every settings-table entry fitted under DDP on two nodes (as in the one-node DDP matrix)
DDP_NAMES = [
    n
    for n in sorted(CALLBACK_SETTINGS)
    if ms.callback_class(n) in ms.exported_callbacks() and not ms.entry(n).get("skip", {}).get("ddp")
]
#: every entry under FSDP2 on two nodes: fitted, or refused at setup (as in the one-node FSDP2 matrix)
FSDP2_NAMES = [
    n
    for n in sorted(CALLBACK_SETTINGS)
    if ms.callback_class(n) in ms.exported_callbacks() and not ms.entry(n).get("skip", {}).get("fsdp2")
]


def _launch(out: Path) -> None:
    """Both "nodes" (two torchrun launchers, one process each, rendezvous on 127.0.0.1): the DDP entries, then the
    FSDP2 entries, in one process per node (``two_node_worker.py``). Fails with a launcher's output if it fails
    or runs past 600 s (both are killed then)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(REPO_ROOT / "tests" / "reliability" / "two_node_worker.py"),
            str(out),
            ",".join(DDP_NAMES),
            ",".join(FSDP2_NAMES),
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-8000:]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Path:
    """The two-node run, made once per test session (both tests check their part of it)."""
    got = run_once_per_session(__name__, tmp_path_factory, _launch)
    if isinstance(got, str):
        pytest.fail(got, pytrace=False)
    return got


@pytest.mark.slow
def test_two_nodes_on_localhost(two_nodes):
    out = two_nodes / "ddp"
    for name in DDP_NAMES:
        r0 = torch.load(out / f"{name}_rank0.pt", weights_only=True)
        r1 = torch.load(out / f"{name}_rank1.pt", weights_only=True)
        assert r0["world_size"] == r1["world_size"] == 2 and r0["num_nodes"] == 2
        ms.assert_states_equal(r0["model"], r1["model"], atol=0.0, what=f"{name} model node0 vs node1")
        ms.assert_states_equal(
            r0["callback"], r1["callback"], atol=0.0, what=f"{name} callback node0 vs node1"
        )


@pytest.mark.slow
def test_two_nodes_on_localhost_under_fsdp2(two_nodes):
    """The same two "nodes" under FSDP2 (ModelParallelStrategy, ClassificationModule(sharding="fsdp2")) for
    every entry (:data:`FSDP2_NAMES`): fitted with the network sharded over the nodes and identical on both, or
    refused at setup before any step, naming the strategy and the alternative."""
    from tests.callbacks.test_callback_matrix import check_fsdp2_results

    out = two_nodes / "fsdp2"
    outcome = check_fsdp2_results(out, FSDP2_NAMES, resume=False)
    for name in FSDP2_NAMES:
        assert torch.load(out / f"{name}_rank0.pt", weights_only=True)["num_nodes"] == 2, name
    assert "fitted" in outcome.values()
    assert outcome["WeightSharing"] == outcome["WeightSharing[after pruning]"] == "fitted"
    assert outcome["WeightSharing[budget]"] == "refused"
