"""Pixel values: one scaling rule per image dtype, for in-memory tensors and for image files.

A model sees float images in ``[0, 1]`` (before the normalization); how stored values get there depends only
on their dtype, never on the values found, and a value the rule cannot map is an error, never clipped:

=====================================  =====================================================================
stored as                              model input
=====================================  =====================================================================
``uint8``                              ``value / 255``
``uint16``                             ``value / 65535`` (16-bit images keep their 16 bits in memory)
``bool``                               ``False`` 0, ``True`` 1 (stored as uint8 0/255)
``int8``, ``int16``, ``int32``,        8-bit pixels in a wider type: every value must lie in ``0..255``; they
``int64``, ``uint32``, ``uint64``      are stored as uint8 (no value changes) and scaled by ``1/255``. Any
                                       other value is refused with the dtype and the range found: convert
                                       such data yourself (``images.float() / max_value``)
float (``float16/32/64``, bfloat16)    as it is (scale 1); NaN/inf rows are handled by ``nonfinite``
complex                                refused
=====================================  =====================================================================

Image files (the image-folder scan) are stored as uint8: 8-bit modes as they are; 16-bit grey (PIL
``I;16``, as 16-bit PNG and TIFF files open) scaled by ``255 / 65535`` and rounded; 32-bit integer grey (PIL
``I``) must hold ``0..255``; 32-bit float grey (PIL ``F``) must hold ``[0, 1]`` (scaled by 255). A file outside
its rule is an error naming the file, its mode and the range found.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: integer dtypes stored as they are -> the value that means full intensity (the input is ``value / scale``)
PIXEL_SCALES: dict[torch.dtype, float] = {torch.uint8: 255.0, torch.uint16: 65535.0}
#: integer dtypes holding 8-bit pixels in a wider type: stored as uint8 when every value is in 0..255
WIDE_INTEGER_DTYPES: tuple[torch.dtype, ...] = (
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint32,
    torch.uint64,
)
#: PIL modes of 16-bit grey images
SIXTEEN_BIT_MODES: tuple[str, ...] = ("I;16", "I;16B", "I;16L", "I;16N")


class PixelRangeError(ValueError):
    """Pixel values that the scaling rule of their dtype (or image mode) cannot map to ``[0, 1]``."""


def pixel_scale(dtype: torch.dtype) -> float:
    """The divisor that maps stored values of ``dtype`` to model inputs: 255 (uint8), 65535 (uint16), 1 (float).

    Raises:
        ValueError: a dtype that is not stored as it is (see :func:`check_image_tensor`).
    """
    if dtype in PIXEL_SCALES:
        return PIXEL_SCALES[dtype]
    if dtype.is_floating_point:
        return 1.0
    raise ValueError(
        f"Images of dtype {dtype} are not stored as they are; pass them through `check_image_tensor`."
    )


def check_image_tensor(images: Tensor, option: str = "images") -> Tensor:
    """``images`` as the data module stores them, following the rule of the module docstring.

    Args:
        images: ``(N, C, H, W)`` images or an ``(N, F)`` table.
        option: the option they come from, named in the messages.

    Returns:
        uint8, uint16 and float tensors unchanged; ``bool`` and wide integer dtypes as uint8 (same values).

    Raises:
        ValueError: a complex dtype; a wide integer dtype holding a value outside ``0..255`` (the message names
            the dtype, the range found and the fix).
    """
    dtype = images.dtype
    if dtype in PIXEL_SCALES or dtype.is_floating_point:
        return images
    if dtype == torch.bool:
        return images.to(torch.uint8) * 255
    if dtype not in WIDE_INTEGER_DTYPES:
        raise ValueError(
            f"`{option}` of dtype {dtype} are not images: give uint8 or uint16 pixels, 0..255 integers, or floats."
        )
    if images.numel() == 0:
        return images.to(torch.uint8)
    values = images.to(torch.int64) if dtype in (torch.uint32, torch.uint64) else images
    low, high = (int(v) for v in torch.aminmax(values))
    if low < 0 or high > 255:
        raise PixelRangeError(
            f"`{option}` are {str(dtype).replace('torch.', '')} with values in [{low}, {high}]: integer images other "
            "than uint8 and uint16 must hold 8-bit pixels 0..255 (scaled by 1/255). Convert them: "
            f"`{option}.to(torch.uint16)` for 16-bit pixels (scaled by 1/65535), `{option}.float() / max_value` "
            "for another range (float images are used as they are)."
        )
    return images.to(torch.uint8)


def pil_to_8bit(img, path: str):
    """A PIL image of a 16-bit, 32-bit integer or float grey mode as an 8-bit ``L`` image (others unchanged).

    Raises:
        PixelRangeError: a 32-bit integer image outside ``0..255`` or a float image outside ``[0, 1]``.
    """
    from PIL import Image

    mode = img.mode
    if mode not in (*SIXTEEN_BIT_MODES, "I", "F"):
        return img
    array = np.asarray(img)
    if mode in SIXTEEN_BIT_MODES:
        scaled = np.rint(array.astype(np.float64) * (255.0 / 65535.0))
    elif mode == "I":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise PixelRangeError(
                f"Image {path!r} is 32-bit integer grey (PIL mode 'I') with values in [{low}, {high}]: such images "
                "must hold 8-bit pixels 0..255 (16-bit images are read from 16-bit PNG or TIFF files, mode "
                "'I;16', and scaled by 255/65535). Save it as an 8-bit or 16-bit image."
            )
        scaled = array
    else:
        finite = np.isfinite(array).all()
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not finite or low < 0.0 or high > 1.0:
            raise PixelRangeError(
                f"Image {path!r} is 32-bit float grey (PIL mode 'F') with values in [{low}, {high}]: float images "
                "must hold values in [0, 1] (scaled by 255). Save it as an 8-bit or 16-bit image, or scale it to "
                "[0, 1]."
            )
        scaled = np.rint(array.astype(np.float64) * 255.0)
    return Image.fromarray(scaled.astype(np.uint8), "L")


__all__ = [
    "PIXEL_SCALES",
    "SIXTEEN_BIT_MODES",
    "WIDE_INTEGER_DTYPES",
    "PixelRangeError",
    "check_image_tensor",
    "pil_to_8bit",
    "pixel_scale",
]
