"""Checkpoints are loaded with ``weights_only=True``: a pickle payload is refused without running it."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs

REPO_ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs ``os.system``: what an attacker would put in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    pl.seed_everything(0)
    module = ClassificationModule(LeNet300100(in_features=64))
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=True)
    )
    trainer.fit(module, datamodule=ImageClassificationDataModule("digits"))
    path = tmp_path / "evil.ckpt"
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    ckpt["callbacks"]["evil"] = Payload(marker)
    torch.save(ckpt, path)
    return path, marker


def test_trainer_resume_refuses_pickle_payload(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    module = ClassificationModule(LeNet300100(in_features=64))
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path / "resume", max_epochs=2, limit_train_batches=2))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|Unsupported global"):
        trainer.fit(module, datamodule=ImageClassificationDataModule("digits"), ckpt_path=str(path))
    assert not marker.exists(), "the payload ran"


def test_load_from_checkpoint_refuses_pickle_payload(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|Unsupported global"):
        ClassificationModule.load_from_checkpoint(path, model=LeNet300100(in_features=64), weights_only=True)
    assert not marker.exists(), "the payload ran"


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == "torch":
                yield node


def test_every_torch_load_in_the_project_is_weights_only():
    offenders = []
    for folder in ("lightning_optim", "benchmarks", "examples"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for call in _torch_load_calls(tree):
                kw = {k.arg: k.value for k in call.keywords}
                value = kw.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{call.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"
