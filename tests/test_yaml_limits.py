"""YAML config files are measured before anything expands them: alias expansion, size, depth, Python tags."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_optim import yaml_limits
from lightning_optim.yaml_limits import YAMLLimitError, check_yaml, load_yaml
from tests.catalogue.loaders import billion_laughs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLI_BASE = [
    "--model=ClassificationModule",
    "--model.model=LeNet300100",
    "--model.model.in_features=64",
    "--data=ImageClassificationDataModule",
    "--trainer.logger=false",
]


@pytest.fixture
def installed():
    """The limits in front of jsonargparse for one test, jsonargparse's own loaders again afterwards."""
    yaml_limits.install()
    yield
    yaml_limits.uninstall()


def _cli_stderr(args: list[str]) -> tuple[int | str | None, str]:
    from lightning_optim.cli import build_cli

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        build_cli(args, run=False)
    return exit_.value.code, stderr.getvalue()


# ------------------------------------------------------------------------------------- the measure
def test_a_billion_laughs_is_refused_from_its_node_graph():
    text = billion_laughs(levels=9)  # 10^9 strings once expanded, 0.6 kB written
    assert len(text) < 1000
    with pytest.raises(YAMLLimitError, match=r"aliases add [\d,]+, more than 100,000") as err:
        check_yaml(text, "laughs.yaml")
    assert "'laughs.yaml'" in str(err.value) and len(str(err.value)) < 300
    assert isinstance(err.value, ValueError) and isinstance(err.value, yaml.YAMLError)


def test_settings_reused_through_anchors_still_load():
    text = """
defaults: &defaults {lr: 0.1, momentum: 0.9, nesterov: true}
stages:
  - {<<: *defaults, name: prune}
  - {<<: *defaults, name: quantize, lr: 0.01}
  - {<<: *defaults, name: distill}
callbacks: [&cb {class_path: EarlyStopping, init_args: {monitor: val_loss}}, *cb]
"""
    assert load_yaml(text) == yaml.safe_load(text)
    for path in sorted(EXAMPLES.glob("*.yaml")):  # every shipped recipe is far below the limits
        check_yaml(path.read_text(), path)


def test_what_aliases_add_is_counted_with_the_scalars_they_repeat():
    long = "x" * 20_000
    four = f"a: &a {long}\nb: [*a, *a, *a, *a]\n"
    check_yaml(four)  # four copies of 20,001 (the string and its node) added: 80,004
    with pytest.raises(YAMLLimitError, match="aliases add 100,005, more than 100,000"):
        check_yaml(four.replace("*a]", "*a, *a]"))
    with pytest.raises(YAMLLimitError, match="more than 10"):
        check_yaml("a: &a [1, 2]\nb: [*a, *a, *a, *a]\n", max_alias_expansion=10)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [*a]\n", "recursive: an alias refers to a node that contains it"),
        (
            "run: !!python/object/apply:os.system ['touch pwned']\n",
            "'!!python/object/apply:os.system' \\(line 1\\)",
        ),
        ("m: !!python/name:builtins.eval\n", "!!python/name:builtins.eval"),
        ("x: 1\n" + "#" * (2**20), "more than the 1,048,576"),
        (
            "\n".join(f"l{i}: &l{i} [{'*l' + str(i - 1) if i else 0}]" for i in range(150)),
            "more deeply than 100",
        ),
    ],
)
def test_other_limits(text, message):
    with pytest.raises(YAMLLimitError, match=message):
        load_yaml(text)


def test_nesting_written_out_is_pyyamls_own_error():
    with pytest.raises(yaml.YAMLError):
        load_yaml("[" * 5000 + "]" * 5000)


# ------------------------------------------------------------------------------------- jsonargparse
def test_jsonargparse_config_files_go_through_the_limits(tmp_path, installed):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--cfg", action=ActionConfigFile)
    parser.add_argument("--epochs", type=int, default=1)
    good, bad = tmp_path / "good.yaml", tmp_path / "laughs.yaml"
    good.write_text("epochs: &e 3\n")
    bad.write_text(billion_laughs() + "epochs: *l8\n")
    assert parser.parse_args(["--cfg", str(good)]).epochs == 3
    with pytest.raises(Exception, match="aliases add") as err:
        parser.parse_args(["--cfg", str(bad)])
    assert len(str(err.value)) < 2000
    yaml_limits.install()  # again: wrapped once, the limits replaced
    from jsonargparse import get_loader

    inner = get_loader("yaml")._lightning_optim_yaml_limits
    assert getattr(inner, "_lightning_optim_yaml_limits", None) is None


