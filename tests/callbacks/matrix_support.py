"""Builders shared by the generated callback tests and their DDP worker script."""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

import lightning_optim.callbacks as callbacks_pkg
from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import ConvNet3, LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.callbacks.callback_settings import CALLBACK_SETTINGS
from tests.conftest import quiet_trainer_kwargs

MODEL_BUILDERS = {
    "convnet3": lambda: ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32),
    "lenet300100": lambda: LeNet300100(in_features=64, hidden=(64, 32)),
}


def exported_callbacks() -> list[str]:
    """Names of every Callback class exported from ``lightning_optim.callbacks``."""
    names = []
    for name in getattr(callbacks_pkg, "__all__", []):
        obj = getattr(callbacks_pkg, name)
        if isinstance(obj, type) and issubclass(obj, Callback):
            names.append(name)
    return sorted(names)


def entry(name: str) -> dict[str, Any]:
    return CALLBACK_SETTINGS[name]


def callback_class(name: str) -> str:
    """The exported class an entry builds: ``"callback"`` for a variant entry (``"QuantizationAwareTraining[eager]"``),
    else the entry's name."""
    return entry(name).get("callback", name)


def callback_kwargs(name: str, sharded: bool = False) -> dict[str, Any]:
    """The entry's keyword arguments; with ``sharded``, updated with its ``"sharded_kwargs"`` (the setting the
    sharded modes use where the plain one is refused under FSDP2, e.g. QAT from the first epoch)."""
    kwargs = entry(name).get("kwargs", {})
    kwargs = dict(kwargs()) if callable(kwargs) else copy.deepcopy(kwargs)
    if sharded:
        kwargs.update(copy.deepcopy(entry(name).get("sharded_kwargs", {})))
    return kwargs


def make_callback(name: str, sharded: bool = False) -> Callback:
    return getattr(callbacks_pkg, callback_class(name))(**callback_kwargs(name, sharded=sharded))


def companions(name: str) -> list[Callback]:
    """Callbacks the entry needs beside it on the Trainer (``"companions"``: a function returning them)."""
    factory = entry(name).get("companions")
    return list(factory()) if factory is not None else []


def make_module(name: str, sharding: str | None = None) -> ClassificationModule:
    """The entry's network in a ClassificationModule (``sharding="fsdp2"``: sharded under ModelParallelStrategy)."""
    model = entry(name).get("model", "convnet3")
    net = MODEL_BUILDERS[model]() if isinstance(model, str) else model()
    return ClassificationModule(net, optimizer="adam", lr=1e-2, sharding=sharding)


def target_network(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ClassificationModule (``module.model``), else ``module``."""
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, torch.nn.Module) else module


def make_datamodule(name: str) -> ImageClassificationDataModule:
    kwargs = {"batch_size": 32, **entry(name).get("data", {})}
    return ImageClassificationDataModule("digits", **kwargs)


def trainer_kwargs(name: str, root: str, **overrides: Any) -> dict[str, Any]:
    kwargs = quiet_trainer_kwargs(
        root,
        max_epochs=2,
        limit_train_batches=6,
        limit_val_batches=2,
        limit_test_batches=2,
        deterministic=True,
    )
    kwargs.update(entry(name).get("trainer", {}))
    kwargs.update(overrides)
    return kwargs


def model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Float copy of every parameter and buffer (dequantized where quantized)."""
    out = {}
    for key, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            out[key] = (value.dequantize() if value.is_quantized else value).detach().clone().float().cpu()
    return out


def flatten_state(state: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists of a callback state into ``{path: leaf}`` for comparison."""
    flat: dict[str, Any] = {}
    if isinstance(state, dict):
        for k, v in state.items():
            flat.update(flatten_state(v, f"{prefix}{k}."))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            flat.update(flatten_state(v, f"{prefix}{i}."))
    else:
        flat[prefix.rstrip(".")] = state
    return flat


def assert_states_equal(a: Any, b: Any, atol: float = 1e-6, what: str = "state") -> None:
    fa, fb = flatten_state(a), flatten_state(b)
    assert fa.keys() == fb.keys(), f"{what}: keys differ: {sorted(set(fa) ^ set(fb))[:10]}"
    for key in fa:
        va, vb = fa[key], fb[key]
        if isinstance(va, torch.Tensor):
            assert isinstance(vb, torch.Tensor), f"{what}[{key}] type differs"
            assert va.shape == vb.shape, f"{what}[{key}] shape {va.shape} != {vb.shape}"
            if va.is_floating_point() or vb.is_floating_point():
                diff = (va.float() - vb.float()).abs().max().item() if va.numel() else 0.0
                assert diff <= atol, f"{what}[{key}] differs by {diff}"
            else:
                assert torch.equal(va, vb), f"{what}[{key}] differs"
        elif isinstance(va, float) and isinstance(vb, float):
            assert abs(va - vb) <= atol * max(1.0, abs(va)), f"{what}[{key}]: {va} != {vb}"
        else:
            assert va == vb, f"{what}[{key}]: {va!r} != {vb!r}"
