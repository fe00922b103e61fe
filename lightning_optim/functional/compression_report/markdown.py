"""Markdown tables, written once: the compression report's rows and the quantization report both render
through :func:`markdown_table`; :func:`format_cell` writes one figure the way the report's columns show it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning_optim.checks import check_choice

#: column alignment -> the separator cell under the header
_ALIGN_RULES: dict[str | None, str] = {None: "---", "left": ":---", "right": "---:", "center": ":---:"}


def format_cell(value: Any, kind: str = "str") -> str:
    """``value`` as a table cell: ``"-"`` for ``None``/NaN; ``kind`` is ``"int"`` (``12,345``), ``"pct"``
    (a fraction as ``97.50%``), ``"bytes"`` (``12.3 KiB`` / ``1.23 MiB``), ``"ratio"`` (``4.2x``), ``"float"``
    (2 decimals), ``"float3"`` (3 decimals) or ``"str"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "bytes":
        return f"{value / 1024:,.1f} KiB" if value < 1024**2 else f"{value / 1024**2:,.2f} MiB"
    if kind == "ratio":
        return f"{value:.1f}x"
    if kind == "float":
        return f"{value:,.2f}"
    if kind == "float3":
        return f"{value:,.3f}"
    return str(value)


def _line(cells: Sequence[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str | None] | None = None
) -> str:
    """A Markdown table (no trailing newline): a header line, the separator line, one line per row.

    Args:
        headers: the column titles (an empty title gives an empty header cell).
        rows: the cells of each row, already formatted (anything else goes through ``str``).
        align: per column ``"left"``, ``"right"``, ``"center"`` or ``None`` (the renderer's default).

    Raises:
        ValueError: for a row or ``align`` whose length is not the number of headers, or an alignment not in ``left``/``right``/``center``/``None``.
    """
    align = list(align) if align is not None else [None] * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"markdown_table: {len(align)} alignments for {len(headers)} columns.")
    for a in align:
        check_choice("align", a, _ALIGN_RULES)
    lines = [_line([str(h) for h in headers]), "|" + "|".join(_ALIGN_RULES[a] for a in align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: a row of {len(row)} cells for {len(headers)} columns.")
        lines.append(_line([str(c) for c in row]))
    return "\n".join(lines)


__all__ = ["format_cell", "markdown_table"]
