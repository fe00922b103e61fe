"""Find the conv-bn(-relu), conv-relu, linear(-bn)-relu and bn-relu chains of a model that int8 can fuse.

Fusion folds a batch norm into the preceding convolution and runs the ReLU inside the int8 kernel, which is
where most of the int8 speed comes from. :func:`find_fusion_groups` finds the chains by tracing the model's
forward with ``torch.fx`` (so chains written as ``self.act1(self.fc1(x))`` are found as well as the
children of an ``nn.Sequential``) and falls back to consecutive children of ``nn.Sequential`` containers
when the forward cannot be traced. It also says what was *not* fused and why (a module called twice, an
output used twice, a functional ``F.relu``, an activation without an int8 fused kernel), so the user can
change the model where it matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
#: batch norm class that may follow each conv class
BN_AFTER: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}
#: batch norms that fuse with a following ReLU on their own
BN_RELU_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.BatchNorm3d)
RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU,)
#: activations that follow a conv/linear in common models but have no fused int8 kernel in eager mode
UNFUSABLE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
)
FUNCTIONAL_RELU = (F.relu, torch.relu, torch.relu_, F.relu_)


@dataclass
class FusionPlan:
    """What :func:`find_fusion_groups` found.

    Attributes:
        groups: module names to fuse together, each ``(conv|linear|bn, [bn], [relu])``, in model order.
        not_fused: ``(module name, reason)`` for each conv/linear/bn that had a candidate partner but was
            left unfused.
        standalone: conv/linear modules with nothing to fuse with (they are still quantized).
        traced: whether ``torch.fx`` traced the forward (``False``: only ``nn.Sequential`` neighbours seen).
        trace_error: why tracing failed, when it did.
    """

    groups: list[tuple[str, ...]] = field(default_factory=list)
    not_fused: list[tuple[str, str]] = field(default_factory=list)
    standalone: list[str] = field(default_factory=list)
    traced: bool = True
    trace_error: str | None = None

    def summary(self) -> str:
        """A few human-readable lines for the log."""
        method = (
            "torch.fx trace"
            if self.traced
            else f"nn.Sequential neighbours (fx trace failed: {self.trace_error})"
        )
        lines = [f"Fusion ({method}): {len(self.groups)} group(s) fused."]
        lines += [f"  fused: {' + '.join(g)}" for g in self.groups]
        lines += [f"  not fused: {name}: {reason}" for name, reason in self.not_fused]
        if self.standalone:
            lines.append(f"  quantized without fusion (nothing to fuse with): {', '.join(self.standalone)}")
        return "\n".join(lines)


def _is_type(module: nn.Module | None, types: tuple[type[nn.Module], ...]) -> bool:
    return module is not None and type(module) in types


def _bn_matches(head: nn.Module, bn: nn.Module | None) -> bool:
    expected = BN_AFTER.get(type(head))
    if expected is None or bn is None or type(bn) is not expected:
        return False
    width = head.out_channels if isinstance(head, CONV_TYPES) else head.out_features
    return bn.num_features == width


def _chain_types(head: nn.Module, second: nn.Module | None, third: nn.Module | None) -> int:
    """Length (1-3) of the fusable chain starting at ``head`` given the next two modules."""
    if type(head) in BN_RELU_TYPES:
        return 2 if _is_type(second, RELU_TYPES) else 1
    if _bn_matches(head, second):
        if isinstance(head, LINEAR_TYPES):  # torch fuses linear+bn but has no linear+bn+relu pattern
            return 2
        return 3 if _is_type(third, RELU_TYPES) else 2
    if _is_type(second, RELU_TYPES):
        return 2
    return 1


#: why a conv/linear + batch norm pair is not fused for QAT
ZERO_SCALE = (
    "its batch norm has channels with a zero scale (pruned channels): fused QAT divides by the scale; the pair "
    "trains unfused (compact the network before QAT to fuse it)"
)


def _zero_scale(bn: nn.Module | None) -> bool:
    weight = getattr(bn, "weight", None)
    return isinstance(weight, torch.Tensor) and bool((weight.detach() == 0).any())


def find_fusion_groups(model: nn.Module, qat: bool = False) -> FusionPlan:
    """Fusable module chains of ``model`` (names relative to ``model``), with what was left unfused and why.

    With ``qat``, a conv/linear + batch norm pair whose batch norm has a zero scale entry (a channel that
    structured pruning zeroed) is not fused: fused QAT modules divide by the batch norm's scale.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any tracing failure falls back to Sequential neighbours
        plan = _sequential_groups(model)
        plan.traced = False
        plan.trace_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    else:
        plan = _graph_groups(model, graph)
    if qat:
        modules = dict(model.named_modules())
        kept = []
        for group in plan.groups:
            if (
                len(group) >= 2
                and type(modules[group[0]]) in CONV_TYPES + LINEAR_TYPES
                and _zero_scale(modules[group[1]])
            ):
                plan.not_fused.append((group[0], ZERO_SCALE))
            else:
                kept.append(group)
        plan.groups = kept
    return plan


