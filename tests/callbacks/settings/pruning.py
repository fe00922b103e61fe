"""Settings of the pruning callbacks for the generated callback tests (see tests/callbacks/callback_settings.py)."""

SETTINGS = {
    "ProgressivePruning": {
        # ramp over the first epoch (6 steps with limit_train_batches=6), fine-tuning in the second
        "kwargs": {
            "final_sparsity": 0.75,
            "start": 0,
            "end": 4,
            "unit": "step",
            "frequency": 2,
            "verbose": False,
        },
        "model": "lenet300100",
    },
}
