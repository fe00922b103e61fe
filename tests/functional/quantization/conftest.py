"""Shared fixtures of the quantization function tests: every test here runs on one intra-op thread (the
suite's ``one_thread`` fixture, ``tests/conftest.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread_for_every_test(one_thread):
    yield
