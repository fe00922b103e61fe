"""Augmentation specs: the step table, aliases, presets, and the parsing that validates a spec and fills defaults.

A *spec* is a preset name (:data:`AUGMENTATION_PRESETS`) or a list of steps, each a dict with a ``name``
and its options, as written in YAML::

    augmentation:
      - {name: rotation, degrees: 10}
      - {name: crop, padding: 2}
      - {name: flip, p: 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: step name -> {option: default}; ``None`` means "the current image size" for ``size`` options
AUGMENTATION_STEPS: dict[str, dict[str, Any]] = {
    "rotation": {"degrees": 15.0},
    "resize": {"size": None},
    "crop": {"size": None, "padding": 0},
    "center_crop": {"size": None},
    "random_resized_crop": {"size": None, "scale": (0.08, 1.0), "ratio": (3.0 / 4.0, 4.0 / 3.0)},
    "flip": {"p": 0.5},
    "vertical_flip": {"p": 0.5},
    "color_jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    "affine": {"degrees": 0.0, "translate": None, "scale": None, "shear": None},
    # Simard et al. (2003): a random displacement field, smoothed by a Gaussian of std ``sigma`` pixels and
    # scaled by ``alpha`` (``torchvision.transforms.v2.ElasticTransform``'s meaning: ``alpha / size`` in
    # grid units, i.e. ``alpha / 2`` pixels for a unit value of the smoothed noise)
    "elastic": {"alpha": 50.0, "sigma": 5.0},
}
#: other spellings accepted for step names
STEP_ALIASES: dict[str, str] = {
    "random_rotation": "rotation",
    "random_crop": "crop",
    "horizontal_flip": "flip",
    "random_horizontal_flip": "flip",
    "random_vertical_flip": "vertical_flip",
    "colour_jitter": "color_jitter",
    "random_affine": "affine",
    "elastic_transform": "elastic",
}
#: steps whose output is independent of the random generator (kept at evaluation time)
DETERMINISTIC_STEPS = ("resize", "center_crop")
#: steps that move pixels (composed into one affine warp in the batched path)
GEOMETRIC_STEPS = (
    "rotation",
    "resize",
    "crop",
    "center_crop",
    "random_resized_crop",
    "flip",
    "vertical_flip",
    "affine",
    "elastic",
)

#: preset name -> list of steps. Flips are left out of the presets because they change the meaning of
#: digits and letters; add ``{name: flip}`` for natural images.
AUGMENTATION_PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "light": [{"name": "affine", "translate": [0.1, 0.1]}],
    "standard": [{"name": "affine", "degrees": 10.0, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}],
    "strong": [
        {"name": "random_resized_crop", "scale": [0.7, 1.0], "ratio": [0.9, 1.1]},
        {"name": "affine", "degrees": 15.0, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "shear": 10.0},
        {"name": "color_jitter", "brightness": 0.3, "contrast": 0.3},
    ],
}
INTERPOLATIONS = ("bilinear", "nearest")


# ------------------------------------------------------------------------------------------- spec parsing
def _pair(value: Any, option: str, step: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2:
        return float(value[0]), float(value[1])
    raise ValueError(f"Augmentation {step!r}: `{option}` must be a number or a pair, got {value!r}.")


def _size(value: Any, step: str) -> tuple[int, int] | None:
    if value is None:
        return None
    h, w = _pair(value, "size", step)
    if h < 1 or w < 1 or h != int(h) or w != int(w):
        raise ValueError(f"Augmentation {step!r}: `size` must be positive integers, got {value!r}.")
    return int(h), int(w)


def _symmetric(value: Any, option: str, step: str) -> tuple[float, float]:
    """``d`` -> ``(-d, d)``; a pair stays."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"Augmentation {step!r}: `{option}` must be >= 0, got {value}.")
        return -float(value), float(value)
    lo, hi = _pair(value, option, step)
    if lo > hi:
        raise ValueError(f"Augmentation {step!r}: `{option}` range {value!r} has min > max.")
    return lo, hi


