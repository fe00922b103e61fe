"""The pruning-coverage benchmark (benchmarks/pruning_coverage.py), run in-process on two small models at 32 px
without Torch-Pruning, timm or transformers (CI installs only ``.[dev]``): its table rows and its last line.
No assertion on wall times."""

from __future__ import annotations

import re
import sys

from benchmarks.pruning_coverage import MODELS, main

COVERAGE = re.compile(
    r"^coverage: (\d+)/(\d+) models removed >= 95% of the request; "
    r"min speed ratio vs Torch-Pruning (n/a|\d+\.\d\d); transformer speedup (n/a|\d+\.\d\dx)$"
)


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in MODELS:
            rows[cells[0]] = cells
    return rows


def test_small_run_rows_and_coverage_line(capsys, tmp_path):
    out_file = tmp_path / "coverage.md"
    rows = main(
        [
            "--models",
            "convnet3",
            "resnet18",
            "--image-size",
            "32",
            "--repeats",
            "1",
            "--rounds",
            "1",
            "--skip-torch-pruning",
            "--out",
            str(out_file),
        ]
    )
    out = capsys.readouterr().out
    table = _rows(out)
    assert list(table) == ["convnet3", "resnet18"]
    for r in rows:
        cells = table[r.model]
        assert cells[1] == "ok", r.status
        prunable, requested = int(cells[2]), int(cells[3])
        assert prunable == r.prunable > 0 and requested == r.requested == round(0.5 * prunable)
        assert cells[4] == f"{100 * r.pruned / r.requested:.0f}%"
        assert r.pruned / r.requested >= 0.95  # these two are fully covered
        assert cells[5] == f"{100 * r.pruned / r.units:.0f}%"
        dense_p, ours_p, tp_p = (c.strip() for c in cells[7].split("/"))
        assert float(ours_p) < float(dense_p) and tp_p == "-"
        dense_m, ours_m, _ = (c.strip() for c in cells[8].split("/"))
        assert float(ours_m) < float(dense_m)
        assert set(r.latency_ms) == {"dense", "ours"}
        assert cells[10] == f"{r.latency_ms['dense'] / r.latency_ms['ours']:.2f}x"
        assert cells[11] == "-" and cells[12] == "-"  # no Torch-Pruning
        assert (
            r.max_diff is not None and r.max_diff <= 1e-4 and float(cells[13]) == float(f"{r.max_diff:.1e}")
        )
        assert any("the model's output" in k for k in r.kept)
    last = out.rstrip().splitlines()[-1]
    match = COVERAGE.match(last)
    assert match, last
    assert (int(match[1]), int(match[2])) == (2, 2)
    assert match[3] == "n/a" and match[4] == "n/a"  # no Torch-Pruning, no transformer
    written = out_file.read_text().rstrip().splitlines()
    assert written[-1] == last and any(line.startswith("| resnet18 |") for line in written)


def test_missing_library_skips_the_model(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    rows = main(["--models", "vit_tiny", "--image-size", "32", "--skip-torch-pruning"])
    assert rows[0].status.startswith("skipped: install .[bench]")
    out = capsys.readouterr().out
    assert "| vit_tiny | skipped: install .[bench]" in out
    assert out.rstrip().splitlines()[-1] == (
        "coverage: 0/0 models removed >= 95% of the request; min speed ratio vs Torch-Pruning n/a; "
        "transformer speedup n/a"
    )
