"""Settings of the recipe callbacks (WarmStart, CompressionPipeline) for the generated callback tests.

WarmStart loads a checkpoint written once per process with fixed weights (so every run and every DDP rank
starts from the same ones); CompressionPipeline traces a one-stage recipe, so a pruning ramp rides along
as its companion.
"""

from __future__ import annotations

import os
import tempfile

import torch

_CHECKPOINTS: dict[int, str] = {}


def _warm_start_kwargs() -> dict:
    from tests.callbacks.matrix_support import MODEL_BUILDERS

    path = _CHECKPOINTS.get(os.getpid())
    if path is None:
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            net = MODEL_BUILDERS["convnet3"]()
        path = os.path.join(tempfile.mkdtemp(prefix="warm_start_"), "start.ckpt")
        torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
        _CHECKPOINTS[os.getpid()] = path
    return {"checkpoint": path}


def _check_warm_start(trainer, module, callback) -> None:
    assert callback.loaded


def _pruning_companion() -> list:
    from lightning_optim.callbacks import ProgressivePruning

    return [ProgressivePruning(final_sparsity=0.5, start=0, end=1, verbose=False)]


def _check_pipeline(trainer, module, callback) -> None:
    states = [(h["phase"], h["state"]) for h in callback.handoffs]
    assert ("pruning", "done") in states, callback.handoffs


SETTINGS = {
    "WarmStart": {
        "kwargs": _warm_start_kwargs,
        "cli_kwargs": {"checkpoint": "teacher.ckpt"},
        "model": "convnet3",
        "check_active": _check_warm_start,
    },
    "CompressionPipeline": {
        "kwargs": {"order": ["pruning"], "distill": False, "distill_from": None},
        "companions": _pruning_companion,
        "model": "convnet3",
        "check_active": _check_pipeline,
    },
}