def test_the_cli_refuses_a_billion_laughs_recipe_fast_and_briefly(tmp_path, installed):
    """Without the limits this recipe (levels 5: 10^5 strings) prints an error of about 700 kB, and one of 9
    levels runs for many seconds and prints hundreds of MB."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(billion_laughs(levels=9) + "trainer:\n  max_epochs: *l8\n")
    code, err = _cli_stderr(["--config", str(recipe), *CLI_BASE])
    assert code == 2 and "aliases add" in err and "'recipe.yaml'" in err
    assert len(err) < 20_000, len(err)


def test_without_the_limits_jsonargparse_prints_the_expansion(tmp_path):
    """The reason for the limits, measured small: jsonargparse's own loader expands 10^5 strings into its error
    (the same recipe through the limits: the test above)."""
    yaml_limits.uninstall()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--cfg", action=ActionConfigFile)
    parser.add_argument("--epochs", type=int, default=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(billion_laughs(levels=5) + "epochs: *l4\n")
    with pytest.raises(Exception) as err:  # noqa: PT011 - what matters is its size
        parser.parse_args(["--cfg", str(recipe)])
    assert len(str(err.value)) > 100_000 and "aliases add" not in str(err.value)
    yaml_limits.install()
    with pytest.raises(Exception, match="aliases add") as err:
        parser.parse_args(["--cfg", str(recipe)])
    assert len(str(err.value)) < 2000
    yaml_limits.uninstall()


def test_the_cli_refuses_a_yaml_value_that_is_itself_a_billion_laughs(tmp_path, installed):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer:\n  max_epochs: " + json.dumps(billion_laughs(levels=5)) + "\n")
    code, err = _cli_stderr(["--config", str(recipe), *CLI_BASE])
    assert code == 2 and len(err) < 20_000, len(err)


def test_the_cli_refuses_python_tags_and_still_reads_a_recipe(tmp_path, installed):
    recipe = tmp_path / "recipe.yaml"
    marker = tmp_path / "pwned"
    recipe.write_text(f"trainer:\n  max_epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    code, err = _cli_stderr(["--config", str(recipe), *CLI_BASE])
    assert code == 2 and "!!python/object/apply:os.system" in err and not marker.exists()
    from lightning_optim.cli import build_cli

    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  max_epochs: &d 2\n  min_epochs: *d\n  logger: false\n")
    cli = build_cli(["--config", str(good), *CLI_BASE[:-1]], run=False)
    assert cli.trainer.max_epochs == 2 and cli.trainer.min_epochs == 2


# ------------------------------------------------------------------------------------- paths on the command line
def test_a_config_that_is_not_a_regular_file_is_refused_before_jsonargparse_reads_it(tmp_path):
    """jsonargparse reads ``--config`` itself: a FIFO there blocks it forever (measured: killed after 60 s)."""
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="`--config` .* is not a regular file"):
        yaml_limits.check_config_files(["fit", "--config", str(fifo)])
    with pytest.raises(ValueError, match="`--config` .* is a folder"):
        yaml_limits.check_config_files([f"--config={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="`--config` .*missing.yaml' does not exist"):
        yaml_limits.check_config_files(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="`--data.init_args.train_file` .* would block"):
        yaml_limits.check_config_files(["--data.init_args.train_file", str(fifo)])
    with pytest.raises(ValueError, match="`--model.init_args.teacher_checkpoint` .* would block"):
        yaml_limits.check_config_files([f"--model.init_args.teacher_checkpoint={fifo}"])
    recipe = sorted(EXAMPLES.glob("*.yaml"))[0]
    yaml_limits.check_config_files(
        ["fit", "--config", str(recipe), "--data.init_args.image_folder", str(tmp_path)]
    )


def test_guard_cli_installs_the_limits_and_checks_the_paths(tmp_path):
    from jsonargparse import get_loader

    yaml_limits.uninstall()
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    try:
        with pytest.raises(ValueError, match="not a regular file"):
            yaml_limits.guard_cli(["fit", "--config", str(fifo)])
        assert hasattr(get_loader("yaml"), "_lightning_optim_yaml_limits")
    finally:
        yaml_limits.uninstall()
