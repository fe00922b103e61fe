"""Teacher handling for distillation: checkpoint loading, freezing, sharding, and a memory-bounded logit cache.

The teacher is kept *outside* the student's ``LightningModule`` (so it is never wrapped by DDP, never
synchronized and never written into the student's checkpoints) inside a :class:`FrozenTeacher`, which
stays in eval mode whatever ``train()`` calls it receives. Under sharded training (FSDP2) it is either
replicated on every rank (a plain module, as under DDP) or sharded itself with :func:`shard_teacher`
(:data:`TEACHER_SHARDINGS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_optim.weights import load_weights, state_dict_from_checkpoint

#: how the teacher lives under sharded training: ``"replicate"`` (a whole, plain copy on every rank, outside
#: FSDP) or ``"fsdp2"`` (sharded with ``fully_shard`` over the student's data-parallel mesh, gathered for each
#: forward and freed after it)
TEACHER_SHARDINGS: tuple[str, ...] = ("replicate", "fsdp2")


class FrozenTeacher(nn.Module):
    """A frozen, always-eval wrapper around a teacher network.

    Parameters get ``requires_grad=False``; :meth:`train` ignores its argument and keeps eval mode (so
    dropout stays off and batch-norm statistics stay fixed even if something calls ``.train()``), and
    :meth:`forward` runs under ``torch.no_grad()``.

    Args:
        module: the teacher network.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.module.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Keep eval mode (``mode`` is ignored)."""
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def memory_bytes(self) -> int:
        """Bytes held by the teacher's parameters and buffers on this process (a sharded teacher's parameters:
        the local shards only)."""
        tensors = [_local(t) for t in (*self.module.parameters(), *self.module.buffers())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def is_sharded(self) -> bool:
        """Whether the teacher has been sharded by :func:`shard_teacher`."""
        from torch.distributed.fsdp import FSDPModule

        return isinstance(self.module, FSDPModule)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def _local(t: Tensor) -> Tensor:
    """The local shard of a ``DTensor``; any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def shard_teacher(teacher: FrozenTeacher, mesh: Any) -> bool:
    """Shard the frozen ``teacher`` with FSDP2 (``fully_shard``) over the 1-D device ``mesh``, in place: each
    direct child of the network that holds parameters, then the network itself, all with
    ``reshard_after_forward=True`` (the root too), so the whole weights exist only during a forward.

    A sharded teacher's forward is a collective: every rank of ``mesh`` must run it, in the same order (one
    forward per training step on every rank). Its parameters stay frozen; nothing of it is ever trained, so no
    gradient is reduced. Idempotent: returns ``False`` (and does nothing) when the teacher is sharded already,
    ``True`` when it was sharded now.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if teacher.is_sharded():
        return False
    network = teacher.module
    for child in network.children():
        if any(True for _ in child.parameters()) and not isinstance(child, FSDPModule):
            fully_shard(child, mesh=mesh, reshard_after_forward=True)
    fully_shard(network, mesh=mesh, reshard_after_forward=True)
    teacher.train(False)
    return True


def teacher_state_dict_from_checkpoint(checkpoint: Any, prefix: str = "model.") -> dict[str, Tensor]:
    """The teacher network's state dict inside a loaded checkpoint (see
    :func:`~lightning_optim.weights.state_dict_from_checkpoint`)."""
    return state_dict_from_checkpoint(checkpoint, "teacher_checkpoint", prefix)


def load_teacher_weights(teacher: nn.Module, checkpoint_path: str | os.PathLike) -> nn.Module:
    """Load the weights of ``checkpoint_path`` into the architecture ``teacher`` (in place, strict).

    Read with ``torch.load(..., weights_only=True, map_location="cpu")``; errors name ``teacher_checkpoint``
    (see :func:`~lightning_optim.weights.load_weights`).
    """
    return load_weights(teacher, checkpoint_path, "teacher_checkpoint")


class TeacherLogitCache:
    """Teacher logits stored once per training sample, keyed by dataset index, within a memory bound.

    Rows are allocated on first use, up to ``max_bytes`` in total; samples beyond that bound are simply not
    cached (the teacher keeps running for them). Values are stored in float32, so a cached row equals the
    online teacher output exactly.

    Args:
        max_bytes: bound on the memory of the stored logits (the index table is extra: 8 bytes per sample).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"`max_bytes` must be > 0, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self.values: Tensor | None = None
        self.slot_of = torch.empty(0, dtype=torch.long)
        self.size = 0
        self.capacity = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return 0 if self.values is None else self.size * self.values.shape[1] * self.values.element_size()

    def lookup(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(hit_mask, rows)`` for sample indices ``index``; ``rows`` holds the cached logits of the hits."""
        index = index.to(self.slot_of.device, torch.long)
        if self.values is None or self.slot_of.numel() == 0:
            return torch.zeros_like(index, dtype=torch.bool), None
        if index.numel() and int(index.max()) < self.slot_of.numel():  # every index has an entry (usual)
            slots = self.slot_of[index]
            hit = slots >= 0
            return hit, self.values[slots if bool(hit.all()) else slots[hit]]
        hit = torch.zeros_like(index, dtype=torch.bool)
        inside = index < self.slot_of.numel()
        slots = torch.full_like(index, -1)
        slots[inside] = self.slot_of[index[inside]]
        hit = slots >= 0
        return hit, self.values[slots[hit]]

    def insert(self, index: Tensor, logits: Tensor) -> int:
        """Store ``logits`` (``(n, classes)``) for ``index`` while there is room; returns how many were stored."""
        logits = logits.detach().float()
        if self.values is None:
            row_bytes = logits.shape[1] * 4
            self.capacity = max(self.max_bytes // row_bytes, 0)
            self.values = torch.empty(self.capacity, logits.shape[1], device=logits.device)
            self.slot_of = torch.full((0,), -1, dtype=torch.long, device=logits.device)
        if logits.shape[1] != self.values.shape[1]:
            raise ValueError(
                f"Cached logits have {self.values.shape[1]} classes, new ones {logits.shape[1]}."
            )
        index = index.to(self.slot_of.device, torch.long)
        if (
            index.numel() and torch.unique(index).numel() != index.numel()
        ):  # keep the first of repeated indices
            uniq, inverse = torch.unique(index, return_inverse=True)
            positions = torch.arange(index.numel(), device=index.device)
            first = torch.full((uniq.numel(),), index.numel(), dtype=torch.long, device=index.device)
            first = (
                first.scatter_reduce(0, inverse, positions, reduce="amin").sort().values
            )  # keep batch order
            index, logits = index[first], logits[first.to(logits.device)]
        top = int(index.max().item()) + 1 if index.numel() else 0
        if top > self.slot_of.numel():
            grow = max(top, 2 * self.slot_of.numel())
            extra = torch.full(
                (grow - self.slot_of.numel(),), -1, dtype=torch.long, device=self.slot_of.device
            )
            self.slot_of = torch.cat([self.slot_of, extra])
        new = self.slot_of[index] < 0
        index, logits = index[new], logits[new]
        room = self.capacity - self.size
        if room <= 0 or index.numel() == 0:
            return 0
        index, logits = index[:room], logits[:room]
        slots = torch.arange(self.size, self.size + index.numel(), device=self.slot_of.device)
        self.values[slots] = logits.to(self.values.device)
        self.slot_of[index] = slots
        self.size += int(index.numel())
        return int(index.numel())

    def clear(self) -> None:
        self.values = None
        self.slot_of = torch.empty(0, dtype=torch.long)
        self.size = 0
        self.capacity = 0


def logits_through_cache(
    cache: TeacherLogitCache,
    index: Tensor,
    inputs: Tensor,
    forward: Callable[[Tensor], Tensor],
    lockstep: Callable[[bool], bool] | None = None,
) -> tuple[Tensor, int]:
    """The teacher logits of a batch with sample indices ``index``, and how many came from ``cache``.

    Rows the cache holds are served from it; ``forward`` runs on the other inputs only, and its logits are
    stored in the cache (while there is room). Served rows are float32; a batch with no hit returns
    ``forward``'s logits in float32.

    ``lockstep``, for a teacher whose forward is a collective (sharded over several processes): told whether
    this process needs the teacher for this batch, it answers whether any process does (an all-reduce). When
    another process does and this one has every row cached, ``forward`` still runs here, on an empty batch, so
    that every process takes part in the same collectives; when none does, none runs it.
    """
    hit, rows = cache.lookup(index)
    n_hit = index.numel() if rows is not None and rows.shape[0] == index.numel() else int(hit.sum().item())
    needed = n_hit < index.numel()
    if lockstep is not None and lockstep(needed) and not needed:
        forward(inputs[:0])  # an empty batch: this process's part of the others' teacher forward
    if not needed:
        return rows, n_hit
    miss = ~hit
    computed = forward(inputs[miss.to(inputs.device)])
    cache.insert(index[miss], computed)
    if n_hit == 0:
        return computed.float(), n_hit
    logits = torch.empty(index.numel(), computed.shape[-1], device=computed.device, dtype=torch.float32)
    logits[miss.to(logits.device)] = computed.float()
    logits[hit.to(logits.device)] = rows.to(logits.device)
    return logits, n_hit
