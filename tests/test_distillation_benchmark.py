"""The distillation benchmark's cache keys and command-line checks (benchmarks/distillation.py).

Cached results are reused by file name, so a setting that changes a result must change the name, and the
defaults must keep the names that earlier sessions' caches were written under.
"""

import pytest

from benchmarks.distillation import counts_on_holdout, parse_args, student_result_path


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
    ],
)
def test_bad_arguments_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
