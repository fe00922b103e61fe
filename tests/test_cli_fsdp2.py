"""The `lightning-optim` command under FSDP2 (``examples/fsdp2_recipe.yaml``): a run stopped after epoch 1 and
resumed with ``--ckpt_path last`` from its sharded checkpoint folder ends where a straight 2-epoch run ends.

Three commands, each ``python -m lightning_optim.cli fit --config examples/fsdp2_recipe.yaml ...`` in its own
process group (``ModelParallelStrategy`` starts the second rank itself, by running the command again), on a port
of :func:`tests.ports.free_port` (``MASTER_PORT``), killed with its second rank after :data:`RUN_TIMEOUT_S`:

- straight: 2 epochs in one folder; and, at the same time, in another folder, the first epoch only;
- resumed: ``--trainer.max_epochs 2 --ckpt_path last`` in that other folder, which must find the epoch-1
  ``last.ckpt`` FOLDER (meta.pt + torch.distributed.checkpoint shards) of the first run's logger version.

The last sharded checkpoint of each 2-epoch run is consolidated (``consolidate_checkpoint``, no process group)
and the weights must be EQUAL (``torch.equal``, no tolerance: the same ranks, data order, deterministic CPU
kernels and gloo reductions; any difference would be state the resume did not restore), as must the pruning
masks those weights carry and the int8 models' outputs (marked slow).

Without processes (fast): ``--ckpt_path`` with a sharded folder reaches ``Trainer.fit`` as it is under
``ModelParallelStrategy`` and is refused under a single-device strategy naming the consolidation command; a folder
that is not a sharded checkpoint keeps the parse-time error; ``find_last_checkpoint`` takes the newest of files and
sharded folders. (Folders written as ``meta.pt`` + ``.metadata`` by hand: the CLI reads neither.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_optim.checkpoints import consolidate_checkpoint, is_sharded_checkpoint
from lightning_optim.cli import build_cli, find_last_checkpoint
from tests.conftest import REPO_ROOT, once
from tests.ports import free_port

RECIPE = REPO_ROOT / "examples" / "fsdp2_recipe.yaml"
#: the most one command (both ranks) may take before its process group is killed
RUN_TIMEOUT_S = 240
#: environment variables that would make a rank of the command think it was launched already
LAUNCHED_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "RANK", "LOCAL_WORLD_SIZE")
#: optimizer steps per epoch in the recipe (``limit_train_batches``)
STEPS_PER_EPOCH = 4


class Command:
    """One ``lightning-optim fit`` of the recipe in its own process group, its output in ``<root>.log``."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.log_path = root.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHED_VARS}
        env.update(
            PYTHONPATH=str(REPO_ROOT),
            OMP_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
        command = [
            sys.executable,
            "-m",
            "lightning_optim.cli",
            "fit",
            "--config",
            str(RECIPE),
            "--trainer.default_root_dir",
            str(root),
            "--test_after_fit",
            "false",
            *args,
        ]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            command,
            cwd=root.parent,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # rank 1 joins this group: both are killed together
        )

    def wait(self) -> str:
        """Wait for the command (at most :data:`RUN_TIMEOUT_S`, then kill both ranks); its output, asserted to
        have ended with status 0."""
        try:
            code: int | str = self.proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = f"killed after {RUN_TIMEOUT_S} s"
        finally:
            if self.proc.poll() is None or code != 0:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group this command started (rank 1 too)
                except ProcessLookupError:
                    pass
                self.proc.wait()
            self._log.close()
        output = self.log_path.read_text()
        assert code == 0, f"{self.root.name}: exit status {code}\n{output[-6000:]}"
        return output


def checkpoints(root: Path, version: int) -> Path:
    return root / "lightning_logs" / f"version_{version}" / "checkpoints"


def epoch_folder(root: Path, version: int, epoch: int) -> Path:
    return checkpoints(root, version) / f"epoch={epoch}-step={(epoch + 1) * STEPS_PER_EPOCH}.ckpt"


