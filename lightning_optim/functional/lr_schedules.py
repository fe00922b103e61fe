"""Deprecated: moved to :mod:`lightning_optim.functional.lr_scheduling.formulas` (this path is removed in 0.3.0)."""

from lightning_optim._deprecation import moved

__getattr__ = moved(__name__, "lightning_optim.functional.lr_scheduling.formulas")
