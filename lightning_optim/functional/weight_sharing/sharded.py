"""Shared weights over sharded parameters (``DTensor`` split by rows over a 1-D device mesh, as FSDP2's
``fully_shard`` splits them): each rank keeps the *local part* of every index, the codebooks are whole and the
same on every rank, and every per-cluster sum (centroid gradients, cluster means, tied optimizer moments) is
taken over the local shard and then summed over the mesh, so the result is that of one process holding the
whole tensors.

- clustering (:func:`cluster_sharded`): the weight gathered whole (:func:`full_tensor`, a collective), k-means on
  it (:func:`~lightning_optim.functional.weight_sharing.codebooks.cluster_weight`, deterministic: every rank gets
  the same codebook from the same gathered values and seed); the local index is assigned on the local shard;
- training (:func:`share_gradients_sharded_`, :func:`update_codebooks_sharded_`): per-cluster sums of the local
  gradients (or weights and counts), all layers concatenated into **one** all-reduce (SUM), written back per
  entry; :func:`tie_optimizer_states_sharded_` ties the optimizer moments the same way (one all-reduce);
- checkpoints and artifacts: :func:`gather_index` gathers a whole index from its parts, :func:`local_index`
  takes a rank's part of a whole one (no communication).

A plain (not sharded) parameter goes through the same functions as in one process (no communication). Every
function that communicates is a collective: every rank calls it with the same layers, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_optim.functional.pruning.masks import full_tensor, is_row_sharded, is_sharded, shard_like
from lightning_optim.functional.weight_sharing.codebooks import (
    SharedWeight,
    _cluster_sums,
    assign,
    cluster_sizes,
    cluster_weight,
)


@dataclass(frozen=True)
class ShardLayout:
    """How a sharded parameter is split: enough to rebuild a ``DTensor`` from a local part (its mesh, placements,
    whole shape and stride)."""

    mesh: Any
    placements: tuple[Any, ...]
    shape: torch.Size
    stride: tuple[int, ...]

    @classmethod
    def of(cls, param: Tensor) -> ShardLayout | None:
        """The layout of ``param`` when it is sharded, else ``None``."""
        if not is_sharded(param):
            return None
        return cls(param.device_mesh, tuple(param.placements), param.shape, tuple(param.stride()))  # type: ignore[attr-defined]


def check_row_sharded(name: str, param: Tensor) -> None:
    """Refuse a sharded parameter that is not split by rows over a 1-D mesh (FSDP2's ``Shard(0)``): the local
    per-cluster sums are summed over one mesh dimension, which needs every entry on exactly one rank.

    Raises:
        ValueError: ``param`` is a ``DTensor`` with other placements (tensor parallelism, HSDP's 2-D mesh).
    """
    if is_sharded(param) and not is_row_sharded(param):
        raise ValueError(
            f"WeightSharing shares sharded weights split by rows over a 1-D device mesh (FSDP2's `fully_shard`); "
            f"{name} is split as {list(param.placements)} over a {param.device_mesh.ndim}-D mesh: use "  # type: ignore[attr-defined]
            'FSDP2 (`ClassificationModule(sharding="fsdp2")`, tensor_parallel_size=1) or `strategy="ddp"`.'
        )


def local_part(t: Tensor) -> Tensor:
    """This rank's part of a ``DTensor`` (a view: writing into it writes the shard), any other tensor itself."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def _group(layouts: Sequence[ShardLayout | None]) -> Any:
    """The process group of the sharded layouts' (common) mesh, ``None`` when none is sharded."""
    meshes = [lay.mesh for lay in layouts if lay is not None]
    if not meshes:
        return None
    if any(m != meshes[0] for m in meshes[1:]):
        raise ValueError(
            "WeightSharing: the shared weights are sharded over different device meshes (one only)."
        )
    return meshes[0].get_group()


def _all_reduce_(t: Tensor, group: Any) -> Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def local_index(index: Tensor, param: Tensor) -> Tensor:
    """This rank's part of a whole ``index`` of ``param``'s shape, split as ``param`` is (no communication);
    ``index`` itself for a plain parameter."""
    if not is_sharded(param):
        return index
    device = local_part(param).device
    return shard_like(index.to(device), param).to_local().clone()  # type: ignore[attr-defined]


def gather_index(index: Tensor, layout: ShardLayout | None) -> Tensor:
    """The whole index from the ranks' local parts (a collective over the layout's mesh; ``index`` itself when
    ``layout`` is ``None``). It travels as ``int32``."""
    if layout is None:
        return index
    from torch.distributed.tensor import DTensor

    part = DTensor.from_local(
        index.to(torch.int32),
        layout.mesh,
        layout.placements,
        run_check=False,
        shape=layout.shape,
        stride=layout.stride,
    )
    return full_tensor(part).to(torch.int64)


def gathered_shared(shared: SharedWeight, layout: ShardLayout | None) -> SharedWeight:
    """``shared`` with its whole index (a collective for a sharded layer: see :func:`gather_index`)."""
    return SharedWeight(shared.codebook, gather_index(shared.index, layout))


@torch.no_grad()
def cluster_sharded(
    param: Tensor,
    bits: int,
    init: str = "linear",
    max_iter: int = 300,
    generator: torch.Generator | None = None,
    name: str = "weight",
) -> tuple[SharedWeight, SharedWeight]:
    """Cluster a (possibly sharded) weight as one process would: ``(local, whole)``, the local part (the codebook
    and this rank's part of the index, on the local shard's device) and the whole result (the codebook and the
    whole index). A sharded weight is gathered first (a collective: every rank calls this, in the same order);
    k-means is deterministic for the same values and ``generator`` seed, so every rank finds the same codebook.

    Raises:
        ValueError: as :func:`~lightning_optim.functional.weight_sharing.codebooks.cluster_weight`.
    """
    whole = cluster_weight(full_tensor(param.detach()), bits, init, max_iter, generator, name=name)
    if not is_sharded(param):
        return whole, whole
    local = local_part(param.detach())
    codebook = whole.codebook.to(local.device)
    index = torch.full(local.shape, whole.k, dtype=torch.int64, device=local.device)
    nonzero = local != 0
    index[nonzero] = assign(local[nonzero], codebook)  # the nearest centroid, as k-means assigned it
    return SharedWeight(codebook, index), whole


def _local_sums(values: Tensor, shared: SharedWeight) -> Tensor:
    """Per-cluster sums (float64, ``k`` entries) of ``values``' local part."""
    return _cluster_sums(local_part(values), shared)[:-1]


def _reduced(parts: list[Tensor], layouts: Sequence[ShardLayout | None]) -> list[Tensor]:
    """``parts`` (one float64 vector per layer) with the sharded layers' vectors summed over the mesh: one
    all-reduce for all of them (the plain layers' are left as they are)."""
    group = _group(layouts)
    sharded = [i for i, lay in enumerate(layouts) if lay is not None]
    if group is None or not sharded:
        return parts
    flat = _all_reduce_(torch.cat([parts[i] for i in sharded]), group)
    out, offset = list(parts), 0
    for i in sharded:
        n = parts[i].numel()
        out[i] = flat[offset : offset + n]
        offset += n
    return out


@torch.no_grad()
def share_gradients_sharded_(
    params: Sequence[Tensor], shared: Sequence[SharedWeight], layouts: Sequence[ShardLayout | None]
) -> None:
    """:func:`~lightning_optim.functional.weight_sharing.codebooks.share_gradients_` for several layers, sharded
    or not: each layer's centroid gradients are summed over its local gradient, then over the mesh (one
    all-reduce for all the layers), and written to every entry of the local gradient. A collective when any
    layer is sharded (every rank calls it with the same layers; a layer without a gradient counts zeros)."""
    parts = []
    for p, s in zip(params, shared, strict=True):
        grad = p.grad
        parts.append(
            _local_sums(grad, s)
            if grad is not None
            else torch.zeros(s.k, dtype=torch.float64, device=s.index.device)
        )
    parts = _reduced(parts, layouts)
    for p, s, sums in zip(params, shared, parts, strict=True):
        if p.grad is None:
            continue
        grad = local_part(p.grad)
        table = torch.cat([sums.float(), sums.new_zeros(1, dtype=torch.float32)])
        grad.copy_(table[s.index].to(grad.dtype))


@torch.no_grad()
def update_codebooks_sharded_(
    params: Sequence[Tensor],
    shared: Sequence[SharedWeight],
    layouts: Sequence[ShardLayout | None],
    train: bool = True,
) -> list[SharedWeight]:
    """:func:`~lightning_optim.functional.weight_sharing.codebooks.update_codebook_` for several layers, sharded or
    not: entries set to exactly zero since leave their cluster (locally); with ``train``, each centroid becomes the
    mean of its weights over the whole tensor (the local sums and counts of every layer summed over the mesh in one
    all-reduce; an empty cluster keeps its centroid); the codebook's values are written to the local shard. A
    collective with ``train`` when any layer is sharded."""
    counted = []
    for p, s in zip(params, shared, strict=True):
        local = local_part(p)
        dropped = (local == 0) & (s.index != s.k)
        if bool(dropped.any()):
            s.index[dropped] = s.k
        if train:
            counted.append(torch.cat([_local_sums(local, s), cluster_sizes(s).to(torch.float64)]))
    if train:
        counted = _reduced(counted, layouts)
    out = []
    for i, (p, s) in enumerate(zip(params, shared, strict=True)):
        codebook = s.codebook
        if train:
            sums, counts = counted[i][: s.k], counted[i][s.k :]
            means = sums / counts
            codebook = torch.where(counts > 0, means, codebook.double()).float()
        updated = SharedWeight(codebook, s.index)
        local = local_part(p)
        table = torch.cat([codebook.to(local.device).flatten(), codebook.new_zeros(1, device=local.device)])
        local.copy_(table[s.index].to(local.dtype))
        out.append(updated)
    return out


@torch.no_grad()
def tie_optimizer_states_sharded_(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    shared: Sequence[SharedWeight],
    layouts: Sequence[ShardLayout | None],
) -> None:
    """:func:`~lightning_optim.functional.weight_sharing.codebooks.tie_optimizer_state_` for several layers,
    sharded or not: each per-entry state tensor (momentum, Adam's moments) becomes its cluster mean over the
    whole tensor (0 on the zero entries), the local sums of all of them summed over the mesh in one all-reduce. A
    collective when any layer is sharded (the optimizer's state has the same keys on every rank)."""
    entries: list[tuple[Tensor, SharedWeight]] = []
    entry_layouts: list[ShardLayout | None] = []
    for p, s, layout in zip(params, shared, layouts, strict=True):
        state = optimizer.state.get(p)
        for key in sorted(state or {}):
            value = state[key]
            if isinstance(value, Tensor) and value.shape == p.shape and value.is_floating_point():
                entries.append((value, s))
                entry_layouts.append(layout)
    if not entries:
        return
    parts = [torch.cat([_local_sums(v, s), cluster_sizes(s).to(torch.float64)]) for v, s in entries]
    parts = _reduced(parts, entry_layouts)
    for (value, s), summed in zip(entries, parts, strict=True):
        means = torch.nan_to_num(summed[: s.k] / summed[s.k :], nan=0.0)
        local = local_part(value)
        table = torch.cat([means, means.new_zeros(1)]).to(local.device)
        local.copy_(table[s.index].to(local.dtype))


def used_centroids(shared: SharedWeight, layout: ShardLayout | None) -> int:
    """Centroids that at least one weight of the whole tensor uses (a collective for a sharded layer)."""
    sizes = cluster_sizes(shared).to(torch.float64)
    if layout is not None:
        sizes = _all_reduce_(sizes, layout.mesh.get_group())
    return int((sizes > 0).sum())


__all__ = [
    "ShardLayout",
    "check_row_sharded",
    "cluster_sharded",
    "gather_index",
    "gathered_shared",
    "local_index",
    "local_part",
    "share_gradients_sharded_",
    "tie_optimizer_states_sharded_",
    "update_codebooks_sharded_",
    "used_centroids",
]
