"""Pure functions (no Lightning import): the math that callbacks and modules call."""

from lightning_optim.functional.regularization import l1_penalty, weight_decay_param_groups

__all__ = ["l1_penalty", "weight_decay_param_groups"]
