"""Settings of the quantization callbacks for the generated callback tests (see tests/callbacks/callback_settings.py)."""


def _qat_active(trainer, module, callback) -> None:
    assert callback.prepared and callback.started_epoch == 1
    assert callback.quantized_model is not None and callback.exported_path.is_file()


def _ptq_active(trainer, module, callback) -> None:
    assert callback.done and callback.calibrated_batches == 2
    assert callback.quantized_model is not None


SETTINGS = {
    "QuantizationAwareTraining": {
        # float in epoch 0, fake-quantized in epoch 1 with BN statistics frozen, int8 at fit end; no timing
        "kwargs": {"start_epoch": 1, "freeze_bn_epoch": 1, "latency_batch_sizes": [], "verbose": False},
        "model": "convnet3",
        "check_active": _qat_active,
    },
    "PostTrainingQuantization": {
        "kwargs": {"calibration_batches": 2, "latency_batch_sizes": [], "verbose": False},
        "model": "convnet3",
        "check_active": _ptq_active,
    },
}
