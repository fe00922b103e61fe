"""Network weights from a checkpoint file the user named: read with ``weights_only=True``, checked to fit.

Used wherever a recipe names weights to load into an architecture it also names: the distillation
teacher (``teacher_checkpoint``), the members of a :class:`~lightning_optim.models.LogitEnsemble`
(``checkpoints``) and :class:`~lightning_optim.callbacks.WarmStart` (``checkpoint``). Errors name the option
the path came from.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.paths import user_file

__all__ = ["load_weights", "state_dict_from_checkpoint"]


def state_dict_from_checkpoint(checkpoint: Any, option: str, prefix: str = "model.") -> dict[str, Tensor]:
    """The network's state dict inside a loaded checkpoint.

    Accepts a Lightning checkpoint of a :class:`~lightning_optim.modules.ClassificationModule` (weights
    under ``state_dict`` with keys ``model.<name>``), a Lightning checkpoint of any module (keys used as
    they are when none start with ``prefix``), or a plain ``nn.Module.state_dict()``.

    Args:
        checkpoint: what ``torch.load`` returned.
        option: the option the file came from, named in the error message.
        prefix: the key prefix of the network inside a Lightning module's state dict.

    Raises:
        ValueError: if ``checkpoint`` holds no tensors in a recognizable layout.
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"`{option}` holds no state dict: expected a Lightning checkpoint (with 'state_dict') "
            f"or an nn.Module state dict, got {type(checkpoint).__name__} with keys "
            f"{list(checkpoint)[:8] if isinstance(checkpoint, dict) else '-'}."
        )
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def load_weights(
    module: nn.Module,
    checkpoint_path: str | os.PathLike,
    option: str,
    prefix: str = "model.",
    strict: bool = True,
) -> nn.Module:
    """Load the weights of ``checkpoint_path`` into the architecture ``module`` (in place).

    Read with ``torch.load(..., weights_only=True, map_location="cpu")``: nothing is unpickled.

    Args:
        module: the architecture the weights belong to.
        checkpoint_path: a Lightning checkpoint or a saved state dict.
        option: the option the path came from, named in the error messages (``"teacher_checkpoint"``).
        prefix: the key prefix of the network inside a Lightning module's state dict (``"<attribute>."``).
        strict: require the checkpoint's keys to match the architecture's exactly; with ``False`` missing and
            unexpected keys are allowed (shapes must still match).

    Raises:
        FileNotFoundError: if ``checkpoint_path`` does not exist.
        ValueError: if the path is not a regular file, or the file is not a checkpoint, or its weights do not
            fit ``module`` (the message lists missing keys, unexpected keys and shape mismatches).
    """
    path = os.fspath(user_file(checkpoint_path, option))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"`{option}` {path!r} could not be read as a PyTorch checkpoint: {err}") from err
    state = state_dict_from_checkpoint(checkpoint, option, prefix)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(expected)) if strict else []
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs architecture {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"`{option}` {path!r} does not fit the architecture {type(module).__name__}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys "
            f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, shape mismatches {mismatched[:8]}. "
            "Give the same architecture (class and init args) the checkpoint was trained with."
        )
    module.load_state_dict(state, strict=strict)
    return module
