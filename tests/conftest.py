"""Shared fixtures: tiny data, the real MNIST folder beside the checkout, a quiet Trainer factory."""

from __future__ import annotations

import fcntl
import os
import warnings
from pathlib import Path

import pytest
import torch

from tests import ddp_support, launch, ports

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Real MNIST (the files torchvision reads with download=False) lives in ../shared/data beside the checkout.
SHARED_DATA_DIR = Path(os.environ.get("LIGHTNING_OPTIM_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is deprecated.*", category=DeprecationWarning)
# Tiny test models: one intra-op thread is fastest, and it cannot oversubscribe the cores when tests or
# other processes run beside it (two OpenMP threads on a busy 2-core machine were 20-50x slower).
torch.set_num_threads(1)
# The DDP tests' spawned workers end in lockstep without interpreter teardown, where a gloo/c10d thread left
# joinable aborted a worker after a finished fit in some full runs: see tests/ddp_support.py for the cause.
ddp_support.register()


def pytest_configure(config: pytest.Config) -> None:
    """Lightning's ddp_spawn takes MASTER_PORT from the environment: one of this pytest-xdist worker's own ports
    (in the pytest process only: the tests' worker scripts import this module too). The multi-process runs fork
    their ranks from a fork server with the heavy imports done (:mod:`tests.launch`)."""
    ports.pin_master_port()
    launch.configure()


#: the module whose tests share one fit per settings-table entry, and those tests' names
_MATRIX_MODULE = "tests/callbacks/test_callback_matrix.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the settings-table tests that share one fit per entry (``SHARED_FIT_TESTS`` of
    tests/callbacks/test_callback_matrix.py) next to each other, entry by entry, in the slots they had: pytest-xdist
    then hands an entry's tests to one worker, which makes the fit once. The same order on every worker."""
    matrix = [i for i, item in enumerate(items) if item.nodeid.startswith(_MATRIX_MODULE + "::")]
    if not matrix:
        return
    order = items[matrix[0]].module.SHARED_FIT_TESTS
    slots = [i for i in matrix if getattr(items[i], "originalname", "") in order]
    chosen = [items[i] for i in slots]
    chosen.sort(key=lambda item: (item.callspec.params["name"], order.index(item.originalname)))
    for slot, item in zip(slots, chosen):
        items[slot] = item


@pytest.fixture
def mnist_dir() -> Path:
    """The shared MNIST root; the test fails (not skips) if it is missing, as CI always has it."""
    raw = SHARED_DATA_DIR / "MNIST" / "raw"
    assert raw.is_dir(), f"Real MNIST expected under {raw} (see ../shared/data/README.md)."
    return SHARED_DATA_DIR


@pytest.fixture
def digits_dm():
    """The embedded 8x8 digits data module, small batches, no workers."""
    from lightning_optim.data import ImageClassificationDataModule

    return ImageClassificationDataModule("digits", batch_size=32)


_ONCE: dict[str, object] = {}


def once(key: str, make):
    """``make()`` once per test process, then the same value: for the expensive results (multi-process runs) that
    a module's tests share. A module-scoped fixture is not enough under pytest-xdist: a worker that runs another
    module's test in between tears the fixture down, and the next test of the module runs it again (seen: the
    2-process runs of the FSDP2 checkpoint, distillation and CLI tests ran twice on one worker). Two workers may
    still each make it once."""
    if key not in _ONCE:
        _ONCE[key] = make()
    return _ONCE[key]


def run_once_per_session(key: str, tmp_path_factory: pytest.TempPathFactory, launch) -> Path | str:
    """``launch(folder)`` once per test session, even when both pytest-xdist workers ask (a module's tests split
    between them): the folder it filled, or why it failed (the text of the ``AssertionError`` it raised, e.g.
    :func:`tests.launch.run_ranks`' ranks' logs). For runs whose results are files (the multi-process runs).

    The first worker to ask runs it holding a lock on the session's shared temporary folder; the other waits on
    the lock (idle: its core goes to the run's processes) and then reads the same folder. :func:`once` keeps the
    answer per process."""

    def make() -> Path | str:
        base = tmp_path_factory.getbasetemp()
        shared = (
            base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
        )  # popen-gwN/.. is the session's
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        folder, failed = shared / f"once-{name}", shared / f"once-{name}.failed"
        with open(shared / f"once-{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if failed.exists():
                    return failed.read_text()
                if (folder / ".done").exists():
                    return folder
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    launch(folder)
                except AssertionError as err:
                    failed.write_text(str(err))
                    return str(err)
                (folder / ".done").touch()
                return folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    return once(f"session:{key}", make)


def launched_runs(launch):
    """A module-scoped ``runs`` fixture: the folder :func:`run_once_per_session` fills with ``launch`` (e.g.
    :func:`tests.launch.scenarios_launch` of a multi-process worker), keyed by the test module; a failed run fails
    every test that needs it with the ranks' logs (and is not started again). In a test module::

        runs = launched_runs(scenarios_launch("tests.callbacks.some_worker", SCENARIOS, name="some"))
    """

    @pytest.fixture(scope="module")
    def runs(request, tmp_path_factory) -> Path:
        got = run_once_per_session(request.module.__name__, tmp_path_factory, launch)
        if isinstance(got, str):
            pytest.fail(got, pytrace=False)
        return got

    return runs


def quiet_trainer_kwargs(tmp_path, **overrides) -> dict:
    """Keyword arguments for a fast, quiet single-process CPU Trainer in tests: no logger, checkpoints, progress
    bar, model summary or sanity check, one epoch, files under ``tmp_path``; ``overrides`` win."""
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        max_epochs=1,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def one_thread():
    """One intra-op thread (restored after): on the shared 2-core machine two threads oversubscribe and crawl.
    Quantization tests use it (``pytest.mark.usefixtures("one_thread")``; autouse in
    ``tests/functional/quantization``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    """A Trainer(deterministic=True) turns on torch's deterministic mode for the whole process; restore it (and
    the thread count) after each test so that one test's Trainer cannot change how the next one runs."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_num_threads(threads)


def gather_across_ranks(tensor):
    """``tensor`` from every rank, stacked (rank order), with the plain synchronous ``all_gather``.

    Tests use this instead of ``trainer.strategy.all_gather``: on gloo, Lightning routes that through
    ``torch.distributed.nn.functional.all_gather`` (deprecated in torch 2.14, asynchronous functional
    collectives underneath), and a spawned worker exiting right after it aborted once in six full-suite runs
    ("terminate called without an active exception"; not reproduced when the test ran alone)."""
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    dist.barrier()
    return torch.stack(parts)