def _run_commands(base: Path) -> dict[str, object]:
    straight, stopped = base / "straight", base / "stopped"
    first = [Command(straight), Command(stopped, "--trainer.max_epochs", "1")]  # side by side
    outputs = {"straight": first[0].wait(), "stopped": first[1].wait()}
    outputs["resumed"] = Command(stopped, "--trainer.max_epochs", "2", "--ckpt_path", "last").wait()
    return {"straight": straight, "stopped": stopped, **{f"{k}_output": v for k, v in outputs.items()}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    return once("cli_fsdp2", lambda: _run_commands(tmp_path_factory.mktemp("cli_fsdp2")))


def _the_recipe_writes_sharded_checkpoint_folders(runs):
    straight, stopped = runs["straight"], runs["stopped"]
    for folder in (
        epoch_folder(straight, 0, 0),
        epoch_folder(straight, 0, 1),
        checkpoints(straight, 0) / "last.ckpt",
        epoch_folder(stopped, 0, 0),
        checkpoints(stopped, 0) / "last.ckpt",
    ):
        assert is_sharded_checkpoint(folder), folder
        assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], folder
    assert not epoch_folder(stopped, 0, 1).exists()  # the first command stopped after epoch 1
    meta = torch.load(checkpoints(stopped, 0) / "last.ckpt" / "meta.pt", weights_only=True)
    assert (meta["epoch"], meta["global_step"]) == (0, STEPS_PER_EPOCH)


def _ckpt_path_last_resumes_from_the_sharded_folder_of_the_first_run(runs):
    stopped = runs["stopped"]
    found = checkpoints(stopped, 0) / "last.ckpt"
    assert f"--ckpt_path last: resuming from {found}" in runs["resumed_output"]
    assert "Restored all states from the checkpoint" in runs["resumed_output"]
    # the resumed run logs to a new version and trains epoch 2 only
    assert is_sharded_checkpoint(epoch_folder(stopped, 1, 1))
    assert not epoch_folder(stopped, 1, 0).exists()
    meta = torch.load(epoch_folder(stopped, 1, 1) / "meta.pt", weights_only=True)
    assert (meta["epoch"], meta["global_step"]) == (1, 2 * STEPS_PER_EPOCH)


def _the_resumed_run_ends_with_a_report_and_an_int8_model(runs):
    for root, version in ((runs["straight"], 0), (runs["stopped"], 1)):
        log_dir = root / "lightning_logs" / f"version_{version}"
        assert (log_dir / "quantization" / "model_int8_ptq.pt2").is_file()
        assert (log_dir / "compression_report.md").is_file()
        rows = json.loads((log_dir / "compression_report.json").read_text())["rows"]
        assert rows[-1]["stage"] == "fit end" and rows[-1]["precision"] == "int8", rows[-1]


def _consolidated_weights(folder: Path, out: Path) -> dict[str, torch.Tensor]:
    single = consolidate_checkpoint(folder, out)
    return torch.load(single, weights_only=True)["state_dict"]


