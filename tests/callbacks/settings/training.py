"""Settings of the training-process callbacks (LR scheduling, early stopping) for the generated tests."""

from lightning_optim.functional.lr_scheduling.schedules import OneCycle


def _check_lr_scheduling(trainer, module, callback):
    # one-cycle over 12 steps ends far below the peak: the callback did set the LR
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert callback.total == 12 and lr < 1e-2 / 25, (callback.total, lr)


def _check_early_stopping(trainer, module, callback):
    assert callback.best_epoch is not None and callback.best_weights is not None


SETTINGS = {
    "LRScheduling": {
        "kwargs": lambda: {"schedule": OneCycle(pct_start=0.25), "interval": "step", "warmup": 0},
        "cli_kwargs": {
            "schedule": {"class_path": "OneCycle", "init_args": {"pct_start": 0.25}},
            "interval": "step",
        },
        "model": "convnet3",
        "check_active": _check_lr_scheduling,
    },
    "EarlyStopping": {
        "kwargs": {"monitor": "val_loss", "patience": 1, "min_delta": 0.0, "restore_best_weights": True},
        "model": "convnet3",
        "check_active": _check_early_stopping,
    },
}
