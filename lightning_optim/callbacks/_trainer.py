"""What every callback needs from the Trainer, written once: logging, rank-0 broadcast, example inputs and
evaluation batches.

- :func:`log_metrics`: metrics to every logger of the Trainer, from rank 0 only;
- :func:`broadcast_from_rank0`: rank 0's value on every rank (unchanged in a single process);
- :func:`batch_inputs`, :func:`example_from_batch`: the model inputs of a training batch, a small copy of them;
- :func:`known_input_shape`: one sample's shape from an option, ``example_input_array`` or the data module;
- :func:`eval_loader`, :func:`eval_batches`: a split's loader, and its ``(inputs, targets)`` as the model sees
  them at evaluation (the data module's transfer hooks run under the testing stage: normalized, resized,
  never augmented);
- :func:`work_progress`: a progress bar for work a callback does outside the Trainer's loops (calibration,
  measurement, export), shown on rank 0 when the Trainer shows its own progress bar;
- :func:`sharded_strategy`, :func:`refuse_sharded`: whether the Trainer shards parameters (FSDP2 through
  ``ModelParallelStrategy``, or Lightning's ``FSDPStrategy``), and the setup-time refusal of a callback (or a
  setting of one) that does not support sharded parameters yet. Every exported callback declares its support
  in the class attribute ``sharded_parameters`` (one of :data:`SHARDED_SUPPORT`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import RunningStage
from torch import Tensor

from lightning_optim.modules.loss_terms import unpack_batch

#: the splits a callback can read
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: what a callback declares in its class attribute ``sharded_parameters``: ``"supported"`` (works unchanged
#: with sharded, ``DTensor`` parameters), ``"partial"`` (some settings do; the others are refused at setup by
#: :func:`refuse_sharded`), ``"refused"`` (refused at setup under a sharding strategy)
SHARDED_SUPPORT: tuple[str, ...] = ("supported", "partial", "refused")

#: the alternative a refusal names: data parallelism, where every rank holds the full network
DDP_ALTERNATIVE = 'DDP instead (`strategy="ddp"`: every rank holds the full network)'


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send ``metrics`` to every logger of ``trainer`` at ``step`` (default: the global step), on rank 0 only."""
    if not metrics or not trainer.loggers or trainer.global_rank != 0:
        return
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


