"""Block (layer) pruning: whole residual blocks or transformer layers replaced by identity.

A *block* is a submodule that a network applies as one step of a stack of layers (a direct item of an
``nn.Sequential`` or ``nn.ModuleList``) and whose removal leaves a working network: it takes one tensor and
returns one of the same shape, so an identity can stand in its place. With a skip connection inside the block
(``x + f(x)``: residual blocks, transformer layers) removing it keeps the skip path, so the network degrades
gracefully and a short fine-tuning recovers most of the loss; this is what makes layer pruning work
(Veit et al. 2016, "Residual networks behave like ensembles of relatively shallow networks"; Fan et al. 2019,
"Reducing transformer depth on demand with structured dropout").

- :func:`find_blocks`: the candidate blocks of a network, checked on an example input;
- :func:`block_importance`: what each block is worth, measured on data: the mean increase of the loss when
  that block alone is replaced by identity;
- :func:`remove_blocks`: replace blocks by :class:`SkippedBlock` (parameter-free identity), in place;
- :func:`restore_removed_blocks`: apply the removals recorded in a Lightning checkpoint
  (``checkpoint["lightning_optim"]["removed_blocks"]``) to the unpruned architecture before its weights load.

Pure torch: no Lightning.
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from lightning_optim.checks import check_choice

#: the checkpoint entry of this package (a dict) and, in it, the removed blocks (names relative to the
#: LightningModule, e.g. ``"model.layer1.1"``)
CHECKPOINT_KEY = "lightning_optim"
REMOVED_BLOCKS_KEY = "removed_blocks"

#: ``torch.fx`` targets that add two tensors (a skip connection when one operand is the block's input)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


class BlockPruningError(ValueError):
    """A block name that is not a block of the network, or a request block pruning cannot serve."""


class SkippedBlock(nn.Module):
    """A removed block: returns its (first) input unchanged, holds no parameter.

    Args:
        block_type: the class name of the block it replaces (shown in its ``repr``).
    """

    def __init__(self, block_type: str = "") -> None:
        super().__init__()
        self.block_type = str(block_type)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x

    def extra_repr(self) -> str:
        return f"removed {self.block_type}" if self.block_type else "removed block"


# ------------------------------------------------------------------------------------------------ helpers
def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _call(model: nn.Module, x: Any) -> Any:
    """``model(x)``; a tuple or list of inputs is passed as positional arguments, a mapping as keywords."""
    if isinstance(x, (tuple, list)):
        return model(*x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(x)


def _stack_items(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the direct items of every ``nn.Sequential``/``nn.ModuleList`` in ``model``, in
    registration order."""
    items: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        for child_name, child in module.named_children():
            items.setdefault(f"{name}.{child_name}" if name else child_name, child)
    return items


class _LeafTracer(fx.Tracer):
    """Traces one block's own ``forward``: every submodule is a leaf (attention layers that unpack shapes,
    data-dependent code inside them, ... do not matter to where the skip connection is)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def is_residual(block: nn.Module) -> bool:
    """Whether ``block``'s ``forward`` adds its input (through parameter-free operations only) to a branch
    that depends on parameters: ``x + f(x)``, pre- and post-norm transformer layers, torchvision's
    ``Bottleneck``/``BasicBlock`` without downsampling. Traced with ``torch.fx``, every submodule a leaf; a
    block that cannot be traced is not residual."""
    try:
        graph = _LeafTracer().trace(block)
    except Exception:  # noqa: BLE001 - any tracing failure: not recognised as residual
        return False
    modules = dict(block.named_modules())
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return False
    free = {placeholders[0]}  # reached from the input through parameter-free operations only
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            param_free = True
        elif node.op == "call_module":
            param_free = not _has_parameters(modules[node.target])
        else:
            continue
        is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in _ADD_METHODS
        )
        if is_add:
            operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if (
                len(operands) == 2
                and any(a in free for a in operands)
                and any(a not in free for a in operands)
            ):
                return True
        if param_free and any(i in free for i in node.all_input_nodes):
            free.add(node)
    return False


def _check_names(model: nn.Module, names: Iterable[str], option: str = "names") -> list[str]:
    """``names`` as a list without duplicates, each the name of a submodule (not the root)."""
    if isinstance(names, str):
        raise BlockPruningError(f"`{option}` must be a list of block names, got the string {names!r}.")
    names = list(dict.fromkeys(names))
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(n, str) or not n or n not in modules]
    if unknown:
        examples = [n for n in _stack_items(model) if n][:8]
        raise BlockPruningError(
            f"Unknown block name(s) {unknown} in `{option}`: not submodules of {type(model).__name__} (the root "
            f"itself cannot be removed). Block names are as in `model.named_modules()`, e.g. {examples}; "
            "`find_blocks(model, example_input)` lists the candidates."
        )
    return names


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


class _ModeKept:
    """Eval mode inside, every module's ``training`` flag restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self.modes:
            m.training = mode


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS
    )


