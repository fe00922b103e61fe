"""Network weights from a checkpoint file the user named: read with ``weights_only=True``, checked to fit.

Used wherever a recipe names weights to load into an architecture it also names: the distillation
teacher (``teacher_checkpoint``), the members of a :class:`~lightning_optim.models.LogitEnsemble`
(``checkpoints``) and :class:`~lightning_optim.callbacks.WarmStart` (``checkpoint``). Errors name the option
the path came from.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.layers.attention import (
    HEAD_COUNT_ATTRIBUTES,
    HEAD_WIDTH_ATTRIBUTES,
    INNER_WIDTH_ATTRIBUTES,
    PrunedMultiheadAttention,
    from_multihead_attention,
)
from lightning_optim.paths import opened_user_file

__all__ = ["load_weights", "resize_to_state_dict", "state_dict_from_checkpoint"]


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


def _set_sizes(module: nn.Module, name: str, shape: tuple[int, ...], old: tuple[int, ...]) -> None:
    """Update the size attributes of ``module`` after its ``name`` tensor changed from ``old`` to ``shape``."""
    if isinstance(module, nn.Linear) and name == "weight":
        module.out_features, module.in_features = shape[0], shape[1]
    elif isinstance(module, nn.modules.conv._ConvNd) and name == "weight":
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels == old[0]
        module.out_channels = shape[0]
        if depthwise:
            module.groups = module.in_channels = shape[0]
        else:
            module.in_channels = shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase) and name in ("weight", "running_mean"):
        module.num_features = shape[0]
    elif isinstance(module, nn.LayerNorm) and name == "weight":
        module.normalized_shape = tuple(shape)


#: module types whose tensors :func:`resize_to_state_dict` may resize (their size attributes are known)
RESIZABLE: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
)


#: modules whose tensors have size attributes: a parameter of any other module is resized alone
SIZED: tuple[type[nn.Module], ...] = (*RESIZABLE, nn.Embedding, nn.MultiheadAttention, nn.GroupNorm)


def _loose_parameter(module: nn.Module, tensor: Tensor, saved: Tensor) -> bool:
    """A parameter of a module without size attributes (a layer scale, a class token, a position embedding),
    saved no larger on any axis: channel pruning sliced it, there is no attribute to follow."""
    return (
        isinstance(tensor, nn.Parameter)
        and not isinstance(module, SIZED)
        and saved.dim() == tensor.dim()
        and all(a <= b for a, b in zip(saved.shape, tensor.shape))
    )


def resize_to_state_dict(
    module: nn.Module, state_dict: dict[str, Any], prefix: str = "", strict: bool = True
) -> list[str]:
    """Give ``module``'s tensors the shapes they have in ``state_dict`` (a model saved after structured pruning
    removed channels), with the layers' size attributes (``out_channels``, ``in_features``, ``num_features``,
    ``groups`` of depthwise convolutions...) to match, so that ``load_state_dict`` then fits. The new tensors
    are uninitialised: load the state dict next.

    Args:
        module: the architecture as built (unpruned).
        state_dict: the saved weights (keys ``prefix + name``).
        prefix: the key prefix of ``module`` in ``state_dict`` (``"model."`` for a ClassificationModule's
            network inside a Lightning checkpoint, ``""`` for the module itself).
        strict: refuse a differing tensor of a layer that cannot be resized; with ``False`` it is left for
            ``load_state_dict`` (which refuses it, or resizes it itself as quantization observers do).

    Returns:
        The names of the modules that were resized.

    Raises:
        ValueError: (``strict``) a tensor of another kind of layer (whose size attributes are unknown) or with
            another number of dimensions differs in shape.
    """
    resized = _resize_attention(module, state_dict, prefix)
    for mname, sub in module.named_modules():
        changed = False
        for tname, tensor in list(sub.named_parameters(recurse=False)) + list(
            sub.named_buffers(recurse=False)
        ):
            key = f"{prefix}{mname + '.' if mname else ''}{tname}"
            saved = state_dict.get(key)
            if not isinstance(saved, Tensor) or tensor is None or tuple(saved.shape) == tuple(tensor.shape):
                continue
            if (
                not isinstance(sub, RESIZABLE) and not _loose_parameter(sub, tensor, saved)
            ) or saved.dim() != tensor.dim():
                if not strict:
                    continue
                where = f"`{mname}`" if mname else "(the module itself)"
                raise ValueError(
                    f"`{key}` has shape {tuple(saved.shape)} in the checkpoint and {tuple(tensor.shape)} in "
                    f"{type(sub).__name__} {where}, which cannot be resized (only {[t.__name__ for t in RESIZABLE]} "
                    "layers are, as structured pruning leaves them)."
                )
            old = tuple(tensor.shape)
            new = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                setattr(sub, tname, nn.Parameter(new, requires_grad=tensor.requires_grad))
            else:
                sub.register_buffer(tname, new)
            _set_sizes(sub, tname, tuple(saved.shape), old)
            changed = True
        if changed:
            resized.append(mname)
    return resized


def _resize_attention(module: nn.Module, state_dict: dict[str, Any], prefix: str) -> list[str]:
    """Attention layers saved with fewer heads: an ``nn.MultiheadAttention`` becomes a
    :class:`~lightning_optim.layers.attention.PrunedMultiheadAttention` with the saved head count; a module
    with a head count and a head width attribute (timm's ``num_heads``/``head_dim``, transformers'
    ``num_attention_heads``/``attention_head_size``) gets the count its projections have in the checkpoint."""
    changed = []
    for mname, sub in list(module.named_modules()):
        key = f"{prefix}{mname + '.' if mname else ''}"
        if isinstance(sub, (nn.MultiheadAttention, PrunedMultiheadAttention)):
            saved = state_dict.get(key + "in_proj_weight")
            if isinstance(saved, Tensor) and saved.shape[0] != sub.in_proj_weight.shape[0]:
                heads = saved.shape[0] // (3 * sub.head_dim)
                new = from_multihead_attention(sub, list(range(min(heads, sub.num_heads))))
                if heads > sub.num_heads:
                    raise ValueError(f"`{key}in_proj_weight` has more heads than `{mname}`.")
                parent, _, child = mname.rpartition(".")
                setattr(module.get_submodule(parent) if parent else module, child, new)
                changed.append(mname)
            continue
        count = next((a for a in HEAD_COUNT_ATTRIBUTES if isinstance(getattr(sub, a, None), int)), None)
        width = next((a for a in HEAD_WIDTH_ATTRIBUTES if isinstance(getattr(sub, a, None), int)), None)
        if count is None or width is None or getattr(sub, width) <= 0:
            continue
        heads, dh = getattr(sub, count), getattr(sub, width)
        found = set()
        for lname, layer in sub.named_modules():
            saved = state_dict.get(f"{key}{lname + '.' if lname else ''}weight")
            if (
                not isinstance(layer, nn.Linear)
                or not isinstance(saved, Tensor)
                or saved.shape[0] == layer.out_features
            ):
                continue
            for k in (1, 3):
                if layer.out_features == k * heads * dh and saved.shape[0] % (k * dh) == 0:
                    found.add(saved.shape[0] // (k * dh))
        if len(found) == 1 and (new_heads := found.pop()) != heads:
            setattr(sub, count, new_heads)
            for attr in INNER_WIDTH_ATTRIBUTES:
                if getattr(sub, attr, None) == heads * dh:
                    setattr(sub, attr, new_heads * dh)
            changed.append(mname)
    return changed


def load_weights(
    module: nn.Module,
    checkpoint_path: str | os.PathLike,
    option: str,
    prefix: str = "model.",
    strict: bool = True,
    resize: bool = False,
) -> nn.Module:
    """Load the weights of ``checkpoint_path`` into the architecture ``module`` (in place).

    Read with ``torch.load(..., weights_only=True, map_location="cpu")``: nothing is unpickled.

    Args:
        module: the architecture the weights belong to.
        checkpoint_path: a Lightning checkpoint or a saved state dict.
        option: the option the path came from, named in the error messages (``"teacher_checkpoint"``).
        prefix: the key prefix of the network inside a Lightning module's state dict (``"<attribute>."``).
        strict: require the checkpoint's keys to match the architecture's exactly; with ``False`` missing and
            unexpected keys are allowed (shapes must still match), but a checkpoint none of whose tensors matches
            a key of the architecture is refused (it would load nothing), and a partial load is said with a
            warning (how many of the architecture's tensors were loaded, a few keys left on each side).
        resize: first give the architecture the checkpoint's shapes (:func:`resize_to_state_dict`): the weights
            of a model whose channels structured pruning removed load into its unpruned architecture.

    Raises:
        FileNotFoundError: if ``checkpoint_path`` does not exist.
        ValueError: if the path is not a regular file, or the file is not a checkpoint, or its weights do not
            fit ``module`` (the message lists missing keys, unexpected keys and shape mismatches), or (``strict=False``)
            no key of the checkpoint is one of the architecture's.
    """
    path = os.fspath(checkpoint_path)
    with opened_user_file(checkpoint_path, option) as fh:  # checked and read as one open file (never a FIFO)
        try:
            checkpoint = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"`{option}` {path!r} could not be read as a PyTorch checkpoint: {err}") from err
    state = state_dict_from_checkpoint(checkpoint, option, prefix)
    if resize:
        resize_to_state_dict(module, state)
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
    if not strict:
        _check_partial_load(module, expected, state, option, path, prefix)
    module.load_state_dict(state, strict=strict)
    return module


def _check_partial_load(
    module: nn.Module, expected: dict[str, Any], state: dict[str, Any], option: str, path: str, prefix: str
) -> None:
    """``strict=False``: refuse a load that matches no key (it would load nothing and look like success); say a
    partial one (how many of the architecture's tensors the checkpoint gives)."""
    matched = sorted(set(expected) & set(state))
    missing = sorted(set(expected) - set(state))
    unused = sorted(set(state) - set(expected))
    if not missing and not unused:
        return

    def few(keys: list[str]) -> str:
        return f"{keys[:5]}{f' (+{len(keys) - 5} more)' if len(keys) > 5 else ''}"

    if not matched:
        raise ValueError(
            f"`{option}` {path!r} has no tensor under a key of the architecture {type(module).__name__}: "
            f"`strict=False` would load none of its {len(expected)} tensors. Checkpoint keys: "
            f"{few(sorted(state))}; architecture keys: {few(sorted(expected))}. Give a checkpoint of this network (in "
            f"a Lightning checkpoint its keys are read under the prefix {prefix!r}, the LightningModule attribute "
            "that held it: WarmStart's `attribute`)."
        )
    warnings.warn(
        f"`{option}` {path!r} loaded {len(matched)} of the {len(expected)} tensors of {type(module).__name__} "
        f"(`strict=False`); not in the checkpoint: {few(missing)}; in the checkpoint but not in the architecture: "
        f"{few(unused)}.",
        UserWarning,
        stacklevel=3,
    )
