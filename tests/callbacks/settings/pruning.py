"""Settings of the pruning callbacks for the generated callback tests (see tests/callbacks/callback_settings.py)."""


def _check_active(trainer, module, callback) -> None:
    # the ramp ended inside the run: every pruned layer holds exactly the target sparsity, and it stays
    assert callback.phase_state(trainer) == "done"
    assert abs(callback.current_sparsity - 0.75) < 1e-6
    for name, mask in callback.masks.items():
        kept = float(mask.float().mean())
        assert abs(kept - 0.25) < 0.02, (name, kept)


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
        "check_active": _check_active,
    },
}
