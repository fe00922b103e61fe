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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


# ------------------------------------------------------------------------------------------- per-sample (v2)
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


# ------------------------------------------------------------------------------------------- batched
def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r, ((g - b) / safe) % 6.0, torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack(((5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0), 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 3:
        w = torch.tensor([0.2989, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def affine_grid(theta: Tensor, height: int, width: int, displacement: Tensor | None = None) -> Tensor:
    """``F.affine_grid(theta, (N, C, height, width), align_corners=False)`` by broadcasting.

    The same sampling grid, computed as ``(N, 2, H, W)`` with three element-wise operations and returned as
    an ``(N, H, W, 2)`` view (``grid_sample`` accepts it as is): several times faster on CPU than the
    batched matrix product of ``F.affine_grid`` for small images.

    ``displacement`` (``(N, 2, H, W)``, grid units) moves each output coordinate before ``theta`` maps it:
    an elastic distortion applied *after* the affine warp, in one sampling.
    """
    n = theta.shape[0]
    xs = ((torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1).view(1, 1, width)
    ys = ((torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1).view(
        1, height, 1
    )
    if displacement is not None:
        xs, ys = xs + displacement[:, 0], ys + displacement[:, 1]
    t = theta.view(n, 2, 3, 1, 1)
    grid = t[:, :, 0] * xs.unsqueeze(1) + t[:, :, 1] * ys.unsqueeze(1) + t[:, :, 2]
    return grid.permute(0, 2, 3, 1)


def gaussian_kernel1d(sigma: float) -> Tensor:
    """torchvision's Gaussian of ``gaussian_blur`` for ``sigma``: ``int(8 * sigma + 1)`` taps (made odd), sum 1."""
    size = int(8 * sigma + 1)
    size += 1 - size % 2
    t = torch.linspace(-(size // 2), size // 2, size, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur_matrix(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(size, size)`` matrix ``B`` with ``B @ v`` = ``v`` blurred by :func:`gaussian_kernel1d` with reflect padding.

    A kernel wider than ``2 * size - 1`` taps is truncated (and renormalized), as reflect padding needs a
    padding smaller than the size. Blurring fields as ``B_h @ d @ B_w.T`` is a batched matrix product: on the
    CPU many times faster than a long-kernel ``conv2d``.
    """
    k = gaussian_kernel1d(sigma)
    r = len(k) // 2
    pad = min(r, size - 1)
    taps = k[r - pad : r + pad + 1]
    taps = taps / taps.sum()
    src = torch.arange(size).view(-1, 1) + torch.arange(-pad, pad + 1).view(1, -1)  # (size, taps)
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)  # reflect (edge pixel not repeated)
    blur = torch.zeros(size, size, dtype=torch.float64)
    blur.scatter_add_(1, src, taps.expand(size, -1).contiguous())
    return blur.to(dtype)


def elastic_displacement(
    n: int, height: int, width: int, alpha: float, sigma: float, generator: torch.Generator | None = None
) -> Tensor:
    """Random elastic displacement fields ``(n, 2, height, width)`` in grid units, one per sample.

    Uniform noise in ``[-1, 1]`` per pixel and direction, smoothed by a Gaussian of std ``sigma`` pixels
    (reflect padding) and scaled by ``alpha / size``, the recipe of ``torchvision``'s ``ElasticTransform``
    (which draws one field per call).
    """
    d = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    if sigma > 0:
        d = gaussian_blur_matrix(height, sigma) @ d @ gaussian_blur_matrix(width, sigma).T
    scale = torch.tensor([alpha / width, alpha / height], dtype=d.dtype).view(1, 2, 1, 1)
    return d * scale


def invert_affine(m: Tensor) -> Tensor:
    """Inverse of a batch of 3x3 affine matrices ``[[A, t], [0, 1]]`` in closed form (``[[A^-1, -A^-1 t], [0, 1]]``)."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - b * c
    inv = torch.zeros_like(m)
    inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = d / det, -b / det, -c / det, a / det
    inv[:, :2, 2] = -(inv[:, :2, :2] @ m[:, :2, 2:]).squeeze(-1)
    inv[:, 2, 2] = 1.0
    return inv


class BatchAugmentation(nn.Module):
    """Augment a float batch ``(N, C, H, W)`` in one go, each sample with its own random parameters.

    Geometric steps that follow each other are composed into one ``2x3`` matrix per sample (in pixel
    coordinates centred on the image) and applied with one ``affine_grid``/``grid_sample``; integer
    translations and flips are pixel-exact. An ``elastic`` step (Simard et al. 2003) draws a smoothed random
    displacement field per sample and adds it to the sampling grid of the geometric steps before it, so
    they still take one ``grid_sample``; it ends its group. ``color_jitter`` scales brightness, contrast and saturation
    and rotates hue with per-sample factors (in that fixed order; values are clamped to ``[0, 1]``, so
    inputs are expected in ``[0, 1]``). Areas moved in from outside the image are filled with 0.

    Args:
        spec: a preset name or a list of steps (see :func:`parse_augmentation`).
        seed: seed of the CPU ``torch.Generator`` that draws every random parameter.
        interpolation: ``"bilinear"`` or ``"nearest"``.

    Raises:
        ValueError: see :func:`parse_augmentation`; an unknown ``interpolation``.

    Example::

        aug = BatchAugmentation([{"name": "crop", "padding": 2}, {"name": "flip"}], seed=0)
        x = aug(torch.rand(256, 1, 28, 28))           # training: random, per sample
        x_eval = aug(torch.rand(8, 1, 28, 28), train=False)  # evaluation: only size-changing steps
    """

    def __init__(self, spec: Any = "standard", seed: int = 0, interpolation: str = "bilinear") -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unknown `interpolation` {interpolation!r}; allowed: {list(INTERPOLATIONS)}.")
        self.steps = parse_augmentation(spec)
        self.interpolation = interpolation
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self.seed = seed
        self.generator.manual_seed(seed)

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` of the output for inputs of ``input_size``."""
        return augmented_size(self.steps, input_size)

    # -------------------------------------------------------------------------------- random draws
    def _uniform(self, n: int, lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) * (hi - lo) + lo

    def _bernoulli(self, n: int, p: float) -> Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) < p

    def _randint(self, n: int, high_inclusive: Tensor | int) -> Tensor:
        return torch.floor(
            torch.rand(n, generator=self.generator, dtype=torch.float64) * (high_inclusive + 1)
        )

    # -------------------------------------------------------------------------------- geometry
    def _step_matrix(
        self, step: dict[str, Any], n: int, size: tuple[int, int], train: bool
    ) -> tuple[Tensor, tuple[int, int]]:
        """``(M, out_size)``: per-sample 3x3 maps from output to input pixel coordinates (centred)."""
        h, w = size
        m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        name = step["name"]
        out = step.get("size") or size
        oh, ow = out
        if not train and name in ("rotation", "flip", "vertical_flip", "affine"):
            return m, size  # random steps that keep the size do nothing at evaluation time
        if name == "resize" or (name == "random_resized_crop" and not train):
            m[:, 0, 0], m[:, 1, 1] = w / ow, h / oh
        elif name == "center_crop" or (name == "crop" and not train):
            pass  # centred: output centre is input centre, same pixel scale
        elif name == "crop":
            pad = int(step["padding"])
            top = (
                self._randint(n, h + 2 * pad - oh)
                if h + 2 * pad >= oh
                else torch.zeros(n, dtype=torch.float64)
            )
            left = (
                self._randint(n, w + 2 * pad - ow)
                if w + 2 * pad >= ow
                else torch.zeros(n, dtype=torch.float64)
            )
            m[:, 1, 2] = top - pad + oh / 2 - h / 2
            m[:, 0, 2] = left - pad + ow / 2 - w / 2
        elif name == "random_resized_crop":
            area = h * w * self._uniform(n, *step["scale"])
            log_ratio = self._uniform(n, math.log(step["ratio"][0]), math.log(step["ratio"][1]))
            ratio = torch.exp(log_ratio)
            cw = torch.sqrt(area * ratio).clamp(1.0, w)
            ch = torch.sqrt(area / ratio).clamp(1.0, h)
            cx = (self._uniform(n, 0.0, 1.0) - 0.5) * (w - cw)
            cy = (self._uniform(n, 0.0, 1.0) - 0.5) * (h - ch)
            m[:, 0, 0], m[:, 1, 1], m[:, 0, 2], m[:, 1, 2] = cw / ow, ch / oh, cx, cy
        elif name == "flip":
            m[:, 0, 0] = torch.where(self._bernoulli(n, float(step["p"])), -1.0, 1.0)
        elif name == "vertical_flip":
            m[:, 1, 1] = torch.where(self._bernoulli(n, float(step["p"])), -1.0, 1.0)
        elif name == "rotation":
            angle = torch.deg2rad(self._uniform(n, *_symmetric(step["degrees"], "degrees", name)))
            cos, sin = torch.cos(angle), torch.sin(angle)
            m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
        elif name == "affine":
            m = self._affine_inverse(step, n, h, w)
        return m, (oh, ow)

    def _affine_inverse(self, step: dict[str, Any], n: int, h: int, w: int) -> Tensor:
        angle = torch.deg2rad(self._uniform(n, *_symmetric(step["degrees"], "degrees", "affine")))
        tx = ty = torch.zeros(n, dtype=torch.float64)
        if step["translate"] is not None:
            fx, fy = _pair(step["translate"], "translate", "affine")
            tx = torch.round(self._uniform(n, -fx * w, fx * w))
            ty = torch.round(self._uniform(n, -fy * h, fy * h))
        scale = (
            self._uniform(n, *_pair(step["scale"], "scale", "affine")) if step["scale"] is not None else None
        )
        shx = shy = torch.zeros(n, dtype=torch.float64)
        shear = step["shear"]
        if shear is not None:
            if isinstance(shear, (int, float)):
                shx = self._uniform(n, -float(shear), float(shear))
            else:
                shx = self._uniform(n, float(shear[0]), float(shear[1]))
                if len(shear) == 4:
                    shy = self._uniform(n, float(shear[2]), float(shear[3]))
        # torchvision's rotation-scale-shear matrix (``_get_inverse_affine_matrix``), forward direction
        sx, sy = torch.deg2rad(shx), torch.deg2rad(shy)
        cos_sy = torch.cos(sy)
        a = torch.cos(angle - sy) / cos_sy
        b = -torch.cos(angle - sy) * torch.tan(sx) / cos_sy - torch.sin(angle)
        c = torch.sin(angle - sy) / cos_sy
        d = -torch.sin(angle - sy) * torch.tan(sx) / cos_sy + torch.cos(angle)
        linear = torch.stack((torch.stack((a, b), -1), torch.stack((c, d), -1)), -2)
        if scale is not None:
            linear = linear * scale.view(n, 1, 1)
        forward = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        forward[:, :2, :2] = linear
        forward[:, 0, 2], forward[:, 1, 2] = tx, ty
        return invert_affine(forward)

    def _warp(self, x: Tensor, steps: list[dict[str, Any]], train: bool) -> Tensor:
        n, _, h, w = x.shape
        size = (h, w)
        elastic = steps[-1] if steps[-1]["name"] == "elastic" else None  # only ever last (see forward)
        steps = steps[:-1] if elastic is not None else steps
        if not train:
            elastic = None
        if train and elastic is None and all(s["name"] in ("flip", "vertical_flip") for s in steps):
            for s in steps:  # pure flips: exact and cheaper than a warp
                mask = self._bernoulli(n, float(s["p"])).to(x.device).view(n, 1, 1, 1)
                x = torch.where(mask, x.flip(-1 if s["name"] == "flip" else -2), x)
            return x
        total = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        for step in steps:
            m, size = self._step_matrix(step, n, size, train)
            total = total @ m
        oh, ow = size
        identity = torch.eye(3, dtype=torch.float64)
        if elastic is None and (oh, ow) == (h, w) and torch.equal(total, identity.expand_as(total)):
            return x
        s_out = torch.diag(torch.tensor([ow / 2.0, oh / 2.0, 1.0], dtype=torch.float64))
        s_in_inv = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], dtype=torch.float64))
        theta = (s_in_inv @ total @ s_out)[:, :2, :].to(device=x.device, dtype=x.dtype)
        displacement = None
        if elastic is not None:  # displaces the output coordinates, then the affine maps them
            displacement = elastic_displacement(
                n, oh, ow, float(elastic["alpha"]), float(elastic["sigma"]), self.generator
            ).to(device=x.device, dtype=x.dtype)
        grid = affine_grid(theta, oh, ow, displacement)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)

    # -------------------------------------------------------------------------------- colour
    def _factors(self, value: Any, n: int, option: str, centre: float) -> Tensor | None:
        if value is None or (isinstance(value, (int, float)) and value == 0):
            return None
        if isinstance(value, (int, float)):
            lo, hi = (max(0.0, centre - value), centre + value) if centre else (-value, value)
        else:
            lo, hi = _pair(value, option, "color_jitter")
        return self._uniform(n, lo, hi)

    def _jitter(self, x: Tensor, step: dict[str, Any]) -> Tensor:
        n = x.shape[0]

        def col(t: Tensor) -> Tensor:
            return t.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)

        brightness = self._factors(step["brightness"], n, "brightness", 1.0)
        contrast = self._factors(step["contrast"], n, "contrast", 1.0)
        saturation = self._factors(step["saturation"], n, "saturation", 1.0)
        hue = self._factors(step["hue"], n, "hue", 0.0)
        if brightness is not None:
            x = (x * col(brightness)).clamp(0.0, 1.0)
        if contrast is not None:
            mean = _gray(x).mean((1, 2, 3), keepdim=True)
            x = ((x - mean) * col(contrast) + mean).clamp(0.0, 1.0)
        if saturation is not None and x.shape[1] == 3:
            gray = _gray(x)
            x = ((x - gray) * col(saturation) + gray).clamp(0.0, 1.0)
        if hue is not None and x.shape[1] == 3:
            hsv = _rgb_to_hsv(x)
            hsv = torch.cat(((hsv[:, :1] + col(hue)) % 1.0, hsv[:, 1:]), 1)
            x = _hsv_to_rgb(hsv).clamp(0.0, 1.0)
        return x

    # -------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(self, x: Tensor, train: bool = True) -> Tensor:
        """Augment ``x`` (float ``(N, C, H, W)``); ``train=False`` applies only the size-changing steps.

        Raises:
            ValueError: ``x`` is not a 4-D floating-point tensor.
        """
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"BatchAugmentation expects a float (N, C, H, W) batch, got {x.dtype} {tuple(x.shape)}."
            )
        if x.shape[0] == 0:
            return x
        group: list[dict[str, Any]] = []
        for step in self.steps:
            if step["name"] in GEOMETRIC_STEPS:
                group.append(step)
                # elastic ends its group: its field is applied after the geometric steps before it
                if step["name"] == "elastic":
                    x, group = self._warp(x, group, train), []
                continue
            if group:
                x, group = self._warp(x, group, train), []
            if train:
                x = self._jitter(x, step)
        if group:
            x = self._warp(x, group, train)
        return x

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The generator state (so that a resumed run draws the same parameters)."""
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        self.seed = int(state_dict.get("seed", self.seed))
        if "generator_state" in state_dict:
            self.generator.set_state(state_dict["generator_state"])

    def __getstate__(self) -> dict[str, Any]:
        # the generator travels as plain bytes: torch.multiprocessing (ddp_spawn, DataLoader workers) would
        # otherwise move its state through shared memory, which fails for generators on some systems
        state = self.__dict__.copy()
        state["generator"] = bytes(self.generator.get_state().numpy().tobytes())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        raw = state.pop("generator")
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))

    def extra_repr(self) -> str:
        return f"steps={self.steps}, seed={self.seed}, interpolation={self.interpolation!r}"


def build_batch_augmentation(
    spec: Any, seed: int = 0, interpolation: str = "bilinear"
) -> BatchAugmentation | None:
    """A :class:`BatchAugmentation` for ``spec``, or ``None`` for ``"none"``, ``None`` or an empty list.

    Raises:
        ValueError: see :func:`parse_augmentation`.
    """
    steps = parse_augmentation(spec)
    if not steps:
        return None
    return BatchAugmentation(steps, seed=seed, interpolation=interpolation)
