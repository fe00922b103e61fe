"""Torch's deprecation notices of the eager quantization stack, shown once per process instead of on every call.

torch 2.14 still runs eager-mode quantization but warns ``torch.ao.quantization is deprecated`` (and that the
quantized tensor creation functions and ``torch.jit`` are deprecated) each time its functions are called. The
eager stack (``backend="eager"``) ships TorchScript files, so those notices concern a format the user receives:
they are never silenced. Around our own calls into that stack each of them is shown *once* per process (not
hundreds of times per fit); every other warning is untouched. The maintained stack, PT2E (``backend="pt2e"``,
what ``"auto"`` picks where it works), calls none of them.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: message patterns (regular expressions, matched at the start of the message) that are silenced
QUANTIZATION_DEPRECATION_MESSAGES: tuple[str, ...] = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation functions",
    r".*torch\.jit\.\w+.* is (deprecated|not supported)",
    r"`torch\.jit\.(script|trace|save|load)` is deprecated",
    r"Please use quant_min and quant_max to specify the range for observers",
)


#: the notices already passed on in this process (text, category)
_SHOWN: set[tuple[str, type]] = set()


@contextmanager
def quiet_quantization_warnings() -> Iterator[None]:
    """Inside the block, each of torch's quantization deprecation notices is passed on once per process (not
    silenced: the user's warning filters then apply as usual); every other warning is passed on as it came."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # noqa: F811 - the list of the block's warnings
            warnings.simplefilter("always")
            yield
    finally:
        for w in caught:
            text = str(w.message)
            if any(re.match(m, text) for m in QUANTIZATION_DEPRECATION_MESSAGES):
                key = (text, w.category)
                if key in _SHOWN:
                    continue
                _SHOWN.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def quiet_cpu_compiler_import() -> None:
    """Import ``torch.utils.cpp_extension`` (which ``torch.compile`` imports on the CPU) without its notice
    "No CUDA runtime is found, using CUDA_HOME=...": logged at import on a machine with a CUDA toolkit but no
    GPU, meaningless for a CPU compile. Only that module's logger is raised to ERROR, only for the import;
    nothing is done when it is already imported or when CUDA is available."""
    name = "torch.utils.cpp_extension"
    if name in sys.modules or torch.cuda.is_available():
        return
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        importlib.import_module(name)
    finally:
        log.setLevel(level)
