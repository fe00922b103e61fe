"""The channel-group accuracy benchmark runs end to end on real MNIST (two training and two test batches of 32 per
fit: the smoke run checks the code path and the report, not the figures) and reports per-seed rows, mean and worst
consistently."""

from __future__ import annotations

import re

from benchmarks.pruning_accuracy import main


def test_runs_and_reports_mean_and_worst(mnist_dir, tmp_path, capsys):
    main(
        [
            "--data-dir", str(mnist_dir), "--models", "resnet18", "--seeds", "2", "--epochs", "1",
            "--ramp-epochs", "0", "--limit-train-batches", "2", "--limit-test-batches", "2", "--batch-size", "32",
            "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \| .* \| (\d+)/(\d+) \|$", out, re.M)
    assert len(rows) == 2, out
    diffs = [float(p) - float(d) for _, d, p, _, _, _ in rows]
    assert all(abs(float(r[3]) - diff) <= 0.011 for r, diff in zip(rows, diffs))
    assert all(int(removed) == int(requested) > 0 for *_, removed, requested in rows)
    mean = re.search(r"^\| mean \| [\d.]+ \| [\d.]+ \| ([+-][\d.]+) \|", out, re.M)
    assert abs(float(mean[1]) - sum(diffs) / 2) <= 0.011
    assert re.search(r"^target \(mean difference <= 0.3 pt\): (holds|not met)", out, re.M)
