"""Pure functions (no Lightning import): the math that callbacks and modules call."""

from lightning_optim.functional.distillation.losses import (
    distillation_loss,
    feature_distillation_loss,
    kd_loss,
)
from lightning_optim.functional.lr_scheduling.formulas import (
    PlateauState,
    constant_lr,
    cosine_lr,
    cyclic_lr,
    cyclic_momentum,
    exponential_lr,
    multistep_lr,
    one_cycle_lr,
    one_cycle_momentum,
    plateau_lr,
    plateau_update,
    polynomial_lr,
    step_lr,
    warmup_factor,
)
from lightning_optim.functional.pruning.masks import (
    apply_masks_,
    compute_masks,
    global_magnitude_masks,
    global_structured_masks,
    magnitude_mask,
    structured_mask,
)
from lightning_optim.functional.pruning.schedules import SPARSITY_SCHEDULES, scheduled_sparsity
from lightning_optim.functional.regularization import l1_penalty, weight_decay_param_groups
from lightning_optim.functional.weight_sharing import (
    centroid_gradient,
    cluster_weight,
    kmeans_1d,
    load_shared,
    save_shared,
    share_weights_,
    size_breakdown,
)

__all__ = [
    "distillation_loss",
    "feature_distillation_loss",
    "kd_loss",
    "SPARSITY_SCHEDULES",
    "apply_masks_",
    "compute_masks",
    "global_magnitude_masks",
    "global_structured_masks",
    "magnitude_mask",
    "scheduled_sparsity",
    "structured_mask",
    "PlateauState",
    "constant_lr",
    "cosine_lr",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "plateau_lr",
    "plateau_update",
    "polynomial_lr",
    "step_lr",
    "warmup_factor",
    "l1_penalty",
    "weight_decay_param_groups",
    "centroid_gradient",
    "cluster_weight",
    "kmeans_1d",
    "load_shared",
    "save_shared",
    "share_weights_",
    "size_breakdown",
]