def shortcut_block(block: nn.Module) -> fx.GraphModule | None:
    """What a block with a projection shortcut computes without its branch: ``post(shortcut(x))`` for a
    ``forward`` that ends ``post(branch(x) + shortcut(x))`` (torchvision's downsampling ``Bottleneck``:
    ``relu(downsample(x))``), where ``post`` is parameter-free and the shortcut holds fewer parameters than the
    branch. A ``torch.fx.GraphModule`` over the block's own submodules (so its state-dict keys are the block's:
    ``downsample.0.weight``), or ``None`` when the block has no such shape or cannot be traced."""
    try:
        graph = _LeafTracer().trace(block)
    except Exception:  # noqa: BLE001 - not traceable: no shortcut form
        return None
    modules = dict(block.named_modules())
    outputs = [n for n in graph.nodes if n.op == "output"]
    node = outputs[0].args[0] if outputs and isinstance(outputs[0].args[0], fx.Node) else None
    while node is not None and not _is_add(node):
        inputs = node.all_input_nodes
        param_free = node.op in ("call_function", "call_method") or (
            node.op == "call_module" and not _has_parameters(modules[node.target])
        )
        node = inputs[0] if param_free and len(inputs) == 1 else None
    if node is None:
        return None
    operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    if len(operands) != 2:
        return None

    def weight(n: fx.Node) -> tuple[int, bool]:
        """Parameters the value depends on, and whether it depends on the input."""
        seen, stack, total, reaches = set(), [n], 0, False
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            if cur.op == "placeholder":
                reaches = True
            if cur.op == "call_module":
                total += sum(p.numel() for p in modules[cur.target].parameters())
            stack.extend(cur.all_input_nodes)
        return total, reaches

    (wa, ra), (wb, rb) = weight(operands[0]), weight(operands[1])
    if not (ra and rb) or wa == wb:
        return None
    shortcut = operands[0] if wa < wb else operands[1]
    node.replace_all_uses_with(shortcut)
    graph.erase_node(node)
    gm = fx.GraphModule(block, graph, class_name=f"Shortcut{type(block).__name__}")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def _replacement(block: nn.Module) -> nn.Module:
    """What removing ``block`` leaves: identity for a block with a skip connection from its input (or one
    without a shortcut form), its shortcut path for a block with a projection shortcut."""
    if not is_residual(block):
        shortcut = shortcut_block(block)
        if shortcut is not None:
            return shortcut
    return SkippedBlock(type(block).__name__)


def _removed(module: nn.Module) -> bool:
    return isinstance(module, SkippedBlock) or (
        isinstance(module, fx.GraphModule) and type(module).__name__.startswith("Shortcut")
    )


