"""The FSDP2 memory benchmark: its model size, its figures and its results file (no bound on memory or time: the
tiny runs here check that every figure is measured and reported, not the machine)."""

from __future__ import annotations

import pytest

from benchmarks import fsdp2_memory as bench


def test_the_mlp_has_the_parameters_asked_for():
    for params in (2e4, 5e6, 50e6):
        width = bench.hidden_width(params)
        assert width % 8 == 0
        count = bench.count_parameters(width)
        assert abs(count - params) / params < 0.02, (params, width, count)
        assert count == sum(p.numel() for p in bench.network(width).parameters())
    assert bench.count_parameters(bench.hidden_width(50e6)) == 50_055_610  # the size the results file states


def test_a_section_run_again_replaces_only_itself():
    text = bench._replace_section(bench.HEADER, "memory, scope layer", "old memory")
    text = bench._replace_section(text, "timing, scope layer", "old timing")
    text = bench._replace_section(text, "timing, scope layer", "new timing")
    assert "old memory" in text and "new timing" in text and "old timing" not in text
    assert text.startswith(bench.HEADER)


def test_the_load_decides_whether_timings_are_marked_as_under_load():
    assert "under load" in bench.load_note((3.2, 0.1))
    assert "idle" in bench.load_note((0.1, 0.2))


def test_step_statistics_leave_the_ramp_and_the_pruning_steps_out():
    steps = [
        {"kind": "ramp", "s": 9.0, "hook_s": 0.0},
        {"kind": "prune", "s": 5.0, "hook_s": 0.0},
        {"kind": "on", "s": 1.1, "hook_s": 0.1},
        {"kind": "off", "s": 1.0, "hook_s": 0.0},
        {"kind": "on", "s": 1.1, "hook_s": 0.1},
        {"kind": "off", "s": 1.0, "hook_s": 0.0},
    ]
    stats = bench._step_stats(steps)
    assert stats["on"] == pytest.approx(1.1) and stats["off"] == pytest.approx(1.0)
    assert stats["ratio"] == pytest.approx(1.1) and stats["hook_share"] == pytest.approx(0.1 / 1.1)
    assert stats["prune"] == pytest.approx(5.0) and stats["pairs"] == 2


@pytest.mark.slow
def test_memory_part_measures_both_modes_and_writes_its_section(tmp_path):
    out = tmp_path / "fsdp2_memory.md"
    results = bench.main(["--params", "2e4", "--steps", "7", "--only", "memory", "--out", str(out)])
    single, ranks = results["memory"]["single"], results["memory"]["ranks"]
    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["sharded"] for r in ranks) and not single["sharded"]
    for run in (single, *ranks):
        assert run["global_step"] == 7 and run["parameters"] == bench.count_parameters(
            bench.hidden_width(2e4)
        )
        assert run["history"][-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
        assert {"imports", "setup", "train", "prune", "end"} <= set(run["peaks"])
        assert all(v > run["baseline_rss"] // 2 for v in run["peaks"].values())
    figures = results["memory_figures"]
    for name in ("above", "peak", "prune_above", "train_above"):
        worst = max(r[name] for r in figures["ranks"])
        assert figures["ratios"][name] == pytest.approx(worst / figures["single"][name])
    text = out.read_text()
    assert text.startswith(bench.HEADER) and "<!-- fsdp2_memory: memory, scope layer -->" in text
    assert f"{figures['ratios']['above']:.3f}" in text and "<!-- fsdp2_memory: timing" not in text


@pytest.mark.slow
def test_timing_part_alone_keeps_the_memory_section(tmp_path):
    out = tmp_path / "fsdp2_memory.md"
    out.write_text(bench._replace_section(bench.HEADER, "memory, scope layer", "MEMORY FIGURES"))
    results = bench.main(["--params", "2e4", "--only", "timing", "--timing-steps", "4", "--out", str(out)])
    assert set(results) == {"timing"}
    for run in (results["timing"]["single"], *results["timing"]["ranks"]):
        kinds = [s["kind"] for s in run["steps"]]
        assert kinds.count("prune") == 3 and kinds.count("on") == 2 and kinds.count("off") == 2, kinds
        assert all(s["hook_s"] == 0 for s in run["steps"] if s["kind"] == "off")
        assert all(0 < s["hook_s"] < s["s"] for s in run["steps"] if s["kind"] == "on")
    text = out.read_text()
    assert "MEMORY FIGURES" in text and "<!-- fsdp2_memory: timing, scope layer -->" in text
    assert "on / off" in text and "load average" in text
