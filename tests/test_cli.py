"""The `lightning-optim` CLI: fit from YAML in a subprocess, reload the saved config.yaml, --print_config,
short class names, the num_classes link, the other subcommands, the default logger and the quiet first screen;
faults: atomic checkpoints, exact resume and interrupts by default, `--ckpt_path last` across versions, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_optim.cli import build_cli
from tests.conftest import REPO_ROOT


def recipe(tmp_path: Path, **model_overrides) -> dict:
    """A tiny digits recipe: one epoch of three batches."""
    network = {
        "class_path": "ConvNet3",
        "init_args": {"image_size": 8, "channels": [8, 16, 16], "hidden": 32},
    }
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "limit_train_batches": 3,
            "limit_val_batches": 2,
            "limit_test_batches": 2,
            "limit_predict_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path)},
            },
        },
        "model": {
            "class_path": "ClassificationModule",
            "init_args": {"model": network, "optimizer": "nesterov", "lr": 0.05, **model_overrides},
        },
        "data": {
            "class_path": "ImageClassificationDataModule",
            "init_args": {"dataset": "digits", "batch_size": 32},
        },
    }


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("lightning-optim")  # the console script of the installed package
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_optim.cli"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*cli_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_fit_from_yaml_then_train_again_from_the_saved_config(tmp_path, monkeypatch):
    """The first fit runs as a user runs it (the console script, its own process); the saved config.yaml is then
    fitted again by the same CLI code in this process (a second fresh process would only add its imports)."""
    config = write(
        tmp_path / "recipe.yaml",
        recipe(tmp_path, lr_scheduler={"class_path": "StepLR", "init_args": {"step_size": 1}}),
    )
    first = run_cli("fit", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "test_acc" in first.stdout  # fit runs the test split afterwards
    saved = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    assert saved.is_file()
    saved_config = yaml.safe_load(saved.read_text())
    assert saved_config["model"]["init_args"]["optimizer"] == "nesterov"
    assert saved_config["model"]["init_args"]["model"]["class_path"] == "lightning_optim.models.ConvNet3"
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()

    monkeypatch.chdir(tmp_path)
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by the recipe's seed_everything; restored after
        monkeypatch.delenv(name, raising=False)
    second = quiet_main(["fit", "--config", str(saved)])  # Lightning's own saved configs often fail here
    assert second.trainer.state.finished
    assert (tmp_path / "lightning_logs" / "version_1" / "config.yaml").is_file()
    metrics = (tmp_path / "lightning_logs" / "version_1" / "metrics.csv").read_text()
    assert "train_loss" in metrics and "test_acc" in metrics
    # same seed, same recipe: the same test metrics as the first run
    first_rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert first_rows[-1] == metrics.splitlines()[-1]


def quiet_main(args: list[str], run: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cli(args, run=run)


def test_print_config_reloads_and_is_stable(tmp_path, capsys):
    config = write(tmp_path / "recipe.yaml", recipe(tmp_path, l1=1e-5, label_smoothing=0.1))
    with pytest.raises(SystemExit) as info:
        quiet_main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lightning_optim.ClassificationModule" in printed
    reloaded = write(tmp_path / "printed.yaml", yaml.safe_load(printed))
    with pytest.raises(SystemExit):
        quiet_main(["fit", "--config", str(reloaded), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(printed)
    # and it trains
    cli = quiet_main(["fit", "--config", str(reloaded), "--test_after_fit", "false"])
    assert cli.trainer.state.finished and cli.model.l1 == 1e-5 and cli.model.label_smoothing == 0.1
    assert "test_acc" not in cli.trainer.callback_metrics  # --test_after_fit false


def test_short_class_names_and_num_classes_link(tmp_path):
    cli = quiet_main(["--config", str(write(tmp_path / "r.yaml", recipe(tmp_path)))], run=False)
    assert type(cli.model).__name__ == "ClassificationModule"
    assert type(cli.model.model).__name__ == "ConvNet3"
    assert cli.model.num_classes == cli.datamodule.num_classes == 10
    assert type(cli.model.configure_optimizers()).__name__ == "SGD"


def test_num_classes_mismatch_between_data_and_model_is_an_error(tmp_path):
    config = recipe(tmp_path)
    config["model"]["init_args"]["model"]["init_args"]["num_classes"] = 5
    with pytest.raises(ValueError, match=r"`num_classes`=10 .*model outputs 5"):
        quiet_main(["--config", str(write(tmp_path / "r.yaml", config))], run=False)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands(tmp_path, subcommand):
    cli = quiet_main([subcommand, "--config", str(write(tmp_path / "r.yaml", recipe(tmp_path)))])
    assert cli.trainer.state.finished
    if subcommand != "predict":
        assert f"{'val' if subcommand == 'validate' else 'test'}_acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize("example", ["digits_baseline.yaml", "mnist_baseline.yaml"])
def test_examples_parse_and_instantiate(example, mnist_dir, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # recipes use paths relative to the repository root
    cli = quiet_main(["--config", str(REPO_ROOT / "examples" / example)], run=False)
    assert cli.model.num_classes == 10 and cli.trainer.max_epochs >= 1


# ------------------------------------------------------------------------------------ default logger (issue 27)
def _without_logger(tmp_path: Path, **trainer) -> Path:
    config = recipe(tmp_path)
    del config["trainer"]["logger"]
    config["trainer"].update(trainer)
    return write(tmp_path / "r.yaml", config)


@pytest.fixture
def tensorboard_found(monkeypatch):
    """Pretend tensorboardX is installed: our check says so, and Lightning's TensorBoardLogger can be built
    (it imports the writer only when it first logs)."""
    import lightning.fabric.loggers.tensorboard as fabric_tb

    import lightning_optim.cli as cli_module

    monkeypatch.setattr(cli_module, "tensorboard_available", lambda: True)
    monkeypatch.setattr(fabric_tb, "_TENSORBOARDX_AVAILABLE", True)


@pytest.fixture
def tensorboard_missing(monkeypatch):
    import lightning_optim.cli as cli_module

    monkeypatch.setattr(cli_module, "tensorboard_available", lambda: False)


def test_default_logger_is_csv_without_tensorboard(tmp_path, tensorboard_missing):
    from lightning.pytorch.loggers import CSVLogger

    cli = quiet_main(["--config", str(_without_logger(tmp_path))], run=False)
    assert type(cli.trainer.logger) is CSVLogger and cli.trainer.logger.save_dir == str(tmp_path)


def test_default_logger_is_tensorboard_when_it_is_importable(tmp_path, tensorboard_found):
    from lightning.pytorch.loggers import TensorBoardLogger

    cli = quiet_main(["--config", str(_without_logger(tmp_path))], run=False)
    assert isinstance(cli.trainer.logger, TensorBoardLogger) and cli.trainer.logger.save_dir == str(tmp_path)
    # `logger: true` means the default too
    cli = quiet_main(["--config", str(_without_logger(tmp_path, logger=True))], run=False)
    assert isinstance(cli.trainer.logger, TensorBoardLogger) and cli.trainer.logger.save_dir == str(tmp_path)


def test_default_logger_saves_under_the_working_directory_without_default_root_dir(
    tmp_path, monkeypatch, tensorboard_missing
):
    config = recipe(tmp_path)
    del config["trainer"]["logger"], config["trainer"]["default_root_dir"]
    monkeypatch.chdir(tmp_path)
    cli = quiet_main(["--config", str(write(tmp_path / "r.yaml", config))], run=False)
    assert cli.trainer.logger.save_dir == os.getcwd()


def test_a_recipe_logger_wins(tmp_path, tensorboard_found):
    from lightning.pytorch.loggers import CSVLogger

    config = recipe(tmp_path)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "mine")
    cli = quiet_main(["--config", str(write(tmp_path / "r.yaml", config))], run=False)
    assert type(cli.trainer.logger) is CSVLogger and cli.trainer.logger.save_dir == str(tmp_path / "mine")
    cli = quiet_main(["--config", str(_without_logger(tmp_path, logger=False))], run=False)
    assert cli.trainer.logger is None


def test_tensorboard_check_looks_for_both_packages(monkeypatch):
    import importlib.util

    import lightning_optim.cli as cli_module

    assert cli_module.TENSORBOARD_MODULES == ("tensorboard", "tensorboardX")
    for present in (set(), {"tensorboard"}, {"tensorboardX"}):
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, p=present: object() if name in p else None
        )
        assert cli_module.tensorboard_available() is bool(present)


def test_fit_with_the_default_logger_shows_no_dependency_tips(tmp_path):
    from lightning_optim.cli import tensorboard_available

    result = run_cli("fit", "--config", str(_without_logger(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    shown = result.stdout + result.stderr
    for tip in ("Tip:", "litlogger", "litmodels", "LeafSpec"):
        assert tip not in shown, tip
    assert "test_acc" in shown  # the run itself still talks
    version = tmp_path / "lightning_logs" / "version_0"
    if tensorboard_available():
        assert list(version.glob("events.out.tfevents.*"))
    else:
        assert "train_loss" in (version / "metrics.csv").read_text()


# ------------------------------------------------------------------------------------ quiet first screen
def test_quiet_dependency_notices_drop_only_the_tips_and_only_while_the_command_runs():
    import logging

    import lightning_utilities.core.rank_zero as rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from lightning_optim.cli import quiet_dependency_notices

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    rank_zero.log.addHandler(handler)
    level = rank_zero.log.level
    rank_zero.log.setLevel(logging.INFO)
    tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger"
    try:
        with quiet_dependency_notices():
            rank_zero_info(tip)
            rank_zero_info("GPU available: False, used: False")
        rank_zero_info(tip)
    finally:
        rank_zero.log.removeHandler(handler)
        rank_zero.log.setLevel(level)
    assert seen == ["GPU available: False, used: False", tip]


def test_quiet_dependency_notices_keep_deprecations_of_the_formats_we_write():
    from lightning_optim.cli import quiet_dependency_notices

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_dependency_notices():
            for text in (
                "torch.jit.script is deprecated, use torch.export",
                "torch.onnx.export(..., dynamo=False) is deprecated",
                "torch.export.export_for_training is deprecated",
            ):
                warnings.warn(text, DeprecationWarning, stacklevel=1)
            warnings.warn_explicit(
                "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
                FutureWarning,
                "_pytree.py",
                21,
                module="lightning.pytorch.utilities._pytree",
            )
    assert [str(w.message).split(" ")[0] for w in caught] == [
        "torch.jit.script",
        "torch.onnx.export(...,",
        "torch.export.export_for_training",
    ]


# ----------------------------------------------------------------------------------------------- faults
class SignalAtStep(Callback):
    """Sends ``signal`` to its own process after training step ``step`` (a recipe callback of the tests)."""

    def __init__(self, step: int = -1, signal_name: str = "SIGTERM") -> None:
        self.step, self.signal_name = step, signal_name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def test_fit_adds_atomic_checkpoints_exact_resume_and_interrupts_unless_told(tmp_path):
    from lightning_optim.callbacks import ExactResume, InterruptCheckpoint
    from lightning_optim.plugins import AtomicCheckpointIO

    path = str(write(tmp_path / "r.yaml", recipe(tmp_path)))
    cli = quiet_main(["--config", path], run=False)
    callbacks = cli.trainer.callbacks
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(callbacks[0], ExactResume)  # first: it sets the random states back before the others
    assert sum(isinstance(c, InterruptCheckpoint) for c in callbacks) == 1
    cli = quiet_main(
        ["--config", path, "--exact_resume", "false", "--interrupt_checkpoint", "false"], run=False
    )
    assert not any(isinstance(c, (ExactResume, InterruptCheckpoint)) for c in cli.trainer.callbacks)
    config = recipe(tmp_path)
    config["trainer"]["callbacks"] = [
        {"class_path": "InterruptCheckpoint", "init_args": {"filename": "stop"}}
    ]
    cli = quiet_main(["--config", str(write(tmp_path / "own.yaml", config))], run=False)
    own = [c for c in cli.trainer.callbacks if isinstance(c, InterruptCheckpoint)]
    assert len(own) == 1 and own[0].filename == "stop"  # the recipe's own, not a second one


def test_ckpt_path_last_is_the_newest_last_checkpoint_of_any_version(tmp_path):
    from lightning_optim.cli import find_last_checkpoint

    config = recipe(tmp_path)
    config["trainer"]["enable_checkpointing"] = True  # Lightning's ModelCheckpoint, in the logger's version
    cli = quiet_main(["--config", str(write(tmp_path / "r.yaml", config))], run=False)
    assert find_last_checkpoint(cli.trainer) is None
    older = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    newer = tmp_path / "checkpoints" / "last.ckpt"  # InterruptCheckpoint's folder without a ModelCheckpoint
    for i, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=0.ckpt").write_bytes(b"x")
    assert find_last_checkpoint(cli.trainer) == str(newer)
    os.utime(older, (2_000_000, 2_000_000))
    assert find_last_checkpoint(cli.trainer) == str(older)


@pytest.mark.parametrize("make", ["fifo", "folder", "missing"])
def test_ckpt_path_that_is_not_a_checkpoint_file_is_refused_before_anything_runs(tmp_path, make):
    path = tmp_path / "x.ckpt"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "folder":
        path.mkdir()
    error = FileNotFoundError if make == "missing" else ValueError
    with pytest.raises(
        error, match="ckpt_path`"
    ):  # `ckpt_path` or `--ckpt_path` (the FIFO check before parsing)
        quiet_main(
            ["fit", "--config", str(write(tmp_path / "r.yaml", recipe(tmp_path))), "--ckpt_path", str(path)]
        )
    assert not (tmp_path / "lightning_logs").exists()  # refused before the trainer was made


def _final_weights(root: Path) -> dict:
    (final,) = sorted((root / "lightning_logs").glob("version_*/checkpoints/epoch=1-step=6.ckpt"))
    return torch.load(final, weights_only=True)["state_dict"]


def test_sigterm_during_fit_saves_exits_143_and_ckpt_path_last_continues_exactly(tmp_path, monkeypatch):
    def signal_recipe(root: Path, step: int) -> Path:
        config = recipe(root)
        config["trainer"].update(max_epochs=2, enable_checkpointing=True)
        network = config["model"]["init_args"]["model"]["init_args"]
        network["dropout"] = 0.5  # resumed bit for bit only with the random states restored
        config["trainer"]["callbacks"] = [
            {"class_path": "tests.test_cli.SignalAtStep", "init_args": {"step": step}}
        ]
        return write(root / "recipe.yaml", config)

    # the uninterrupted reference fit, in this process (the same CLI code; its weights are only compared): the
    # interrupted and the resumed fits below are the ones that run as a user's, each in its own process
    full = tmp_path / "full"
    full.mkdir()
    with monkeypatch.context() as patch:  # the working directory and the environment restored right after
        patch.chdir(full)
        for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by the recipe's seed_everything
            patch.delenv(name, raising=False)
        done = quiet_main(["fit", "--config", str(signal_recipe(full, -1)), "--test_after_fit", "false"])
    assert done.trainer.state.finished and done.trainer.global_step == 6

    run = tmp_path / "run"
    run.mkdir()
    config = signal_recipe(run, 2)
    stopped = run_cli("fit", "--config", str(config), "--test_after_fit", "false", cwd=run)
    assert stopped.returncode == 143, stopped.stderr[-4000:]  # 128 + SIGTERM, not Lightning's 0
    saved = run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == 2

    resumed = run_cli(
        "fit", "--config", str(config), "--ckpt_path", "last", "--test_after_fit", "false", cwd=run
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {saved}" in resumed.stdout + resumed.stderr  # found in version_0, run as version_1
    a, b = _final_weights(full), _final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
