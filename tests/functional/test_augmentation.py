"""Image kernels of the batched augmentation: each one against torch's or torchvision's reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

from lightning_optim.functional.augmentation import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    affine_grid,
    affine_matrix,
    elastic_displacement,
    gaussian_blur_matrix,
    gaussian_kernel1d,
    gray,
    hsv_to_rgb,
    invert_affine,
    pixel_to_grid_theta,
    rgb_to_hsv,
)


def images(n=4, channels=3, size=9, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def per_sample(values):
    return torch.tensor(values).view(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------------- colour
def test_hsv_round_trip_and_pure_colours():
    x = images()
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6)
    red_green_blue_gray = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]]).view(
        4, 3, 1, 1
    )
    hsv = rgb_to_hsv(red_green_blue_gray).flatten(1)
    assert torch.allclose(hsv[:, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 0.0]))  # hue as a fraction of a turn
    assert torch.allclose(hsv[:, 1], torch.tensor([1.0, 1.0, 1.0, 0.0]))  # gray: no saturation
    assert torch.allclose(hsv[:, 2], torch.tensor([1.0, 1.0, 1.0, 0.5]))


def test_gray_is_torchvisions_luma_or_the_channel_mean():
    x = images()
    assert torch.allclose(gray(x), TF.rgb_to_grayscale(x), atol=1e-6)
    two = images(channels=2)
    assert torch.equal(gray(two), two.mean(1, keepdim=True))


@pytest.mark.parametrize(
    ("kernel", "reference", "factors"),
    [
        (adjust_brightness, TF.adjust_brightness, [0.5, 1.0, 1.3, 2.0]),
        (adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.8]),
        (adjust_saturation, TF.adjust_saturation, [0.0, 0.5, 1.0, 1.7]),
        (adjust_hue, TF.adjust_hue, [-0.35, 0.0, 0.2, 0.5]),
    ],
)
def test_colour_adjustments_are_torchvisions_with_one_factor_per_sample(kernel, reference, factors):
    x = images()
    out = kernel(x, per_sample(factors))
    for i, factor in enumerate(factors):
        assert torch.allclose(out[i], reference(x[i], factor), atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------------------------------------------- geometry
def test_affine_matrix_is_torchvisions_forward_matrix_and_invert_affine_its_inverse():
    cases = [
        (20.0, 3.0, -2.0, 1.2, 8.0, -4.0),
        (-45.0, 0.0, 5.0, 0.8, 0.0, 0.0),
        (0.0, 1.0, 1.0, 1.0, 30.0, 10.0),
    ]
    angle, tx, ty, scale, shx, shy = (torch.tensor(c, dtype=torch.float64) for c in zip(*cases))
    m = affine_matrix(angle, tx, ty, scale, shx, shy)
    inverse = invert_affine(m)
    for i, (a, x, y, s, sx, sy) in enumerate(cases):
        forward = _get_inverse_affine_matrix([0.0, 0.0], a, [x, y], s, [sx, sy], inverted=False)
        assert torch.allclose(m[i, :2].flatten(), torch.tensor(forward, dtype=torch.float64), atol=1e-12)
        backward = _get_inverse_affine_matrix([0.0, 0.0], a, [x, y], s, [sx, sy])
        assert torch.allclose(
            inverse[i, :2].flatten(), torch.tensor(backward, dtype=torch.float64), atol=1e-12
        )
    # no scale and no shear: a rotation and a shift
    rotation = affine_matrix(angle, tx, ty)
    assert torch.allclose(rotation[:, :2, :2].det(), torch.ones(3, dtype=torch.float64))


def test_invert_affine_matches_linalg():
    m = torch.eye(3, dtype=torch.float64).repeat(6, 1, 1)
    m[:, :2, :] = torch.randn(6, 2, 3, dtype=torch.float64) + torch.eye(2, 3, dtype=torch.float64) * 3
    assert torch.allclose(invert_affine(m), torch.linalg.inv(m), atol=1e-10)


def test_affine_grid_matches_torch():
    theta = torch.randn(5, 2, 3)
    assert torch.allclose(
        affine_grid(theta, 7, 9), F.affine_grid(theta, [5, 1, 7, 9], align_corners=False), atol=1e-5
    )


def test_affine_grid_displacement_moves_the_sampling_points():
    theta = torch.eye(2, 3).repeat(2, 1, 1)
    displacement = torch.zeros(2, 2, 4, 6)
    displacement[:, 0] = 2 / 6  # one pixel to the right, in grid units
    grid = affine_grid(theta, 4, 6, displacement)
    assert torch.allclose(grid[..., 0], affine_grid(theta, 4, 6)[..., 0] + 2 / 6)
    x = torch.rand(2, 1, 4, 6)
    shifted = F.grid_sample(x, grid, align_corners=False)
    assert torch.allclose(shifted[..., :-1], x[..., 1:], atol=1e-6)


def test_pixel_to_grid_theta_shifts_and_resizes_in_pixels():
    x = torch.rand(1, 1, 6, 8, dtype=torch.float64)
    shift = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    shift[0, 0, 2] = 2.0  # output pixel (i, j) reads input pixel (i, j + 2)
    theta = pixel_to_grid_theta(shift, (6, 8), (6, 8))
    out = F.grid_sample(x, affine_grid(theta, 6, 8), align_corners=False)
    assert torch.allclose(out[..., :-2], x[..., 2:], atol=1e-12)
    # scale (w / ow, h / oh) with equal centres is a bilinear resize
    resize = torch.diag(torch.tensor([8 / 4, 6 / 3, 1.0], dtype=torch.float64)).unsqueeze(0)
    theta = pixel_to_grid_theta(resize, (6, 8), (3, 4))
    assert torch.allclose(theta, torch.eye(2, 3, dtype=torch.float64).unsqueeze(0))
    out = F.grid_sample(x, affine_grid(theta, 3, 4), align_corners=False)
    assert torch.allclose(out, F.interpolate(x, size=(3, 4), mode="bilinear", align_corners=False))


# ------------------------------------------------------------------------------------------- elastic
def test_elastic_kernel_is_torchvisions():
    from torchvision.transforms.v2.functional._misc import _get_gaussian_kernel1d

    for sigma in (0.5, 1.0, 4.0, 5.0):
        size = int(8 * sigma + 1) + (1 - int(8 * sigma + 1) % 2)
        ref = _get_gaussian_kernel1d(size, sigma, torch.float64, torch.device("cpu"))
        assert torch.allclose(gaussian_kernel1d(sigma), ref, atol=1e-12)


def test_blur_matrix_is_a_reflect_padded_convolution():
    sigma, size = 1.0, 16
    k = gaussian_kernel1d(sigma)
    v = torch.rand(3, size, dtype=torch.float64)
    pad = len(k) // 2
    ref = F.conv1d(F.pad(v.unsqueeze(1), (pad, pad), mode="reflect"), k.view(1, 1, -1)).squeeze(1)
    blur = gaussian_blur_matrix(size, sigma, dtype=torch.float64)
    assert torch.allclose(v @ blur.T, ref, atol=1e-12)
    # a kernel wider than the axis is truncated and renormalized: rows still sum to 1
    narrow = gaussian_blur_matrix(3, 5.0, dtype=torch.float64)
    assert torch.allclose(narrow.sum(1), torch.ones(3, dtype=torch.float64))


def test_elastic_field_is_smooth_and_scaled_by_alpha():
    g = torch.Generator().manual_seed(0)
    d = elastic_displacement(64, 28, 28, 34.0, 4.0, g)
    assert d.shape == (64, 2, 28, 28)
    # smoothing: neighbouring displacements are strongly correlated (raw uniform noise: ~0)
    a, b = d[..., :, :-1].flatten(), d[..., :, 1:].flatten()
    assert torch.corrcoef(torch.stack((a, b)))[0, 1] > 0.9
    d2 = elastic_displacement(64, 28, 28, 68.0, 4.0, torch.Generator().manual_seed(0))
    assert torch.allclose(d2, 2 * d)  # linear in alpha
    # wider kernels than the image are truncated (reflect padding needs pad < size), not an error
    assert elastic_displacement(2, 5, 5, 10.0, 5.0).shape == (2, 2, 5, 5)
    # sigma 0: the raw noise, scaled by alpha / size per direction
    raw = elastic_displacement(1, 4, 8, 8.0, 0.0, torch.Generator().manual_seed(1))
    noise = torch.rand(1, 2, 4, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.allclose(raw[:, 0], noise[:, 0] * 8.0 / 8) and torch.allclose(
        raw[:, 1], noise[:, 1] * 8.0 / 4
    )
