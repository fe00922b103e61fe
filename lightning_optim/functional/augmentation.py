"""Image kernels of the batched augmentation: pure torch functions over float batches ``(N, C, H, W)``.

:class:`lightning_optim.data.augmentation.BatchAugmentation` draws the random parameters (one set per
sample) and calls these kernels; here nothing is random except :func:`elastic_displacement`, which takes
its ``torch.Generator``.

- colour: :func:`rgb_to_hsv`, :func:`hsv_to_rgb`, :func:`gray` and the per-sample adjustments
  :func:`adjust_brightness`, :func:`adjust_contrast`, :func:`adjust_saturation`, :func:`adjust_hue`
  (torchvision's ``adjust_*`` formulas, with one factor per sample);
- geometry: :func:`affine_matrix` (torchvision's rotation-scale-shear matrix), :func:`invert_affine`,
  :func:`pixel_to_grid_theta` (pixel-space maps to ``grid_sample``'s ``theta``) and :func:`affine_grid`;
- elastic distortion: :func:`gaussian_kernel1d`, :func:`gaussian_blur_matrix`, :func:`elastic_displacement`.
"""

from __future__ import annotations

import torch
from torch import Tensor


# ------------------------------------------------------------------------------------------- colour
def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB ``(N, 3, H, W)`` in ``[0, 1]`` to HSV, each channel in ``[0, 1]`` (hue as a fraction of a turn).

    Args:
        x: an RGB batch.

    Returns:
        The HSV batch, same shape and dtype.
    """
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


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV ``(N, 3, H, W)`` (as :func:`rgb_to_hsv` gives) back to RGB.

    Args:
        x: an HSV batch.

    Returns:
        The RGB batch, same shape and dtype.
    """
    h, s, v = x.unbind(1)
    k = torch.stack(((5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0), 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def gray(x: Tensor) -> Tensor:
    """The gray level ``(N, 1, H, W)`` of a batch: ITU-R 601 luma for 3 channels, else the channel mean.

    Args:
        x: a batch ``(N, C, H, W)``.

    Returns:
        One channel, same dtype and device.
    """
    if x.shape[1] == 3:
        w = torch.tensor([0.2989, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``x * factor`` clamped to ``[0, 1]`` (torchvision's ``adjust_brightness``, one factor per sample).

    Args:
        x: a batch ``(N, C, H, W)`` in ``[0, 1]``.
        factor: ``(N, 1, 1, 1)`` (or anything that broadcasts), same device and dtype as ``x``.
    """
    return (x * factor).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Scale each image's distance from its mean gray level by ``factor``, clamped to ``[0, 1]``.

    Args:
        x: a batch ``(N, C, H, W)`` in ``[0, 1]``.
        factor: ``(N, 1, 1, 1)``, same device and dtype as ``x``.
    """
    mean = gray(x).mean((1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Scale each pixel's distance from its gray level by ``factor``, clamped to ``[0, 1]``.

    Args:
        x: an RGB batch ``(N, 3, H, W)`` in ``[0, 1]``.
        factor: ``(N, 1, 1, 1)``, same device and dtype as ``x``.
    """
    g = gray(x)
    return ((x - g) * factor + g).clamp(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (a fraction of a turn, in ``[-0.5, 0.5]``), clamped to ``[0, 1]``.

    Args:
        x: an RGB batch ``(N, 3, H, W)`` in ``[0, 1]``.
        shift: ``(N, 1, 1, 1)``, same device and dtype as ``x``.
    """
    hsv = rgb_to_hsv(x)
    hsv = torch.cat(((hsv[:, :1] + shift) % 1.0, hsv[:, 1:]), 1)
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------- geometry
def affine_matrix(
    angle: Tensor,
    translate_x: Tensor,
    translate_y: Tensor,
    scale: Tensor | None = None,
    shear_x: Tensor | None = None,
    shear_y: Tensor | None = None,
) -> Tensor:
    """Forward affine maps ``(N, 3, 3)`` in pixel coordinates centred on the image, as ``TF.affine`` builds them.

    The rotation-scale-shear matrix of torchvision's ``_get_inverse_affine_matrix`` (before inversion),
    followed by the translation.

    Args:
        angle: ``(N,)`` rotation in degrees.
        translate_x: ``(N,)`` horizontal shift in pixels.
        translate_y: ``(N,)`` vertical shift in pixels.
        scale: ``(N,)`` zoom factors, or ``None`` for 1.
        shear_x: ``(N,)`` shear along x in degrees, or ``None`` for 0.
        shear_y: ``(N,)`` shear along y in degrees, or ``None`` for 0.

    Returns:
        ``[[A, t], [0, 1]]`` per sample, in the dtype of ``angle``.
    """
    n = angle.shape[0]
    zeros = torch.zeros(n, dtype=angle.dtype)
    angle = torch.deg2rad(angle)
    sx = torch.deg2rad(shear_x if shear_x is not None else zeros)
    sy = torch.deg2rad(shear_y if shear_y is not None else zeros)
    cos_sy = torch.cos(sy)
    a = torch.cos(angle - sy) / cos_sy
    b = -torch.cos(angle - sy) * torch.tan(sx) / cos_sy - torch.sin(angle)
    c = torch.sin(angle - sy) / cos_sy
    d = -torch.sin(angle - sy) * torch.tan(sx) / cos_sy + torch.cos(angle)
    linear = torch.stack((torch.stack((a, b), -1), torch.stack((c, d), -1)), -2)
    if scale is not None:
        linear = linear * scale.view(n, 1, 1)
    forward = torch.eye(3, dtype=angle.dtype).repeat(n, 1, 1)
    forward[:, :2, :2] = linear
    forward[:, 0, 2], forward[:, 1, 2] = translate_x, translate_y
    return forward


def invert_affine(m: Tensor) -> Tensor:
    """Inverse of a batch of 3x3 affine matrices ``[[A, t], [0, 1]]`` in closed form (``[[A^-1, -A^-1 t], [0, 1]]``).

    Args:
        m: ``(N, 3, 3)`` affine matrices.

    Returns:
        ``(N, 3, 3)`` inverses.
    """
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - b * c
    inv = torch.zeros_like(m)
    inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = d / det, -b / det, -c / det, a / det
    inv[:, :2, 2] = -(inv[:, :2, :2] @ m[:, :2, 2:]).squeeze(-1)
    inv[:, 2, 2] = 1.0
    return inv


def pixel_to_grid_theta(matrix: Tensor, in_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """``grid_sample``'s ``theta`` ``(N, 2, 3)`` for maps from output to input pixel coordinates.

    Args:
        matrix: ``(N, 3, 3)`` maps from output pixels to input pixels, both centred on their image.
        in_size: ``(height, width)`` of the input.
        out_size: ``(height, width)`` of the output.

    Returns:
        The same maps in the normalized ``[-1, 1]`` coordinates of ``align_corners=False``, dtype of ``matrix``.
    """
    (h, w), (oh, ow) = in_size, out_size
    s_out = torch.diag(torch.tensor([ow / 2.0, oh / 2.0, 1.0], dtype=matrix.dtype))
    s_in_inv = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], dtype=matrix.dtype))
    return (s_in_inv @ matrix @ s_out)[:, :2, :]


def affine_grid(theta: Tensor, height: int, width: int, displacement: Tensor | None = None) -> Tensor:
    """``F.affine_grid(theta, (N, C, height, width), align_corners=False)`` by broadcasting.

    The same sampling grid, computed as ``(N, 2, H, W)`` with three element-wise operations and returned as
    an ``(N, H, W, 2)`` view (``grid_sample`` accepts it as is): several times faster on CPU than the
    batched matrix product of ``F.affine_grid`` for small images.

    Args:
        theta: ``(N, 2, 3)`` maps from output to input, in normalized coordinates.
        height: output height.
        width: output width.
        displacement: ``(N, 2, H, W)`` in grid units, moves each output coordinate before ``theta`` maps
            it: an elastic distortion applied *after* the affine warp, in one sampling.

    Returns:
        The grid ``(N, height, width, 2)``.
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


# ------------------------------------------------------------------------------------------- elastic
def gaussian_kernel1d(sigma: float) -> Tensor:
    """torchvision's Gaussian of ``gaussian_blur`` for ``sigma``: ``int(8 * sigma + 1)`` taps (made odd), sum 1.

    Args:
        sigma: standard deviation in pixels (> 0).

    Returns:
        The kernel, float64.
    """
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

    Args:
        size: length of the blurred axis.
        sigma: standard deviation in pixels (> 0).
        dtype: dtype of the result.

    Returns:
        The blur matrix.
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

    Args:
        n: number of fields.
        height: field height.
        width: field width.
        alpha: strength (torchvision's meaning: ``alpha / 2`` pixels for a unit value of the smoothed noise).
        sigma: smoothing in pixels; 0 leaves the noise raw.
        generator: the random stream (CPU); ``None`` uses the global one.

    Returns:
        The fields, float32 on the CPU.
    """
    d = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    if sigma > 0:
        d = gaussian_blur_matrix(height, sigma) @ d @ gaussian_blur_matrix(width, sigma).T
    scale = torch.tensor([alpha / width, alpha / height], dtype=d.dtype).view(1, 2, 1, 1)
    return d * scale


__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "affine_grid",
    "affine_matrix",
    "elastic_displacement",
    "gaussian_blur_matrix",
    "gaussian_kernel1d",
    "gray",
    "hsv_to_rgb",
    "invert_affine",
    "pixel_to_grid_theta",
    "rgb_to_hsv",
]