# ------------------------------------------------------------------------------------------------ API
def find_blocks(
    model: nn.Module, example_input: Any, residual_only: bool = True, shortcuts: bool = False
) -> list[str]:
    """The names of the blocks of ``model`` that can be replaced by identity.

    A candidate is a submodule (not ``model`` itself) with parameters that is a direct item of an
    ``nn.Sequential`` or ``nn.ModuleList`` (a stack of layers) and that, run on ``example_input`` (eval mode,
    no gradient; every module's training flag restored afterwards), receives one tensor (no other tensor
    argument) and returns one tensor of the same shape, at every call. With ``residual_only`` it must also
    hold a skip connection from its input (:func:`is_residual`): replacing it by identity then keeps that
    path. Blocks that change the shape (a ResNet stage's downsampling block) are never candidates.

    Where candidates nest (a candidate contains others), the innermost level is kept: torchvision ResNet's
    ``Bottleneck``/``BasicBlock`` blocks (``layer1.1``), timm ViT's ``blocks.N``, torchvision ViT's
    ``encoder.layers.encoder_layer_N``. With ``residual_only=False`` a single shape-preserving layer with
    parameters inside a ``Sequential`` block (a normalization layer, say) is such an inner candidate too.

    Args:
        model: the network.
        example_input: an input batch (a tensor; a tuple/list is passed as positional arguments, a mapping as
            keywords), on the model's device.
        residual_only: keep only blocks with a skip connection from their input.
        shortcuts: also blocks that change the shape but have a projection shortcut (a downsampling
            ``Bottleneck``): removing one keeps its shortcut path (:func:`shortcut_block`).

    Returns:
        Candidate names as in ``model.named_modules()``, in registration order.

    Raises:
        BlockPruningError: ``model`` fails on ``example_input``.
    """
    items = {n: m for n, m in _stack_items(model).items() if _has_parameters(m) and not _removed(m)}
    calls: dict[str, list[bool]] = {n: [] for n in items}
    reshaped: set[str] = set()

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            first = args[0] if args else None
            others = [*args[1:], *kwargs.values()]
            ok = (
                isinstance(first, Tensor)
                and not any(isinstance(o, Tensor) for o in others)
                and isinstance(output, Tensor)
            )
            if ok and tuple(output.shape) != tuple(first.shape):
                ok = shortcuts
                reshaped.add(name)
            calls[name].append(ok)

        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in items.items()]
    try:
        with _ModeKept(model), torch.no_grad():
            _call(model, example_input)
    except Exception as err:  # noqa: BLE001 - reported with the model's name
        what = (
            f"of shape {tuple(example_input.shape)}"
            if isinstance(example_input, Tensor)
            else f"({type(example_input).__name__})"
        )
        raise BlockPruningError(
            f"find_blocks: {type(model).__name__} failed on the example input {what}: {type(err).__name__}: {err}"
        ) from err
    finally:
        for h in handles:
            h.remove()
    found = [n for n, results in calls.items() if results and all(results)]
    if shortcuts:  # a block that changes the shape is a candidate only with a shortcut form
        found = [n for n in found if n not in reshaped or shortcut_block(items[n]) is not None]
    if residual_only:
        found = [n for n in found if n in reshaped or is_residual(items[n])]
    # nested candidates: the innermost level
    return [n for n in found if not any(o.startswith(f"{n}.") for o in found)]


@torch.no_grad()
def block_importance(
    model: nn.Module,
    names: Sequence[str],
    batches: Iterable[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Tensor],
) -> dict[str, float]:
    """What each block is worth, measured on data: the mean over ``batches`` of
    ``loss_fn(model(x), y)`` with that block alone replaced by identity, minus the loss of ``model`` as it is.

    Low (or negative) values mark the blocks whose removal costs least. Eval mode, no gradient; every block
    is put back and every module's training flag restored afterwards.

    Args:
        model: the network.
        names: the blocks to score (e.g. from :func:`find_blocks`).
        batches: ``(inputs, targets)`` pairs on the model's device (a list: it is read once per block).
        loss_fn: ``(outputs, targets) -> scalar loss`` (e.g. ``torch.nn.functional.cross_entropy``).

    Returns:
        ``{name: mean loss increase}`` in the order of ``names``.

    Raises:
        BlockPruningError: an unknown block name, or no batch.
    """
    names = _check_names(model, names)
    batches = list(batches)
    if not batches:
        raise BlockPruningError("block_importance needs at least one (inputs, targets) batch in `batches`.")

    def mean_loss() -> float:
        return sum(float(loss_fn(_call(model, x), y)) for x, y in batches) / len(batches)

    scores: dict[str, float] = {}
    with _ModeKept(model):
        base = mean_loss()
        for name in names:
            original = _replace(model, name, _replacement(model.get_submodule(name)))
            try:
                scores[name] = mean_loss() - base
            finally:
                _replace(model, name, original)
    return scores


@torch.no_grad()
def block_latency(
    model: nn.Module, names: Sequence[str], example_input: Any, repeats: int = 3
) -> dict[str, float]:
    """The time each block takes inside a forward pass of ``model`` on ``example_input``: the median over
    ``repeats`` passes (after one warm-up pass) of the wall time between the block's forward pre-hook and its
    forward hook, in milliseconds. Eval mode, no gradient; modes restored.

    Raises:
        BlockPruningError: an unknown block name, or ``repeats < 1``.
    """
    names = _check_names(model, names)
    if repeats < 1:
        raise BlockPruningError(f"`repeats` must be >= 1, got {repeats}.")
    times: dict[str, list[float]] = {n: [] for n in names}
    started: dict[str, float] = {}
    handles = []
    for name in names:
        block = model.get_submodule(name)

        def before(_m: nn.Module, _args: Any, name: str = name) -> None:
            started[name] = time.perf_counter()

        def after(_m: nn.Module, _args: Any, _out: Any, name: str = name) -> None:
            times[name].append((time.perf_counter() - started[name]) * 1e3)

        handles += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
    try:
        with _ModeKept(model):
            _call(model, example_input)  # warm-up
            for ts in times.values():
                ts.clear()
            for _ in range(repeats):
                _call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(ts) for n, ts in times.items()}


