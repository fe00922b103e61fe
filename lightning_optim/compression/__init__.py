"""Compression: physical compaction of pruned models, measurements, quantization.

Import-light on purpose: the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CompactionError": "lightning_optim.compression.compaction",
    "channel_followers": "lightning_optim.compression.compaction",
    "compact_model": "lightning_optim.compression.compaction",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
