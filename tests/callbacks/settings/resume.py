"""Settings of the fault-tolerance callbacks (ExactResume, InterruptCheckpoint) for the generated tests.

ExactResume is active in any fit (it carries the random states of every rank in each checkpoint); the
generated resume test checks that a run resumed from the mid-run checkpoint ends with the same random states
as the uninterrupted one. InterruptCheckpoint acts only on a signal (tested in
``tests/callbacks/test_interrupt_checkpoint.py`` and ``tests/reliability/test_kill_resume.py``): here, that a
fit puts the signal handlers it installed back.
"""

from __future__ import annotations

import signal


def _check_exact_resume(trainer, module, callback) -> None:
    ranks = callback.state_dict()["ranks"]
    assert len(ranks) == 1 and ranks[0]["epoch_start"] is not None  # recorded at every epoch's start
    assert ranks[0]["step"]["torch"].dtype.is_floating_point is False


def _check_interrupt(trainer, module, callback) -> None:
    assert callback.received is None and callback.checkpoint_path is None
    for signum in (signal.SIGTERM, signal.SIGINT):
        assert signal.getsignal(signum) != callback._handle, "the fit left its signal handler installed"


SETTINGS = {
    "ExactResume": {
        "kwargs": {},
        "model": "convnet3",
        "check_active": _check_exact_resume,
    },
    "InterruptCheckpoint": {
        "kwargs": {},
        "model": "lenet300100",
        "check_active": _check_interrupt,
    },
}
