"""Two "nodes" on localhost: two torchrun launchers (``--nnodes=2``, one process each, rendezvous on
127.0.0.1) run every exported callback with ``num_nodes=2``; both nodes must end identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.callbacks import matrix_support as ms
from tests.callbacks.callback_settings import CALLBACK_SETTINGS
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the callbacks the two-node runs fit
NODE_CALLBACKS = (
    "ProgressivePruning",
    "QuantizationAwareTraining",
    "PostTrainingQuantization",
    "KnowledgeDistillation",
    "EarlyStopping",
    "WeightSharing",
)


@pytest.mark.slow
def test_two_nodes_on_localhost(tmp_path):
    # the callbacks with rank handling of their own (broadcasts of masks, ranges, best weights, teachers,
    # codebooks); every entry runs on 2 processes of one node in the DDP matrix (test_callback_matrix.py)
    names = [
        n
        for n in ms.exported_callbacks()
        if n in CALLBACK_SETTINGS and not ms.entry(n).get("skip", {}).get("ddp") and n in NODE_CALLBACKS
    ]
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
            str(REPO_ROOT / "tests" / "callbacks" / "ddp_matrix_worker.py"),
            str(tmp_path),
            *names,
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-6000:]
    for name in names:
        r0 = torch.load(tmp_path / f"{name}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{name}_rank1.pt", weights_only=True)
        assert r0["world_size"] == r1["world_size"] == 2 and r0["num_nodes"] == 2
        ms.assert_states_equal(r0["model"], r1["model"], atol=0.0, what=f"{name} model node0 vs node1")
        ms.assert_states_equal(
            r0["callback"], r1["callback"], atol=0.0, what=f"{name} callback node0 vs node1"
        )


@pytest.mark.slow
def test_two_nodes_on_localhost_under_fsdp2(tmp_path):
    """The same two "nodes" under FSDP2 (ModelParallelStrategy, ClassificationModule(sharding="fsdp2")), for
    callbacks with collectives of their own under sharding (shard-wise masks, QAT's broadcast and gathered
    conversion, a teacher's broadcast) and one that refuses (every entry runs on 2 processes of one node in
    test_callback_matrix.py): fitted with the network sharded over the nodes and identical on both, or refused at
    setup."""
    from tests.callbacks.test_callback_matrix import check_fsdp2_results, run_fsdp2_matrix

    names = [n for n in NODE_CALLBACKS if n != "EarlyStopping" and n != "PostTrainingQuantization"]
    port = free_port()
    launchers = [
        [
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
        ]
        for node_rank in (0, 1)
    ]
    run_fsdp2_matrix(tmp_path, launchers, "--no-resume", *names)
    outcome = check_fsdp2_results(tmp_path, names, resume=False)
    for name in names:
        assert torch.load(tmp_path / f"{name}_rank0.pt", weights_only=True)["num_nodes"] == 2, name
    assert "fitted" in outcome.values() and outcome["WeightSharing"] == "refused"
