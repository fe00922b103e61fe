"""Settings of WeightSharing for the generated callback tests (see tests/callbacks/callback_settings.py).

Float in epoch 0, shared (3-bit codebooks, trained centroids) in epoch 1, the artifact written and loaded back at
fit end; the variant shares after a ProgressivePruning ramp that ends inside epoch 0, so that resume, DDP and
bf16 also cover the two together (zeros kept, no codebook entry for them).
"""

from __future__ import annotations

import torch


def _check_active(trainer, module, callback) -> None:
    from lightning_optim.functional.weight_sharing import load_shared_state_dict

    assert callback.clustered and callback.started_epoch == 1
    assert callback.phase_state(trainer) == "done"
    params = dict(module.model.named_parameters())
    assert set(callback.shared) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for name, shared in callback.shared.items():
        weight = params[name].detach()
        assert torch.unique(weight[weight != 0]).numel() <= 8, name
        assert torch.equal(weight, shared.values().to(weight.dtype)), name
    assert callback.exported_path is not None and callback.exported_path.is_file()
    stored = load_shared_state_dict(callback.exported_path)
    for key, value in module.model.state_dict().items():
        assert torch.equal(stored[key], value.cpu()), key
    assert callback.size_breakdown.total == callback.exported_path.stat().st_size


def _check_after_pruning(trainer, module, callback) -> None:
    _check_active(trainer, module, callback)
    for name, shared in callback.shared.items():
        kept = float(shared.mask.float().mean())
        assert abs(kept - 0.25) < 0.02, (
            name,
            kept,
        )  # the pruned zeros took no codebook entry and stayed zero


def _pruning():
    from lightning_optim.callbacks import ProgressivePruning

    return [ProgressivePruning(final_sparsity=0.75, start=0, end=4, unit="step", frequency=2, verbose=False)]


_KWARGS = {"bits": 3, "start_epoch": 1, "verbose": False}


def _check_budget(trainer, module, callback) -> None:
    _check_active(trainer, module, callback)
    assert callback.plan is not None and callback.plan.bits == callback.layer_bits
    assert set(callback.layer_bits.values()) <= {2, 3}
    assert callback.exported_path.stat().st_size <= 3200  # the whole file within the budget


_BUDGET = {
    "bits": 8,
    "size_budget_bytes": 3200,
    "bit_choices": [2, 3],
    "start_epoch": 1,
    "verbose": False,
}

SETTINGS = {
    "WeightSharing[budget]": {
        "callback": "WeightSharing",
        "kwargs": _BUDGET,
        "cli_kwargs": _BUDGET,
        "model": "lenet300100",
        "check_active": _check_budget,
    },
    "WeightSharing": {
        "kwargs": _KWARGS,
        "model": "lenet300100",
        "check_active": _check_active,
    },
    "WeightSharing[after pruning]": {
        "callback": "WeightSharing",
        "kwargs": {"bits": {"fc3": 2, "*": 3}, "start_after": "pruning", "verbose": False},
        "cli_kwargs": {"bits": {"fc3": 2, "*": 3}, "start_after": "pruning", "verbose": False},
        "companions": _pruning,
        "model": "lenet300100",
        "check_active": _check_after_pruning,
    },
}
