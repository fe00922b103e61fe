"""Whole copies of a sharded network: what a callback that needs the full network uses under FSDP2.

Under ``ModelParallelStrategy`` with ``fully_shard`` (FSDP2) each rank holds one shard of every parameter (a
``DTensor``), and the module classes are FSDP's (their hooks gather and free parameters around each forward).
Post-training quantization, the compression report's measurements and exports need a plain network with full
weights; they work on a *gathered copy*:

- :func:`skeleton`: before sharding (a callback's ``setup`` runs before ``configure_model``), a copy of the
  network's structure whose parameters and buffers live on the ``meta`` device (no memory);
- :func:`gathered_copy`: later, a plain CPU network built from that skeleton with every parameter gathered from
  its shards (a collective: every rank calls it, in the same order) and every buffer copied;
- :func:`sharded_zero_count`: the zeros and entries of a network's weights, counted on the local shards and
  summed over the ranks (no gather).

The copy costs the full network's memory on each rank for as long as it is kept: it is made once, where a
callback needs it (conversion, a report row), and dropped after.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from lightning_optim.functional.pruning.masks import full_tensor, is_sharded, mask_counts

__all__ = ["gathered_copy", "is_sharded_module", "matching_skeleton", "sharded_zero_count", "skeleton"]


def is_sharded_module(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is sharded (a ``DTensor``)."""
    return any(is_sharded(p) for p in module.parameters())


def skeleton(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are on the ``meta`` device (no data, no memory);
    ties between parameters are kept. ``module`` must not be sharded yet.

    Raises:
        ValueError: ``module`` is sharded already (take the skeleton before ``configure_model`` shards it).
    """
    if is_sharded_module(module):
        raise ValueError(
            f"{type(module).__name__} is sharded already: the skeleton of a network is taken before "
            "`configure_model` shards it (build the network in the LightningModule's `__init__`)."
        )
    memo: dict[int, object] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in memo:
            continue
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        )
    return copy.deepcopy(module, memo)


def _names(module: nn.Module) -> tuple[set[str], set[str]]:
    return {n for n, _ in module.named_parameters()}, {n for n, _ in module.named_buffers()}


def matching_skeleton(module: nn.Module, *candidates: nn.Module | None) -> nn.Module | None:
    """The first of ``candidates`` (skeletons; ``None`` skipped) with the parameter and buffer names of
    ``module``, else ``None``. Callbacks pass the skeleton the LightningModule took just before sharding
    (``ClassificationModule.unsharded_skeleton``: after every callback's setup) and their own (taken at their
    setup), as a network prepared for QAT at setup is sharded with its new structure."""
    names = _names(module)
    return next((c for c in candidates if c is not None and _names(c) == names), None)


def gathered_copy(module: nn.Module, plain: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A plain network with the weights of ``module``: ``plain`` (a :func:`skeleton`, kept unchanged) copied and
    materialized on ``device``, each parameter gathered from its shards and each buffer copied.

    A collective when ``module`` is sharded: every rank of its mesh calls it, with the same network. The copy
    has ``module``'s training mode and no gradients.

    Raises:
        ValueError: the parameter or buffer names of ``module`` and ``plain`` differ.
    """
    copied = copy.deepcopy(plain)  # still on meta: every tensor is replaced below (``to_empty`` unties ties)
    params = dict(copied.named_parameters(remove_duplicate=False))
    buffers = dict(copied.named_buffers(remove_duplicate=False))
    sources = dict(module.named_parameters(remove_duplicate=False))
    source_buffers = dict(module.named_buffers(remove_duplicate=False))
    if set(sources) != set(params) or set(source_buffers) != set(buffers):
        missing = sorted((set(params) | set(buffers)) ^ (set(sources) | set(source_buffers)))
        raise ValueError(
            f"The network changed since its skeleton was taken (names not in both: {missing[:5]}): take the "
            "skeleton of the network that is sharded."
        )
    made: dict[int, Tensor] = {}  # one new tensor per source tensor: tied parameters stay tied
    with torch.no_grad():
        # new tensors, not copies into the skeleton's: a buffer may have changed shape since the skeleton was
        # taken (a quantization observer's per-channel ranges)
        for name, src in sources.items():  # the same order on every rank: the gathers match
            if id(src) not in made:
                made[id(src)] = nn.Parameter(
                    full_tensor(src.detach()).to(device).clone(), requires_grad=params[name].requires_grad
                )
            owner, attr = _owner(copied, name)
            owner._parameters[attr] = made[id(src)]
        for name, src in source_buffers.items():
            if id(src) not in made:
                made[id(src)] = full_tensor(src.detach()).to(device).clone()
            owner, attr = _owner(copied, name)
            owner._buffers[attr] = made[id(src)]
    copied.train(module.training)
    for src, dst in zip(module.modules(), copied.modules(), strict=False):
        dst.training = src.training
    return copied


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (root.get_submodule(path) if path else root), attr


def sharded_zero_count(tensors: Iterable[Tensor]) -> tuple[int, int]:
    """``(zeros, entries)`` over ``tensors``: sharded ones counted on their local shard and summed over their
    mesh (one all-reduce when any is sharded: every rank calls it; a replicated mesh dimension counts once),
    the others counted as they are. The nonzero entries are counted by
    :func:`~lightning_optim.functional.pruning.masks.mask_counts` (the count of a sharded mask's kept entries)."""
    tensors = list(tensors)
    entries = sum(t.numel() for t in tensors)  # a DTensor's numel is the whole tensor's
    return entries - sum(mask_counts([t.ne(0) for t in tensors])), entries
