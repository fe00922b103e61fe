"""Narrow suppression of the deprecation notices that ``torch.ao.quantization`` emits on every call.

torch 2.14 still runs eager-mode quantization but warns ``torch.ao.quantization is deprecated`` (and that
quantized tensor creation functions are deprecated) each time its functions are called. Those notices are
about torch's own roadmap, not something our users can act on, so they are silenced *only* around our own
calls into the quantization stack; every other warning still reaches the user.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: message patterns (regular expressions, matched at the start of the message) that are silenced
QUANTIZATION_DEPRECATION_MESSAGES: tuple[str, ...] = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation functions",
    r".*torch\.jit\.\w+.* is (deprecated|not supported)",
    r"`torch\.jit\.(script|trace|save|load)` is deprecated",
    r"Please use quant_min and quant_max to specify the range for observers",
)


@contextmanager
def quiet_quantization_warnings() -> Iterator[None]:
    """Silence torch's quantization deprecation notices inside the block (nothing else)."""
    with warnings.catch_warnings():
        for message in QUANTIZATION_DEPRECATION_MESSAGES:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield
