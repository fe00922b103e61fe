"""Settings of the quantization callbacks for the generated callback tests (see tests/callbacks/callback_settings.py)."""

from lightning_optim.functional.quantization.pt2e import float_layers


def _qat_active(trainer, module, callback) -> None:
    assert callback.prepared and callback.started_epoch == 1
    assert callback.quantized_model is not None and callback.exported_path.is_file()


def _ptq_active(trainer, module, callback) -> None:
    assert callback.done and callback.calibrated_batches == 2
    assert callback.quantized_model is not None


def _ptq_mixed(trainer, module, callback) -> None:
    _ptq_active(trainer, module, callback)
    plan = callback.mixed_precision_plan
    assert plan is not None and plan.latency_ms == {}  # chosen by top-1 alone (no timing)
    assert callback.backend.exclude == plan.exclude
    graph = callback.quantized_model.graph_module
    assert set(float_layers(graph)) == set(plan.exclude), (float_layers(graph), plan.exclude)


def _stack(name, check):
    def active(trainer, module, callback) -> None:
        check(trainer, module, callback)
        assert callback.backend_name == name, callback.backend_choice

    return active


_QAT = {"start_epoch": 1, "freeze_bn_epoch": 1, "latency_batch_sizes": [], "verbose": False}
_PTQ = {"calibration_batches": 2, "latency_batch_sizes": [], "verbose": False}

SETTINGS = {
    # the default stack ("auto": PT2E for this model): float in epoch 0, fake-quantized in epoch 1 with BN
    # statistics frozen, int8 at fit end; no timing. Under FSDP2 the same setting: the network is prepared at setup
    # (before it is sharded) and kept float in epoch 0 (fake quantization off); the resume from the first epoch's
    # sharded checkpoint starts QAT at epoch 1 as the uninterrupted run does
    "QuantizationAwareTraining": {
        "kwargs": _QAT,
        "model": "convnet3",
        "check_active": _stack("pt2e", _qat_active),
    },
    "PostTrainingQuantization": {
        "kwargs": _PTQ,
        "model": "convnet3",
        "check_active": _stack("pt2e", _ptq_active),
    },
    # mixed precision: the float layers chosen by top-1 on the val batches (no timing: fast and deterministic)
    "PostTrainingQuantization[mixed_precision]": {
        "callback": "PostTrainingQuantization",
        "kwargs": {
            **_PTQ,
            "mixed_precision": True,
            "mixed_precision_latency": False,
            "max_accuracy_drop": 0.01,
        },
        "model": "convnet3",
        "check_active": _stack("pt2e", _ptq_mixed),
    },
    # the eager stack, chosen by name
    "QuantizationAwareTraining[eager]": {
        "callback": "QuantizationAwareTraining",
        "kwargs": {**_QAT, "backend": "eager"},
        "model": "convnet3",
        "check_active": _stack("eager", _qat_active),
    },
    "PostTrainingQuantization[eager]": {
        "callback": "PostTrainingQuantization",
        "kwargs": {**_PTQ, "backend": "eager"},
        "model": "convnet3",
        "check_active": _stack("eager", _ptq_active),
    },
}
