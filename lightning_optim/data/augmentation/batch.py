"""The batched path: one module that augments a whole float batch on its device, each sample with its own
random parameters (drawn here; the image kernels are :mod:`lightning_optim.functional.augmentation`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.data.augmentation.specs import (
    GEOMETRIC_STEPS,
    INTERPOLATIONS,
    _pair,
    _symmetric,
    augmented_size,
    parse_augmentation,
)
from lightning_optim.functional.augmentation import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    affine_grid,
    affine_matrix,
    elastic_displacement,
    invert_affine,
    pixel_to_grid_theta,
)


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
        check_choice("interpolation", interpolation, INTERPOLATIONS)
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
        angle = self._uniform(n, *_symmetric(step["degrees"], "degrees", "affine"))
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
        return invert_affine(affine_matrix(angle, tx, ty, scale, shx, shy))

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
        theta = pixel_to_grid_theta(total, (h, w), (oh, ow)).to(device=x.device, dtype=x.dtype)
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
            x = adjust_brightness(x, col(brightness))
        if contrast is not None:
            x = adjust_contrast(x, col(contrast))
        if saturation is not None and x.shape[1] == 3:
            x = adjust_saturation(x, col(saturation))
        if hue is not None and x.shape[1] == 3:
            x = adjust_hue(x, col(hue))
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