def _graph_groups(model: nn.Module, graph: torch.fx.Graph) -> FusionPlan:
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    plan = FusionPlan()
    used: set[str] = set()

    def module_of(node: torch.fx.Node) -> nn.Module | None:
        return modules.get(node.target) if node.op == "call_module" else None

    def only_user(node: torch.fx.Node) -> torch.fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    for node in graph.nodes:
        head = module_of(node)
        if head is None or node.target in used:
            continue
        is_head = type(head) in CONV_TYPES + LINEAR_TYPES
        is_bn_head = type(head) in BN_RELU_TYPES
        if not (is_head or is_bn_head):
            continue
        name = node.target
        nxt = only_user(node)
        second = module_of(nxt) if nxt is not None else None
        nxt2 = only_user(nxt) if nxt is not None and second is not None else None
        third = module_of(nxt2) if nxt2 is not None else None
        length = _chain_types(head, second, third)
        chain = [name, nxt.target if length >= 2 else None, nxt2.target if length >= 3 else None][:length]
        # reasons a candidate chain cannot be fused
        reason = None
        if length >= 2:
            if calls.get(name, 0) > 1 or any(calls.get(t, 0) > 1 for t in chain[1:]):
                shared = [t for t in chain if calls.get(t, 0) > 1]
                reason = (
                    f"module(s) {shared} are called more than once in forward (give each call its own module)"
                )
            elif any(t in used for t in chain[1:]):
                reason = "partner already fused with another module"
        if reason is not None:
            plan.not_fused.append((name, reason))
            continue
        if length >= 2:
            plan.groups.append(tuple(chain))
            used.update(chain)
            continue
        if is_bn_head:
            continue  # a lone batch norm is quantized as it is
        # nothing fused: say why when there was a candidate partner
        users = list(node.users)
        if len(users) > 1:
            plan.not_fused.append((name, f"its output is used {len(users)} times"))
        elif nxt is not None and nxt.op == "call_function" and nxt.target in FUNCTIONAL_RELU:
            plan.not_fused.append((name, "followed by functional relu (use an nn.ReLU module to fuse it)"))
        elif second is not None and isinstance(second, UNFUSABLE_ACTIVATIONS):
            plan.not_fused.append(
                (name, f"followed by {type(second).__name__} (no fused int8 kernel; only ReLU fuses)")
            )
        else:
            plan.standalone.append(name)
    return plan


def _sequential_groups(model: nn.Module) -> FusionPlan:
    plan = FusionPlan()
    counts: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        counts[id(module)] = counts.get(id(module), 0) + 1
    used: set[str] = set()
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        i = 0
        while i < len(children):
            cname, head = children[i]
            full = f"{prefix}.{cname}" if prefix else cname
            second = children[i + 1][1] if i + 1 < len(children) else None
            third = children[i + 2][1] if i + 2 < len(children) else None
            is_head = type(head) in CONV_TYPES + LINEAR_TYPES or type(head) in BN_RELU_TYPES
            length = _chain_types(head, second, third) if is_head else 1
            names = [
                f"{prefix}.{children[i + k][0]}" if prefix else children[i + k][0] for k in range(length)
            ]
            if length >= 2 and any(counts[id(children[i + k][1])] > 1 for k in range(length)):
                plan.not_fused.append(
                    (full, "a module of the chain is shared (appears more than once in the model)")
                )
                length = 1
            elif length >= 2 and not any(n in used for n in names):
                plan.groups.append(tuple(names))
                used.update(names)
            elif type(head) in CONV_TYPES + LINEAR_TYPES:
                if second is not None and isinstance(second, UNFUSABLE_ACTIVATIONS):
                    plan.not_fused.append((full, f"followed by {type(second).__name__} (only ReLU fuses)"))
                else:
                    plan.standalone.append(full)
            i += max(length, 1)
    # conv/linear modules outside Sequentials were not examined
    seen = {n for g in plan.groups for n in g} | {n for n, _ in plan.not_fused} | set(plan.standalone)
    for name, module in model.named_modules():
        if type(module) in CONV_TYPES + LINEAR_TYPES and name not in seen:
            plan.not_fused.append((name, "not inside an nn.Sequential and the forward could not be traced"))
    return plan


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the conv/linear layers that int8 quantization would convert."""
    return [name for name, m in model.named_modules() if isinstance(m, CONV_TYPES + LINEAR_TYPES)]
