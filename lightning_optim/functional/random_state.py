"""The random number generators' states of one process, as a checkpoint-safe dict, and back.

A resumed run draws the same dropout masks, augmentations and shuffles as an uninterrupted one only if every
generator it draws from is where it was when the checkpoint was written: torch's CPU generator, each CUDA
device's generator, NumPy's global generator and Python's :mod:`random`. :func:`capture_random_state` reads
them into a dict of tensors, ints and floats (``torch.load(..., weights_only=True)`` loads it: no NumPy arrays,
no pickled objects); :func:`restore_random_state` sets them back; :func:`check_random_state` says what is wrong
with a dict that did not come from :func:`capture_random_state`.

Example::

    state = capture_random_state()
    a = torch.rand(3)
    restore_random_state(state)
    assert torch.equal(torch.rand(3), a)
"""

from __future__ import annotations

import random
from typing import Any

import torch

try:  # NumPy is a dependency of Lightning, not of this module
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without NumPy
    np = None

__all__ = ["capture_random_state", "check_random_state", "restore_random_state", "RANDOM_STATE_KEYS"]

#: the generators a state may hold (``"cuda"`` and ``"numpy"`` only where they exist)
RANDOM_STATE_KEYS: tuple[str, ...] = ("torch", "cuda", "numpy", "python")


def _cuda_in_use() -> bool:
    """CUDA is available and initialized (reading its state otherwise would start CUDA in a CPU-only run)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capture_random_state() -> dict[str, Any]:
    """The current state of every generator of this process.

    Returns:
        ``{"torch": uint8 tensor, "python": {...}, "numpy": {...}, "cuda": [uint8 tensor per device]}``;
        ``"numpy"`` only where NumPy is importable, ``"cuda"`` only once CUDA has been initialized.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if _cuda_in_use():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def check_random_state(state: Any) -> None:
    """Refuse a dict that :func:`restore_random_state` cannot apply, naming what is wrong.

    Raises:
        ValueError: ``state`` is not a dict from :func:`capture_random_state` (an unknown key, a missing torch
            state, a value of the wrong type).
    """
    if not isinstance(state, dict):
        raise ValueError(
            f"A random state must be a dict from capture_random_state(), got {type(state).__name__}."
        )
    unknown = sorted(str(k) for k in state if k not in RANDOM_STATE_KEYS)
    if unknown:
        raise ValueError(f"Unknown random state keys {unknown}; allowed: {list(RANDOM_STATE_KEYS)}.")
    torch_state = state.get("torch")
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
        raise ValueError("A random state needs `torch`: the uint8 tensor of torch.get_rng_state().")
    python = state.get("python")
    if python is not None and not (
        isinstance(python, dict) and isinstance(python.get("state"), torch.Tensor) and "version" in python
    ):
        raise ValueError(
            "The `python` random state must be {'version', 'state' (int64 tensor), 'gauss_next'}."
        )
    numpy_state = state.get("numpy")
    if numpy_state is not None and not (
        isinstance(numpy_state, dict) and isinstance(numpy_state.get("keys"), torch.Tensor)
    ):
        raise ValueError(
            "The `numpy` random state must be {'kind', 'keys' (tensor), 'pos', 'has_gauss', 'cached_gaussian'}."
        )
    cuda = state.get("cuda")
    if cuda is not None and not (
        isinstance(cuda, (list, tuple)) and all(isinstance(s, torch.Tensor) for s in cuda)
    ):
        raise ValueError("The `cuda` random state must be a list of uint8 tensors, one per device.")


def restore_random_state(state: dict[str, Any]) -> list[str]:
    """Set every generator :func:`capture_random_state` read back to ``state``.

    Generators the state does not hold are left as they are, and so are those this process lacks (NumPy not
    installed; no CUDA, or fewer devices than when the state was captured: the first ones are restored).

    Args:
        state: a dict from :func:`capture_random_state` (checked with :func:`check_random_state`).

    Returns:
        The generators that were restored (e.g. ``["torch", "python", "numpy"]``), in that order.

    Raises:
        ValueError: as :func:`check_random_state`.
    """
    check_random_state(state)
    restored = ["torch"]
    torch.set_rng_state(state["torch"].cpu())
    python = state.get("python")
    if python is not None:
        internal = tuple(int(v) for v in python["state"].tolist())
        random.setstate((int(python["version"]), internal, python.get("gauss_next")))
        restored.append("python")
    numpy_state = state.get("numpy")
    if numpy_state is not None and np is not None:
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                numpy_state.get("kind", "MT19937"),
                keys,
                int(numpy_state["pos"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["cached_gaussian"]),
            )
        )
        restored.append("numpy")
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), device)
        restored.append("cuda")
    return restored