def rank_blocks(
    importance: Mapping[str, float], latency: Mapping[str, float] | None = None, ranking: str = "loss"
) -> list[str]:
    """The blocks, cheapest to remove first: by measured loss increase (``ranking="loss"``), or by loss increase
    per millisecond its removal saves (``"loss_per_latency"``: among blocks that cost about as much loss, the
    slower ones go first; blocks whose removal lowers the loss go first in both). Ties keep the given order.

    Raises:
        ValueError: an unknown ``ranking``, or ``"loss_per_latency"`` without ``latency``.
    """
    check_choice("ranking", ranking, BLOCK_RANKINGS)
    names = list(importance)
    if ranking == "loss":
        return sorted(names, key=lambda b: importance[b])
    if latency is None:
        raise ValueError("ranking='loss_per_latency' needs the blocks' `latency`.")

    def key(b: str) -> tuple[int, float]:
        gain = importance[b]
        return (0, gain) if gain <= 0 else (1, gain / max(latency[b], 1e-9))

    return sorted(names, key=key)


#: how blocks are ranked for removal (see :func:`rank_blocks`)
BLOCK_RANKINGS: tuple[str, ...] = ("loss", "loss_per_latency")


def remove_blocks(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replace each named block of ``model`` by a :class:`SkippedBlock` (in place), or, for a block with a
    projection shortcut instead of a skip connection from its input, by its shortcut path
    (:func:`shortcut_block`: its state-dict keys are the block's own).

    Blocks removed already are left as they are, so applying the same removal twice changes nothing.

    Args:
        model: the network.
        names: block names as in ``model.named_modules()``.

    Returns:
        The names replaced by this call, in the order given.

    Raises:
        BlockPruningError: (a ``ValueError``) a name that is not a submodule of ``model``.
    """
    names = _check_names(model, names)
    removed = []
    for name in names:
        block = model.get_submodule(name)
        if _removed(block):
            continue
        _replace(model, name, _replacement(block))
        removed.append(name)
    return removed


def removed_blocks_of(checkpoint: Mapping[str, Any]) -> list[str]:
    """The block names recorded in a Lightning checkpoint (``checkpoint["lightning_optim"]["removed_blocks"]``,
    relative to the LightningModule); ``[]`` when none."""
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, Mapping) else None
    names = entry.get(REMOVED_BLOCKS_KEY) if isinstance(entry, Mapping) else None
    return [str(n) for n in names] if names else []


def restore_removed_blocks(module: nn.Module, checkpoint: Mapping[str, Any]) -> list[str]:
    """Replace by :class:`SkippedBlock` the blocks that a checkpoint records as removed, so that its weights
    load into the unpruned architecture. Call it from a LightningModule's ``on_load_checkpoint`` (as
    :class:`~lightning_optim.modules.ClassificationModule` does).

    Args:
        module: the LightningModule (or the module the recorded names are relative to).
        checkpoint: the loaded checkpoint dict.

    Returns:
        The names replaced.

    Raises:
        BlockPruningError: a recorded name that is not a submodule of ``module`` (another architecture).
    """
    names = removed_blocks_of(checkpoint)
    if not names:
        return []
    try:
        return remove_blocks(module, names)
    except BlockPruningError as err:
        raise BlockPruningError(
            f"The checkpoint records removed blocks {names} (ProgressivePruning(granularity='blocks')) that "
            f"the architecture does not have: {err} Load it into the architecture it was trained with."
        ) from err


__all__ = [
    "CHECKPOINT_KEY",
    "REMOVED_BLOCKS_KEY",
    "BlockPruningError",
    "SkippedBlock",
    "block_importance",
    "find_blocks",
    "is_residual",
    "remove_blocks",
    "removed_blocks_of",
    "restore_removed_blocks",
]
