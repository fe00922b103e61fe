"""Optimizers by short name, for YAML recipes that prefer ``optimizer: sgd`` to a class path."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch

#: name -> (optimizer class, default keyword arguments)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.01}),
    "momentum": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.001}),
    "adam": (torch.optim.Adam, {"lr": 0.001}),
    "adamw": (torch.optim.AdamW, {"lr": 0.001, "weight_decay": 0.01}),
}


def optimizer_factory(name: str) -> Callable[[Iterable], torch.optim.Optimizer]:
    """Return a callable ``params -> optimizer`` for a short name.

    Raises:
        ValueError: if ``name`` is not one of :data:`OPTIMIZERS`.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown `optimizer` {name!r}; allowed names: {sorted(OPTIMIZERS)} (or a class path).")
    cls, kwargs = OPTIMIZERS[key]
    return partial(cls, **kwargs)
