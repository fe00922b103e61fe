"""Settings of KnowledgeDistillation for the generated callback tests (see tests/callbacks/callback_settings.py).

The teacher is a randomly initialized, wider ConvNet3 (built after the test's ``seed_everything``, so it is
the same in every run and on every DDP rank); two feature pairs exercise both adapter kinds (1x1 conv and
linear), so resume, DDP and bf16 also cover the adapters and their optimizer state.
"""

from __future__ import annotations


def _kwargs() -> dict:
    from lightning_optim.models import ConvNet3

    return {
        "teacher": ConvNet3(image_size=8, channels=(16, 32, 64), hidden=64),
        "temperature": 4.0,
        "alpha": 0.7,
        "final_alpha": 0.9,
        "feature_pairs": {"features.block2": "features.block2", "classifier.fc1": "classifier.fc1"},
        "feature_weight": 0.5,
    }


def _check_active(trainer, module, callback) -> None:
    metrics = trainer.callback_metrics
    assert "train_loss_kd" in metrics and "train_loss_feature" in metrics, sorted(metrics)
    assert callback.stats["distilled_steps"] > 0
    assert len(callback.adapters) == 2
    assert not any(k.startswith("teacher") or "adapter" in k for k in module.state_dict())


SETTINGS = {
    "KnowledgeDistillation": {
        "kwargs": _kwargs,
        "cli_kwargs": {
            "teacher": {"class_path": "ConvNet3", "init_args": {"image_size": 8}},
            "temperature": 4.0,
            "alpha": 0.7,
            "feature_pairs": {"fc2": "classifier.fc1"},
        },
        "model": "convnet3",
        "check_active": _check_active,
    }
}
