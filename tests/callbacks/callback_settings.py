"""One settings table of every exported callback (after Composer's algorithm_settings).

Each entry gives keyword arguments that make the callback *active* within a 2-epoch fit on the embedded
digits data (``tests/callbacks/test_callback_matrix.py`` generates fit, state_dict round-trip, pickling,
CLI instantiation, resume, DDP and bf16 tests from it). A callback exported from
``lightning_optim.callbacks`` without an entry here fails the suite.

Entries: ``"ClassName": {"kwargs": {...}, "model": "convnet3" | "lenet300100" | callable, "marks": [...]}``.
Each callback's own area adds its entry in ``tests/callbacks/settings/<area>.py`` as a module-level dict
``SETTINGS``; they are merged here.
"""

from __future__ import annotations

import importlib
import pkgutil

from tests.callbacks import settings as _settings_pkg

CALLBACK_SETTINGS: dict[str, dict] = {}
for _info in pkgutil.iter_modules(_settings_pkg.__path__):
    _mod = importlib.import_module(f"{_settings_pkg.__name__}.{_info.name}")
    for _name, _entry in getattr(_mod, "SETTINGS", {}).items():
        if _name in CALLBACK_SETTINGS:
            raise ValueError(f"Two settings entries for {_name}.")
        CALLBACK_SETTINGS[_name] = _entry
