def _check_active(trainer, module, callback) -> None:
    assert callback.checks == trainer.global_step  # the loss of every training step was checked


SETTINGS = {
    "NonFiniteGuard": {
        "kwargs": {"check_weights_every_n_steps": 1},
        "model": "lenet300100",
        "check_active": _check_active,
    },
}
