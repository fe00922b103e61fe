"""Every entry of the bad-input catalogue raises the documented exception with a message naming the option."""

from __future__ import annotations

import builtins
import re
import warnings
from pathlib import Path

import pytest

from tests.bad_input_catalogue import (
    CATALOGUE,
    MUST_NAME,
    namespace,
    render_markdown,
    rendered_with,
    run_entry,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


@pytest.fixture(scope="module")
def ns():
    warnings.simplefilter("ignore")
    return namespace()


def test_catalogue_has_at_least_30_entries():
    assert len(CATALOGUE) >= 30
    assert len({(a, w) for a, w, _, _ in CATALOGUE}) == len(CATALOGUE), "duplicate entries"


@pytest.mark.parametrize("area,what,code,exc", CATALOGUE, ids=[f"{a}: {w}" for a, w, _, _ in CATALOGUE])
def test_bad_input_is_refused_clearly(ns, area, what, code, exc):
    err = run_entry(code, ns)
    assert err is not None, f"{code} raised nothing"
    assert isinstance(err, getattr(builtins, exc)), f"{code} raised {type(err).__name__}: {err}"
    message = str(err)
    assert len(message) > 20, f"unhelpful message: {message!r}"
    # the message names what was wrong: an option in backticks/quotes, or the offending value
    if what in MUST_NAME:
        assert MUST_NAME[what] in message, f"message does not name {MUST_NAME[what]!r}: {message!r}"
    else:
        named = re.findall(r"[`'\"]([^`'\"]+)[`'\"]", code) + re.findall(r"(\w+)=", code)
        assert any(n in message for n in named), f"message does not name the option or value: {message!r}"


def test_docs_page_is_current():
    assert DOC.is_file(), "run `python -m tests.bad_input_catalogue` to write docs/bad-inputs.md"
    page, current = DOC.read_text(), render_markdown()
    if rendered_with() not in page:
        # other jsonargparse/lightning versions word the CLI rows' messages differently: compare the rest
        def ours(text: str) -> list[str]:
            return [
                line
                for line in text.splitlines()
                if not line.startswith(("| CLI |", f"{len(CATALOGUE)} bad"))
            ]

        page, current = ours(page), ours(current)
    assert page == current, "docs/bad-inputs.md is stale: run `python -m tests.bad_input_catalogue`"
