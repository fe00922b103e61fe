"""The distillation benchmark (benchmarks/distillation.py): its cache keys, its command-line checks, and one
end-to-end run on a tiny slice of real MNIST.

Cached results are reused by file name, so a setting that changes a result must change the name, and the
defaults must keep the names that earlier sessions' caches were written under.
"""

import math
import re
import statistics

import pytest

from benchmarks.distillation import counts_on_holdout, gap_recovery, main, parse_args, student_result_path


def _name(argv: list[str], distilled: bool, seed: int = 0) -> str:
    return student_result_path(parse_args(argv), seed, distilled).name


def test_default_cache_names_are_unchanged():
    assert _name([], distilled=False) == "h800x800_e40_lr0.002_b256_aug0_sNone_t1_seed0.json"
    assert (
        _name(["--student-epochs", "80"], distilled=True, seed=3)
        == "h800x800_e80_lr0.002_b256_aug0_sNone_t1_kd_T20_a1_teacher6xjitter_e80_logits_seed3.json"
    )


@pytest.mark.parametrize("distilled", [False, True])
def test_every_new_setting_gets_its_own_cache_name(distilled):
    variants = [
        [],
        ["--student-optimizer", "nesterov"],
        ["--student-optimizer", "momentum"],
        ["--holdout", "10000"],
        ["--holdout", "10000", "--count-on", "holdout"],
        ["--holdout", "5000", "--count-on", "holdout"],
        ["--limit-test-samples", "1000"],
    ]
    names = [_name(argv, distilled) for argv in variants]
    assert len(set(names)) == len(names), names


def test_count_on_holdout_only_with_a_holdout():
    assert not counts_on_holdout(parse_args([]))
    assert not counts_on_holdout(parse_args(["--holdout", "10000"]))
    assert counts_on_holdout(parse_args(["--holdout", "10000", "--count-on", "holdout"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count-on", "holdout"], "--count-on holdout needs --holdout"),
        (["--holdout", "-1"], "--holdout must be in [0, 60000)"),
        (["--holdout", "60000"], "--holdout must be in [0, 60000)"),
        (["--student-optimizer", "sgdw"], "--student-optimizer"),
        (["--limit-test-samples", "0"], "--limit-test-samples must be at least 1"),
        (
            ["--holdout", "100", "--count-on", "holdout", "--limit-test-samples", "9"],
            "not with --count-on holdout",
        ),
    ],
)
def test_bad_arguments_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def _run_benchmark(mnist_dir, cache_dir, capsys, *extra: str) -> str:
    """The benchmark's ``main`` on a user's command line, on a tiny slice of real MNIST: 512 training images,
    errors counted on the first 1,000 test images. In this process (a fresh one costs seconds of imports): the
    second run's cache reuse is read from the files it leaves (file times, "trained in nan s"), and the benchmark
    keeps nothing in memory between runs."""
    argv = [
        "--data-dir", str(mnist_dir), "--cache-dir", str(cache_dir), "--limit-train-samples", "512",
        "--limit-test-samples", "1000", "--teacher-members", "2", "--teacher-epochs", "1", "--student-epochs", "2",
        "--seeds", "2", "--timing-batches", "4", "--timing-rounds", "1", *extra,
    ]  # fmt: skip
    capsys.readouterr()
    main(argv)
    return capsys.readouterr().out


def _row(output: str, label: str) -> tuple[float, list[int]]:
    """``(mean, per-seed errors)`` of the results-table row that starts with ``label``."""
    match = re.search(rf"^\| {re.escape(label)}[^|]*\| [\d,]+ \| ([\d.]+) \| \[([\d, ]+)\] \|$", output, re.M)
    assert match, f"no table row {label!r} in:\n{output}"
    return float(match[1]), [int(v) for v in match[2].split(",")]


def test_runs_end_to_end_on_real_mnist_and_reuses_its_caches(mnist_dir, tmp_path, capsys, monkeypatch):
    """Trains a 2-member teacher and both students on 512 real images (errors counted on 1,000 test images); the
    printed table, the gap recovery and the step-time ratios must agree with each other, and a second run must
    load everything it can from the caches and print the same errors."""
    monkeypatch.setenv("PL_DISABLE_FORK", "1")  # what main sets for its own process; restored after
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by its seed_everything; restored after
        monkeypatch.delenv(name, raising=False)
    first = _run_benchmark(mnist_dir, tmp_path, capsys)
    assert "MNIST test errors (of 1,000)" in first, first
    teacher = int(re.search(r"^\| teacher: [^|]*\| [\d,]+ \| (\d+) \|", first, re.M)[1])
    mean_alone, alone = _row(first, "student alone")
    mean_kd, distilled = _row(first, "student distilled (T=20, alpha=1)")
    assert len(alone) == len(distilled) == 2
    assert all(0 <= errors <= 1000 for errors in [teacher, *alone, *distilled])
    assert mean_alone == pytest.approx(statistics.mean(alone), abs=0.05)
    assert mean_kd == pytest.approx(statistics.mean(distilled), abs=0.05)
    recovery = float(re.search(r"^gap recovery: (-?[\d.]+|nan)%", first, re.M)[1])
    expected = 100 * gap_recovery(alone, distilled, teacher)
    assert recovery == pytest.approx(expected, abs=0.05) or (math.isnan(recovery) and math.isnan(expected))
    # the saved teacher time is printed; it is a wall time, so nothing is asserted about its value
    assert re.search(r"per distilled run: [\d.]+ s", first), first
    step_row = r"^\| (student alone|online KD[^|]*|offline KD[^|]*) \| [\d.]+ \| ([\d.]+) \|$"
    ratios = dict(re.findall(step_row, first, re.M))
    assert len(ratios) == 3 and float(ratios["student alone"]) == 1.0, first
    assert re.search(r"cached KD on / off in alternating blocks .* = \d+\.\d{3} \(target <= 1\.1\)", first)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # one file per ensemble member
    assert len(list((tmp_path / "students").glob("*.json"))) == 4  # 2 seeds x (alone, distilled)

    written = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    again = _run_benchmark(mnist_dir, tmp_path, capsys, "--skip-timing")
    assert "trained in nan s" in again  # every member loaded, none retrained
    # no cache file rewritten: equal errors alone could also come from a deterministic retraining
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == written
    assert _row(again, "student alone")[1] == alone
    assert _row(again, "student distilled (T=20, alpha=1)")[1] == distilled
    assert "| step time" not in again and "alternating blocks" not in again