def _check_step(step: dict[str, Any]) -> dict[str, Any]:
    """Validate one step and fill its defaults; returns ``{"name": canonical name, **options}``."""
    if isinstance(step, str):
        step = {"name": step}
    if not isinstance(step, dict) or "name" not in step:
        raise ValueError(f"An augmentation step must be a dict with a `name`, got {step!r}.")
    raw_name = str(step["name"]).lower()
    name = STEP_ALIASES.get(raw_name, raw_name)
    if name not in AUGMENTATION_STEPS:
        raise ValueError(
            f"Unknown augmentation name {step['name']!r}; allowed: {sorted(AUGMENTATION_STEPS)} "
            f"(aliases: {sorted(STEP_ALIASES)}), or a preset {list(AUGMENTATION_PRESETS)}."
        )
    defaults = AUGMENTATION_STEPS[name]
    options = {k: v for k, v in step.items() if k != "name"}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"Augmentation {name!r}: unknown option(s) {unknown}; allowed: {sorted(defaults)}.")
    out = {"name": name, **defaults, **options}
    if name == "resize" and out["size"] is None:
        raise ValueError("Augmentation 'resize' needs `size` (an int or [height, width]).")
    if "size" in out:
        out["size"] = _size(out["size"], name)
    if name in ("flip", "vertical_flip") and not 0.0 <= float(out["p"]) <= 1.0:
        raise ValueError(f"Augmentation {name!r}: `p` must be in [0, 1], got {out['p']}.")
    if name == "crop" and (int(out["padding"]) != out["padding"] or out["padding"] < 0):
        raise ValueError(f"Augmentation 'crop': `padding` must be an int >= 0, got {out['padding']!r}.")
    if name == "random_resized_crop":
        out["scale"], out["ratio"] = _pair(out["scale"], "scale", name), _pair(out["ratio"], "ratio", name)
        if not 0 < out["scale"][0] <= out["scale"][1] <= 1 or not 0 < out["ratio"][0] <= out["ratio"][1]:
            raise ValueError(
                f"Augmentation 'random_resized_crop': bad `scale` {out['scale']} or `ratio` {out['ratio']}."
            )
    if name in ("rotation", "affine"):
        _symmetric(out["degrees"], "degrees", name)
    if name == "affine":
        if out["translate"] is not None:
            tx, ty = _pair(out["translate"], "translate", name)
            if not (0 <= tx <= 1 and 0 <= ty <= 1):
                raise ValueError(
                    f"Augmentation 'affine': `translate` fractions must be in [0, 1], got {out['translate']}."
                )
        if out["scale"] is not None:
            lo, hi = _pair(out["scale"], "scale", name)
            if not 0 < lo <= hi:
                raise ValueError(
                    f"Augmentation 'affine': `scale` must be 0 < min <= max, got {out['scale']}."
                )
        if out["shear"] is not None and not isinstance(out["shear"], (int, float)):
            if len(out["shear"]) not in (2, 4):
                raise ValueError(
                    f"Augmentation 'affine': `shear` is a number, 2 or 4 numbers, got {out['shear']}."
                )
    if name == "elastic":
        for option in ("alpha", "sigma"):
            if not isinstance(out[option], (int, float)) or out[option] < 0:
                raise ValueError(
                    f"Augmentation 'elastic': `{option}` must be a number >= 0, got {out[option]!r}."
                )
    if name == "color_jitter":
        for option in ("brightness", "contrast", "saturation"):
            if isinstance(out[option], (int, float)) and out[option] < 0:
                raise ValueError(f"Augmentation 'color_jitter': `{option}` must be >= 0, got {out[option]}.")
        hue = out["hue"]
        if isinstance(hue, (int, float)) and not 0 <= hue <= 0.5:
            raise ValueError(f"Augmentation 'color_jitter': `hue` must be in [0, 0.5], got {hue}.")
    return out


def parse_augmentation(spec: str | Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Turn a preset name or a list of steps into validated steps (defaults filled in).

    Raises:
        ValueError: an unknown preset or step name (the message lists the allowed ones), an unknown
            option of a step, or an option out of range.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec not in AUGMENTATION_PRESETS:
            raise ValueError(
                f"Unknown `augmentation` preset {spec!r}; allowed presets: {list(AUGMENTATION_PRESETS)}, "
                f"or a list of steps named from {sorted(AUGMENTATION_STEPS)}."
            )
        spec = AUGMENTATION_PRESETS[spec]
    if isinstance(spec, dict):
        spec = [spec]
    return [_check_step(dict(s) if isinstance(s, dict) else s) for s in spec]


def augmented_size(spec: Any, input_size: tuple[int, int], train: bool = True) -> tuple[int, int]:
    """The ``(height, width)`` that ``spec`` produces from images of ``input_size`` (same in train and eval)."""
    size = tuple(input_size)
    for step in parse_augmentation(spec):
        if (
            step["name"] in ("resize", "crop", "center_crop", "random_resized_crop")
            and step["size"] is not None
        ):
            size = step["size"]
    return size  # type: ignore[return-value]
