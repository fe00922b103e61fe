"""`python -m lightning_optim.demo` (make demo): trains on the embedded digits and prints test accuracy."""

from __future__ import annotations

import re

import pytest
import torch

from lightning_optim import demo


def test_demo_prints_test_accuracy_above_target(capsys):
    threads = torch.get_num_threads()
    result = demo.main(["--no-pipeline"])
    assert torch.get_num_threads() == threads  # restored after the run
    out = capsys.readouterr().out
    match = re.search(r"^test accuracy: (\d+\.\d+)%$", out, flags=re.MULTILINE)
    assert match, out
    printed = float(match.group(1)) / 100
    assert printed >= demo.TARGET_ACCURACY, out
    assert abs(printed - result.test_accuracy) < 1e-4
    assert "target      >= 95%: met" in out
    assert result.parameters == sum(p.numel() for p in demo.ConvNet3(image_size=8).parameters())
    assert result.train_samples + result.test_samples < 1797  # validation held out
    assert set(result.stages) == {"baseline"}


def test_demo_rejects_bad_epochs(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    assert "--epochs must be >= 1" in capsys.readouterr().err
