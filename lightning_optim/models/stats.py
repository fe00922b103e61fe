"""Parameter counts of zoo models: the same functions as :mod:`lightning_optim.compression.measure`."""

from __future__ import annotations

from lightning_optim.compression.measure import count_nonzero as count_nonzero_parameters
from lightning_optim.compression.measure import count_parameters

__all__ = ["count_nonzero_parameters", "count_parameters"]
