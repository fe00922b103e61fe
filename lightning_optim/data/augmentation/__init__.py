"""Augmentation: named presets or custom step lists, as per-sample ``torchvision.transforms.v2`` pipelines
or as one batched module that gives every sample of a batch its own random parameters.

A *spec* is a preset name (:data:`AUGMENTATION_PRESETS`) or a list of steps, each a dict with a ``name``
and its options, as written in YAML::

    augmentation:
      - {name: rotation, degrees: 10}
      - {name: crop, padding: 2}
      - {name: flip, p: 0.5}

Two ways to run the same spec:

* :func:`build_sample_augmentation` returns a ``torchvision.transforms.v2.Compose`` applied to one image at
  a time (in DataLoader workers): the usual torchvision path.
* :func:`build_batch_augmentation` returns a :class:`BatchAugmentation` that transforms a whole float batch
  ``(N, C, H, W)`` on its device (``on_after_batch_transfer``). Consecutive geometric steps (rotation,
  resize, crops, flips, affine) are composed into one affine matrix *per sample* and applied with a single
  ``affine_grid``/``grid_sample``; colour jitter draws per-sample factors. Note that a ``v2`` transform
  called on a 4-D batch draws *one* set of parameters for the whole batch; this module does not.

Random parameters come from a ``torch.Generator`` on the CPU (seeded, with its state in
:meth:`BatchAugmentation.state_dict`), so a run is reproducible on any device.

Where things live: the step table, presets and parsing in :mod:`~lightning_optim.data.augmentation.specs`,
the per-sample path in :mod:`~lightning_optim.data.augmentation.sample`, the batched module in
:mod:`~lightning_optim.data.augmentation.batch`, and the image kernels it calls (colour conversions,
affine grids, elastic fields) in :mod:`lightning_optim.functional.augmentation`.
"""

from lightning_optim.data.augmentation.batch import BatchAugmentation, build_batch_augmentation
from lightning_optim.data.augmentation.sample import build_sample_augmentation
from lightning_optim.data.augmentation.specs import (  # noqa: F401 (the private helpers: old imports)
    AUGMENTATION_PRESETS,
    AUGMENTATION_STEPS,
    DETERMINISTIC_STEPS,
    GEOMETRIC_STEPS,
    INTERPOLATIONS,
    STEP_ALIASES,
    _check_step,
    _pair,
    _size,
    _symmetric,
    augmented_size,
    parse_augmentation,
)

# the image kernels lived here before they moved to ``functional``; these names keep old imports working
from lightning_optim.functional.augmentation import (  # noqa: F401
    affine_grid,
    elastic_displacement,
    gaussian_blur_matrix,
    gaussian_kernel1d,
    invert_affine,
)
from lightning_optim.functional.augmentation import gray as _gray  # noqa: F401
from lightning_optim.functional.augmentation import hsv_to_rgb as _hsv_to_rgb  # noqa: F401
from lightning_optim.functional.augmentation import rgb_to_hsv as _rgb_to_hsv  # noqa: F401

__all__ = [
    "AUGMENTATION_PRESETS",
    "AUGMENTATION_STEPS",
    "DETERMINISTIC_STEPS",
    "GEOMETRIC_STEPS",
    "INTERPOLATIONS",
    "STEP_ALIASES",
    "BatchAugmentation",
    "augmented_size",
    "build_batch_augmentation",
    "build_sample_augmentation",
    "parse_augmentation",
]
