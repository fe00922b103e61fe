"""The per-sample path: a ``torchvision.transforms.v2`` pipeline applied to one image at a time (in DataLoader workers)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_optim.data.augmentation.specs import _symmetric, parse_augmentation


def build_sample_augmentation(
    spec: Any, input_size: tuple[int, int] | None = None, train: bool = True
) -> nn.Module | None:
    """A ``torchvision.transforms.v2.Compose`` for one image (CHW uint8 or float tensor) at a time.

    Args:
        spec: a preset name or a list of steps.
        input_size: ``(height, width)`` of the input images; needed by steps without ``size`` (``crop``,
            ``random_resized_crop``), which then keep the current size.
        train: ``False`` keeps only what evaluation needs to produce the same size: ``resize``,
            ``center_crop``, a centre crop for ``crop`` and a resize for ``random_resized_crop``.

    Returns:
        The composed transform, or ``None`` when nothing is left to do.

    Raises:
        ValueError: see :func:`parse_augmentation`; a size-less crop without ``input_size``.
    """
    from torchvision.transforms import v2

    steps = parse_augmentation(spec)
    ops: list[nn.Module] = []
    size = tuple(input_size) if input_size is not None else None
    bilinear = v2.InterpolationMode.BILINEAR
    for step in steps:
        name = step["name"]
        if name in ("crop", "center_crop", "random_resized_crop"):
            out = step["size"] or size
            if out is None:
                raise ValueError(f"Augmentation {name!r} without `size` needs the input size (`input_size`).")
        if name == "resize":
            ops.append(v2.Resize(list(step["size"]), interpolation=bilinear, antialias=True))
            size = step["size"]
        elif name == "center_crop":
            ops.append(v2.CenterCrop(list(out)))
            size = out
        elif name == "crop":
            if train:
                ops.append(v2.RandomCrop(list(out), padding=int(step["padding"]) or None))
            elif tuple(out) != size:
                ops.append(v2.CenterCrop(list(out)))
            size = out
        elif name == "random_resized_crop":
            if train:
                ops.append(
                    v2.RandomResizedCrop(
                        list(out), scale=step["scale"], ratio=step["ratio"], interpolation=bilinear
                    )
                )
            elif tuple(out) != size:
                ops.append(v2.Resize(list(out), interpolation=bilinear, antialias=True))
            size = out
        elif not train:
            continue
        elif name == "rotation":
            ops.append(
                v2.RandomRotation(_symmetric(step["degrees"], "degrees", name), interpolation=bilinear)
            )
        elif name == "flip":
            ops.append(v2.RandomHorizontalFlip(float(step["p"])))
        elif name == "vertical_flip":
            ops.append(v2.RandomVerticalFlip(float(step["p"])))
        elif name == "affine":
            ops.append(
                v2.RandomAffine(
                    _symmetric(step["degrees"], "degrees", name),
                    translate=step["translate"],
                    scale=step["scale"],
                    shear=step["shear"],
                    interpolation=bilinear,
                )
            )
        elif name == "elastic":
            ops.append(
                v2.ElasticTransform(
                    alpha=float(step["alpha"]), sigma=float(step["sigma"]), interpolation=bilinear
                )
            )
        elif name == "color_jitter":
            ops.append(
                v2.ColorJitter(
                    brightness=step["brightness"] or None,
                    contrast=step["contrast"] or None,
                    saturation=step["saturation"] or None,
                    hue=step["hue"] or None,
                )
            )
    return v2.Compose(ops) if ops else None
