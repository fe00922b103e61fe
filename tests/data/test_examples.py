"""The data recipes in examples/ parse and train from YAML (tiny runs), custom augmentation lists included."""

from __future__ import annotations

import pytest

from lightning_optim.cli import build_cli
from lightning_optim.data import ImageClassificationDataModule, TextClassificationDataModule
from tests.conftest import REPO_ROOT

QUICK = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
]


@pytest.mark.parametrize(
    ("recipe", "data_cls"),
    [
        ("digits_augmented.yaml", ImageClassificationDataModule),
        ("text_classification.yaml", TextClassificationDataModule),
    ],
)
def test_example_recipe_fits(recipe, data_cls, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-optim"])
    monkeypatch.chdir(REPO_ROOT)  # recipes use paths relative to the repository root
    cli = build_cli(
        ["fit", "--config", f"examples/{recipe}", f"--trainer.default_root_dir={tmp_path}", *QUICK]
    )
    assert isinstance(cli.datamodule, data_cls)
    assert cli.trainer.global_step == 2
    if data_cls is ImageClassificationDataModule:
        steps = cli.datamodule.batch_augmentation.steps
        assert [s["name"] for s in steps] == ["crop", "affine"] and steps[1]["scale"] == [0.9, 1.1]
    else:
        assert cli.datamodule.num_classes == 2 and "film" not in cli.datamodule.vocab


def test_unknown_augmentation_name_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lightning-optim"])
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises((ValueError, SystemExit)) as info:
        build_cli(
            [
                "fit",
                "--config",
                "examples/digits_augmented.yaml",
                "--data.augmentation=[{name: blurr}]",
                *QUICK,
            ]
        )
    text = str(info.value) + capsys.readouterr().err
    assert "blurr" in text and "allowed" in text
