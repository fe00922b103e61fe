"""Bad-input catalogue part: loaders (rows as in ``tests/bad_input_catalogue.py``)."""

from __future__ import annotations

ENTRIES: list[tuple[str, str, str, str]] = []
