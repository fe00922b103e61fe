"""The channel-group overhead benchmark runs and reports a consistent row (no wall-time bound: a timing)."""

from __future__ import annotations

import re

from benchmarks.pruning import main


def test_overhead_groups_reports_steps_event_and_masks(capsys):
    main(["overhead_groups", "--steps", "2", "--image-size", "32", "--frequency", "10"])
    out = capsys.readouterr().out
    row = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \(N = 10\) \|$", out, re.M)
    assert row, out
    none, ours, ratio = (float(v) for v in row.groups()[:3])
    assert abs(ratio - ours / none) <= 0.03 * ratio  # the row shows times rounded to 0.1 ms
    assert "masked weights still zero after 2 steps: True" in out
