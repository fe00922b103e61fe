"""Feature distillation, pure torch: finding the paired layers, capturing their outputs with forward hooks,
sizing the adapters from a dry run, and the summed feature loss of a step.

``pairs`` maps student layer names (inside the student network) to teacher layer names (inside the teacher
network, that is :attr:`FrozenTeacher.module <lightning_optim.functional.distillation.teacher.FrozenTeacher>`);
adapter ``pair<i>`` maps the ``i``-th student feature to the shape of its teacher feature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_optim.functional.distillation.losses import feature_distillation_loss
from lightning_optim.functional.distillation.teacher import FrozenTeacher
from lightning_optim.layers.adapters import build_feature_adapter


def first_tensor(output: Any) -> Tensor | None:
    """The first tensor in a module's output (a tensor, or nested tuples/lists/dicts), ``None`` if there is none."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, Mapping):
        for item in output.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def get_layer(root: nn.Module, name: str, option: str, owner: str) -> nn.Module:
    """The submodule ``name`` of ``root``.

    Args:
        root: the network.
        name: the dotted layer name.
        option: the user's option that named it (shown in the error).
        owner: ``"student"`` or ``"teacher"`` (shown in the error).

    Raises:
        ValueError: when ``root`` has no such layer; lists its layers (the first 30).
    """
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n]
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(
            f"`{option}`: the {owner} has no layer named {name!r}; its layers are: {shown}."
        ) from None


def feature_hook(
    sink: dict[str, Tensor], name: str, enabled: Callable[[], bool] | None = None
) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook that stores the first tensor of the layer's output in ``sink[name]`` (while ``enabled()``,
    always when ``enabled`` is ``None``)."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if enabled is None or enabled():
            sink[name] = first_tensor(output)

    return hook


def hook_feature_pairs(
    student: nn.Module,
    teacher: FrozenTeacher,
    pairs: Mapping[str, str],
    student_sink: dict[str, Tensor],
    teacher_sink: dict[str, Tensor],
    enabled: Callable[[], bool] | None = None,
) -> list[RemovableHandle]:
    """Register the forward hooks that capture every pair's student and teacher features; returns their handles
    (call ``remove()`` on each to take them off)."""
    handles = []
    for s_name, t_name in pairs.items():
        handles.append(
            student.get_submodule(s_name).register_forward_hook(feature_hook(student_sink, s_name, enabled))
        )
        handles.append(
            teacher.module.get_submodule(t_name).register_forward_hook(
                feature_hook(teacher_sink, t_name, enabled)
            )
        )
    return handles


def dry_run(
    student: nn.Module, teacher: FrozenTeacher, x: Tensor, pairs: Mapping[str, str]
) -> tuple[Tensor | None, Tensor | None, dict[str, Tensor], dict[str, Tensor]]:
    """``(student output, teacher output, student features, teacher features)`` for the input ``x``, each net on
    its own device, in eval mode and without gradients; the student's train/eval modes are restored afterwards
    and the hooks removed."""
    s_feats: dict[str, Tensor] = {}
    t_feats: dict[str, Tensor] = {}
    handles = hook_feature_pairs(student, teacher, pairs, s_feats, t_feats)
    modes = {m: m.training for m in student.modules()}
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    teacher_device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    try:
        student.eval()
        with torch.no_grad():
            student_out = first_tensor(student(x.to(device)))
            teacher_out = first_tensor(teacher(x.to(teacher_device)))
    finally:
        for m, mode in modes.items():
            m.training = mode
        for h in handles:
            h.remove()
    return student_out, teacher_out, s_feats, t_feats


def build_feature_adapters(
    pairs: Mapping[str, str], student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]
) -> nn.ModuleDict:
    """One adapter per pair (``pair<i>``), mapping a student feature (batched, as captured) to its teacher's shape."""
    adapters = nn.ModuleDict()
    for i, (s_name, t_name) in enumerate(pairs.items()):
        adapters[f"pair{i}"] = build_feature_adapter(
            student_features[s_name].shape[1:], teacher_features[t_name].shape[1:]
        )
    return adapters


def feature_pairs_loss(
    adapters: nn.ModuleDict,
    pairs: Mapping[str, str],
    student_features: dict[str, Tensor],
    teacher_features: dict[str, Tensor],
    kind: str = "mse",
) -> Tensor | None:
    """The sum over pairs of :func:`feature_distillation_loss` between the adapted student feature and the
    teacher's; the features are taken out of the two dicts (``None`` for no pairs).

    Raises:
        RuntimeError: when a paired layer produced no activation (it is not used by the forward pass).
    """
    total = None
    for i, (s_name, t_name) in enumerate(pairs.items()):
        s_feat, t_feat = student_features.pop(s_name, None), teacher_features.pop(t_name, None)
        if s_feat is None or t_feat is None:
            raise RuntimeError(
                f"Feature pair {s_name!r} -> {t_name!r} produced no activation in this step; the layer is not "
                "used by the forward pass."
            )
        term = feature_distillation_loss(adapters[f"pair{i}"](s_feat), t_feat, kind)
        total = term if total is None else total + term
    return total


def adapter_optimizer_like(
    optimizer: torch.optim.Optimizer, params: list[Tensor], lr: float
) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s class and settings (its ``defaults``: momentum, betas, weight decay, ...)
    over ``params``, at learning rate ``lr``: the adapters' own optimizer where they cannot join the student's
    (under FSDP2 the student's optimizer state is saved by parameter names of the sharded network, which the
    adapters are not part of). With the same settings it takes the same steps as a parameter group of
    ``optimizer`` would.

    Raises:
        ValueError: the optimizer class cannot be rebuilt from its ``defaults``.
    """
    cls = type(optimizer)
    try:
        return cls(params, **{**optimizer.defaults, "lr": lr})
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"The feature adapters need an optimizer of the student's class {cls.__name__}, rebuilt from its "
            f"`defaults`, which failed: {err}. Use a torch optimizer (SGD, Adam, AdamW, ...) in `configure_optimizers`."
        ) from err


__all__ = [
    "adapter_optimizer_like",
    "build_feature_adapters",
    "dry_run",
    "feature_hook",
    "feature_pairs_loss",
    "first_tensor",
    "get_layer",
    "hook_feature_pairs",
]
