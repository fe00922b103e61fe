"""Optimizers by short name or class path, for recipes that prefer ``optimizer: sgd`` to ``init_args``.

A YAML recipe can name an optimizer three ways:

```yaml
optimizer: nesterov                      # a short name from OPTIMIZERS (with its default arguments)
optimizer: torch.optim.RMSprop           # a class path (or a bare torch.optim class name: RMSprop)
optimizer:                               # LightningCLI's OptimizerCallable, any arguments
  class_path: torch.optim.SGD
  init_args: {lr: 0.1, momentum: 0.9, nesterov: true}
```
"""

from __future__ import annotations

import importlib
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


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"Unknown `optimizer` {name!r}; allowed names: {sorted(OPTIMIZERS)}, or the class path of a "
        "torch.optim.Optimizer subclass (for example 'torch.optim.SGD')."
    )


def resolve_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for a class path (``"torch.optim.SGD"``) or a ``torch.optim`` class name.

    Raises:
        ValueError: if ``name`` does not resolve to a ``torch.optim.Optimizer`` subclass.
    """
    module_name, _, attr = name.rpartition(".")
    try:
        obj = (
            getattr(importlib.import_module(module_name), attr) if module_name else getattr(torch.optim, attr)
        )
    except (ImportError, AttributeError, ValueError):
        raise _unknown(name) from None
    if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)) or obj is torch.optim.Optimizer:
        raise _unknown(name)
    return obj


def optimizer_factory(name: str) -> Callable[[Iterable], torch.optim.Optimizer]:
    """Return a callable ``params -> optimizer`` for a short name or a class path.

    Short names (case-insensitive) come with the defaults in :data:`OPTIMIZERS`; a class path or bare
    ``torch.optim`` class name uses the class's own defaults.

    Raises:
        ValueError: if ``name`` is neither one of :data:`OPTIMIZERS` nor an optimizer class path.

    Example::

        opt = optimizer_factory("nesterov")(model.parameters())  # SGD(lr=0.01, momentum=0.9, nesterov=True)
    """
    if not isinstance(name, str) or not name:
        raise _unknown(str(name))
    key = name.lower()
    if key in OPTIMIZERS:
        cls, kwargs = OPTIMIZERS[key]
        return partial(cls, **kwargs)
    return resolve_optimizer_class(name)