def is_distributed(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` runs several processes with an initialized process group."""
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def broadcast_from_rank0(trainer: pl.Trainer, obj: Any, tensorwise: bool = False) -> Any:
    """Rank 0's ``obj`` on every rank; ``obj`` itself in a single process.

    By default ``obj`` travels as one pickled object through ``trainer.strategy.broadcast`` (tensors keep rank
    0's devices). With ``tensorwise=True``, a mapping of tensors that all sit on the process group's device (CPU
    under gloo, CUDA under NCCL) goes tensor by tensor with ``torch.distributed.broadcast`` instead (no
    pickling; bool tensors travel as uint8): every rank must then pass the same names, shapes and dtypes (as
    pruning masks computed on every rank have).
    """
    if not is_distributed(trainer):
        return obj
    if tensorwise and isinstance(obj, Mapping) and obj and _on_group_device(obj.values()):
        out = {}
        for name, tensor in obj.items():
            buf = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.clone()
            buf = buf.contiguous()
            dist.broadcast(buf, src=0)
            out[name] = buf.bool() if tensor.dtype == torch.bool else buf
        return out
    return trainer.strategy.broadcast(obj, src=0)


def _on_group_device(values: Any) -> bool:
    """Whether every value is a dense tensor on the device the default process group communicates on."""
    device = {"gloo": "cpu", "nccl": "cuda"}.get(str(dist.get_backend()))
    return device is not None and all(
        isinstance(v, Tensor) and not v.is_quantized and v.layout == torch.strided and v.device.type == device
        for v in values
    )


def sharded_strategy(trainer: pl.Trainer | None) -> str | None:
    """A description of ``trainer``'s strategy where it shards parameters (``"ModelParallelStrategy (FSDP2)"``,
    ``"ModelParallelStrategy (tensor parallel)"`` for a ``tensor_parallel_size`` above 1, ``"FSDPStrategy"``),
    else ``None`` (single device, DDP, ...)."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if strategy is None:
        return None
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy):
        tensor_parallel = getattr(strategy, "_tensor_parallel_size", 1)
        kind = "tensor parallel" if isinstance(tensor_parallel, int) and tensor_parallel > 1 else "FSDP2"
        return f"{type(strategy).__name__} ({kind})"
    if isinstance(strategy, FSDPStrategy):
        return type(strategy).__name__
    return None


def refuse_sharded(
    trainer: pl.Trainer | None, what: str, reason: str, alternative: str = DDP_ALTERNATIVE
) -> None:
    """Refuse ``what`` (a callback, or one of its settings) under a strategy that shards parameters: a
    ``ValueError`` naming the strategy, why (``reason``) and the ``alternative``; nothing otherwise.

    Called from a callback's ``setup``, before any step and on every rank alike (no collective), so a run that
    cannot work stops at once rather than hanging on a collective or failing inside torch.

    Example::

        def setup(self, trainer, pl_module, stage):
            refuse_sharded(trainer, "CompressionReport", "it measures and copies the full network on every rank")
    """
    strategy = sharded_strategy(trainer)
    if strategy is None:
        return
    raise ValueError(
        f"{what} does not support sharded parameters (DTensor) under {strategy} yet: {reason}. Use {alternative}."
    )


def batch_inputs(batch: Any) -> Any:
    """The model inputs of a batch: ``x`` of ``(x, y)``, ``(x, y, index)`` or ``{"input": x, ...}``; the first
    element of another sequence; the batch itself otherwise (a bare tensor)."""
    try:
        return unpack_batch(batch)[0]
    except (TypeError, KeyError):
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0]
        if isinstance(batch, Mapping):
            return batch.get("input")
        return batch


def example_from_batch(batch: Any, n: int = 2) -> Tensor | None:
    """A detached CPU copy of the first ``n`` inputs of ``batch`` (dtype kept), or ``None`` if it has no tensor."""
    x = batch_inputs(batch)
    if not isinstance(x, Tensor) or x.dim() < 1:
        return None
    return x[:n].detach().cpu().clone()


def known_input_shape(
    trainer: pl.Trainer, pl_module: pl.LightningModule, input_shape: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """One sample's input shape: ``input_shape`` when given, else that of ``pl_module.example_input_array``,
    else the data module's ``input_shape``; ``None`` when none of them is known."""
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, Tensor) and example.dim() >= 1:
        return tuple(example.shape[1:])
    dm = getattr(trainer, "datamodule", None)
    shape = getattr(dm, "input_shape", None) if dm is not None else None
    return tuple(shape) if shape is not None else None


def _overrides(obj: Any, base: type, hook: str) -> bool:
    return obj is not None and getattr(type(obj), hook, None) is not getattr(base, hook, None)


def eval_loader(trainer: pl.Trainer, pl_module: pl.LightningModule | None, split: str) -> Any:
    """The dataloader of ``split``: the data module's, else the LightningModule's, else the one the Trainer
    holds (the first of several); ``None`` when there is none."""
    hook = f"{split}_dataloader"
    dm = trainer.datamodule
    if _overrides(dm, pl.LightningDataModule, hook):
        try:
            return getattr(dm, hook)()
        except Exception:  # noqa: BLE001 - e.g. a split this data module does not have
            pass
    if _overrides(pl_module, pl.LightningModule, hook):
        return getattr(pl_module, hook)()
    loader = {
        "train": trainer.train_dataloader,
        "val": trainer.val_dataloaders,
        "test": trainer.test_dataloaders,
    }[split]
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    return loader


def eval_batches(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule | None,
    split: str,
    limit: int | None = None,
    loader: Any = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(inputs, targets)`` of ``split`` (at most ``limit`` batches) as the model sees them at evaluation, on
    the CPU in float32: the data module's ``on_before_batch_transfer``/``on_after_batch_transfer`` run under the
    testing stage, so inputs are normalized and resized but never augmented.

    Args:
        trainer: the Trainer whose data is read.
        pl_module: the LightningModule (its own ``*_dataloader`` hooks are used when the data module has none).
        split: ``"train"``, ``"val"`` or ``"test"``.
        limit: the most batches to yield (``None``: all).
        loader: read this loader instead of looking one up.
    """
    loader = loader if loader is not None else eval_loader(trainer, pl_module, split)
    if loader is None:
        return
    dm = trainer.datamodule
    previous = trainer.state.stage
    trainer.state.stage = RunningStage.TESTING  # the data module's hooks see an evaluation batch
    try:
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            if dm is not None:
                batch = dm.on_before_batch_transfer(batch, 0)
                batch = dm.on_after_batch_transfer(batch, 0)
            x, y, _ = unpack_batch(batch)
            yield x.detach().float().cpu(), y.detach().cpu()
    finally:
        trainer.state.stage = previous


__all__ = [
    "DDP_ALTERNATIVE",
    "SHARDED_SUPPORT",
    "SPLITS",
    "batch_inputs",
    "broadcast_from_rank0",
    "eval_batches",
    "eval_loader",
    "example_from_batch",
    "is_distributed",
    "known_input_shape",
    "log_metrics",
    "refuse_sharded",
    "sharded_strategy",
]


def work_progress(
    trainer: pl.Trainer | None, iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None
) -> Any:
    """A ``tqdm`` progress bar over ``iterable`` (or a manual one: ``bar.update(n)``) labelled ``desc``.

    Shown on rank 0 only, and only when ``trainer`` shows a progress bar (``enable_progress_bar``); otherwise a
    silent bar with the same interface. Use it as a context manager, or iterate it::

        with work_progress(trainer, desc="Measuring", total=3) as bar:
            ...
            bar.update(1)
    """
    from tqdm.auto import tqdm

    shown = (
        trainer is not None
        and getattr(trainer, "progress_bar_callback", None) is not None
        and getattr(trainer, "global_rank", 0) == 0
    )
    return tqdm(iterable, desc=desc, total=total, disable=not shown, leave=False, dynamic_ncols=True)
