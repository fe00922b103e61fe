"""A short, derandomized run of the readers' fuzzing (``benchmarks/fuzz.py`` runs 10,000 cases per target):
every case returns or raises one of our error types, damaged artifacts never load as another model, well-formed
files read back exactly, no case hangs or grows the peak RSS beyond the limit."""

from __future__ import annotations

import re
import time

import pytest

from tests.reliability.fuzzing import (
    TARGETS,
    ArtifactTarget,
    Target,
    WrongResult,
    fuzz,
    reproducers,
    run_case,
    table,
)

#: cases per target in the suite (a few seconds each)
CASES = 300


@pytest.mark.parametrize("target", TARGETS)
def test_readers_survive_generated_cases(target):
    report = fuzz(target, CASES, derandomize=True)
    assert report.cases == CASES
    assert not report.failures, f"\n{table([report])}\n{reproducers([report])}"
    # the cases reach past the first checks: some inputs are read whole, others refused for many reasons
    assert report.counts("returned") and len(report.counts("refused")) >= 1
    kinds = {re.sub(r"[\d,]+|'[^']*'", "#", o.message)[:70] for o in report.outcomes if o.status == "refused"}
    assert len(kinds) > 5, kinds


class _Rulebreaker(Target):
    """A reader that breaks each rule in turn."""

    name = "rulebreaker"

    def run(self, case: int) -> None:
        if case == 1:
            raise ValueError("refused clearly")
        if case == 2:
            raise TypeError("an internal error")
        if case == 3:
            raise WrongResult("read as something else")
        if case == 4:
            time.sleep(5)
        if case == 5:
            block = bytearray(96 * 2**20)
            block[::4096] = b"x" * len(block[::4096])  # touched: resident


def test_the_criteria_can_fail():
    target = _Rulebreaker()
    outcomes = [run_case(target, case, time_limit=0.5) for case in range(6)]
    assert [(o.status, o.name) for o in outcomes[:5]] == [
        ("returned", "-"),
        ("refused", "ValueError"),
        ("failed", "TypeError"),
        ("failed", "WrongResult"),
        ("failed", "Timeout"),
    ]
    assert outcomes[4].seconds < 5
    assert (
        outcomes[5].rss_growth > 32 * 2**20 or outcomes[5].status == "returned"
    )  # peak already higher: no growth


def test_a_loader_that_lets_an_internal_error_out_is_reported(monkeypatch):
    from lightning_optim.functional import artifact as A

    original = A._rebuild

    def internal_error(blob, header, label):
        if len(blob) % 3 == 0:
            raise KeyError("an internal error")
        return original(blob, header, label)

    monkeypatch.setattr(A, "_rebuild", internal_error)
    monkeypatch.setattr(ArtifactTarget, "warm_up", lambda self: None)
    report = fuzz("artifact", 200, derandomize=True)
    assert report.counts("failed").get("KeyError"), table([report])