def _resumed_weights_equal_the_straight_runs_exactly(runs, tmp_path):
    assert not epoch_folder(runs["stopped"], 1, 0).exists(), (
        "the second command trained epoch 1 again: no resume"
    )
    straight = _consolidated_weights(epoch_folder(runs["straight"], 0, 1), tmp_path / "straight.ckpt")
    resumed = _consolidated_weights(epoch_folder(runs["stopped"], 1, 1), tmp_path / "resumed.ckpt")
    assert straight.keys() == resumed.keys() and any(k.endswith("fc1.weight") for k in straight)
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, f"differ after the resume: {different}"
    # the weights are pruned (the ramp went on after the resume): the same zeros, at the sparsity of step 8
    weights = [v for k, v in straight.items() if k.endswith("weight")]
    zeros = sum(int(w.eq(0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros > 0.75


def _the_int8_models_of_both_runs_give_the_same_outputs(runs):
    programs = [
        torch.export.load(root / "lightning_logs" / f"version_{v}" / "quantization" / "model_int8_ptq.pt2")
        for root, v in ((runs["straight"], 0), (runs["stopped"], 1))
    ]
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a, b = (p.module()(x) for p in programs)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ without processes
def fake_sharded_folder(path: Path, mtime: float | None = None) -> Path:
    """A folder that :func:`is_sharded_checkpoint` takes for one (``meta.pt`` and an empty ``.metadata``): the CLI
    reads neither, so nothing here needs real shards. ``mtime``: the time of its files (the folder's own stays)."""
    path.mkdir(parents=True)
    torch.save({"epoch": 0, "global_step": STEPS_PER_EPOCH}, path / "meta.pt")
    (path / ".metadata").write_bytes(b"")
    if mtime is not None:
        for name in ("meta.pt", ".metadata"):
            os.utime(path / name, (mtime, mtime))
    return path


def cli_in_process(tmp_path: Path, *args: str, run: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cli(
            [
                *(["fit"] if run else []),
                "--config",
                str(RECIPE),
                "--trainer.default_root_dir",
                str(tmp_path),
                *(["--test_after_fit", "false"] if run else []),
                *args,
            ],
            run=run,
        )


@pytest.fixture
def fit_calls(monkeypatch) -> list[dict[str, Any]]:
    """``Trainer.fit`` replaced by a recorder of its ``ckpt_path`` (nothing trains, no process starts)."""
    calls: list[dict[str, Any]] = []

    def record(
        self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None, **kw
    ):
        calls.append({"strategy": type(self.strategy).__name__, "ckpt_path": ckpt_path})

    monkeypatch.setattr(Trainer, "fit", record)
    return calls


def test_a_sharded_folder_as_ckpt_path_reaches_fit_under_model_parallel(tmp_path, fit_calls):
    folder = fake_sharded_folder(tmp_path / "epoch=0-step=4.ckpt")
    cli_in_process(tmp_path, "--ckpt_path", str(folder))
    assert fit_calls == [{"strategy": "ModelParallelStrategy", "ckpt_path": str(folder)}]


def test_a_sharded_folder_under_a_single_device_strategy_is_refused_before_fit(tmp_path, fit_calls):
    folder = fake_sharded_folder(tmp_path / "epoch=0-step=4.ckpt")
    single = ["--trainer.strategy", "auto", "--trainer.devices", "1", "--model.init_args.sharding", "null"]
    with pytest.raises(ValueError, match=r"`ckpt_path` .* is a sharded checkpoint folder") as info:
        cli_in_process(tmp_path, *single, "--ckpt_path", str(folder))
    assert "SingleDeviceStrategy cannot read" in str(info.value)
    assert f"python -m lightning_optim.checkpoints consolidate {folder}" in str(info.value)
    assert fit_calls == []


@pytest.mark.parametrize("missing", ["meta.pt", ".metadata"])
def test_a_folder_that_is_not_a_sharded_checkpoint_is_still_refused_at_parse_time(
    tmp_path, fit_calls, missing
):
    folder = fake_sharded_folder(tmp_path / "half.ckpt")
    (folder / missing).unlink()
    with pytest.raises(
        ValueError, match=r"`ckpt_path` .* is a folder; give the path of a checkpoint file, or a sharded"
    ):
        cli_in_process(tmp_path, "--ckpt_path", str(folder))
    assert fit_calls == [] and not (tmp_path / "lightning_logs").exists()


def test_find_last_checkpoint_takes_the_newest_of_files_and_sharded_folders(tmp_path):
    cli = cli_in_process(tmp_path, run=False)
    assert isinstance(cli.trainer.strategy, ModelParallelStrategy)
    assert find_last_checkpoint(cli.trainer) is None
    v0 = fake_sharded_folder(checkpoints(tmp_path, 0) / "last.ckpt", mtime=1_000_000)
    v1 = fake_sharded_folder(checkpoints(tmp_path, 1) / "last.ckpt", mtime=1_000_001)
    for folder in (v0, v1):
        os.utime(folder, (900_000, 900_000))  # the folder's own time says nothing: its files are rewritten
    assert find_last_checkpoint(cli.trainer) == str(v1)
    # a newer folder of that name that is not a sharded checkpoint is skipped
    (checkpoints(tmp_path, 2) / "last.ckpt").mkdir(parents=True)
    torch.save({}, checkpoints(tmp_path, 2) / "last.ckpt" / "meta.pt")
    assert find_last_checkpoint(cli.trainer) == str(v1)
    # saved again in place: meta.pt and .metadata rewritten, the folder's own time unchanged
    for name in ("meta.pt", ".metadata"):
        os.utime(v0 / name, (2_000_000, 2_000_000))
    assert find_last_checkpoint(cli.trainer) == str(v0)
    # a newer single file (InterruptCheckpoint's folder without a ModelCheckpoint) wins over both
    single = tmp_path / "checkpoints" / "last.ckpt"
    single.parent.mkdir()
    single.write_bytes(b"x")
    os.utime(single, (3_000_000, 3_000_000))
    assert find_last_checkpoint(cli.trainer) == str(single)


@pytest.mark.slow
def test_the_fsdp2_recipe_resumes_from_its_sharded_folder_exactly(runs, tmp_path):
    """The three commands (2 processes each) run once, in one test: split over tests, pytest-xdist's two workers
    could each run them."""
    _the_recipe_writes_sharded_checkpoint_folders(runs)
    _ckpt_path_last_resumes_from_the_sharded_folder_of_the_first_run(runs)
    _the_resumed_run_ends_with_a_report_and_an_int8_model(runs)
    _resumed_weights_equal_the_straight_runs_exactly(runs, tmp_path)
    _the_int8_models_of_both_runs_give_the_same_outputs(runs)
