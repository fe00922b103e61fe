"""A LightningModule that trains any ``nn.Module`` classifier."""

from __future__ import annotations

import math
import re
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_optim.checks import check_choice
from lightning_optim.functional.pruning.blocks import restore_removed_blocks
from lightning_optim.functional.pruning.masks import is_sharded
from lightning_optim.functional.regularization import (
    l1_penalty,
    split_decay_parameters,
    weight_decay_param_groups,
)
from lightning_optim.functional.sharding import is_sharded_module, skeleton
from lightning_optim.modules.loss_terms import StepContext, combine_losses, unpack_batch
from lightning_optim.modules.optimizers import optimizer_factory
from lightning_optim.weights import resize_to_state_dict


def _resize_before_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a state dict saved after structured pruning removed channels gives the
    architecture its shapes first (whatever loads it: a checkpoint, ``ddp_spawn`` returning the trained weights
    to the main process, a user's ``load_state_dict``)."""
    resize_to_state_dict(module, state_dict, prefix=prefix, strict=False)


def infer_num_classes(model: nn.Module) -> int | None:
    """The model's ``num_classes`` attribute, else the ``out_features`` of its last ``nn.Linear``."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None


#: the ``sharding`` choices of :class:`ClassificationModule` (``None``: every rank holds the full network)
SHARDINGS: tuple[str, ...] = ("fsdp2",)
#: the ``sharding_param_dtype`` choices: FSDP2's ``MixedPrecisionPolicy`` gathers the parameters in this dtype for
#: the forward and backward (the shards, the gradients' reduction and the optimizer stay in float32)
SHARDING_PARAM_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


#: image sizes the dry run tries, when the data's images do not fit the model, to name one that does
PROBE_IMAGE_SIZES: tuple[int, ...] = (16, 28, 32, 64, 96, 128, 224)
_CHANNELS_ERROR = re.compile(r"expected input\[([\d, ]+)\] to have (\d+) channels, but got (\d+) channels")
_TOO_SMALL_ERROR = re.compile(
    r"Output size is too small|Kernel size can't be greater than actual input size|input size .* is too small"
)
_MATMUL_ERROR = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _with_line(err: Exception, line: str) -> Exception:
    """``err`` again (same type where it can be rebuilt from a message) with ``line`` after its message."""
    message = f"{err}\n{line}"
    try:
        new = type(err)(message)
    except Exception:  # noqa: BLE001 - an exception type whose __init__ takes other arguments
        new = None
    if new is None or str(new) != message:
        new = RuntimeError(f"{type(err).__name__}: {message}")
    return new


class ClassificationModule(pl.LightningModule):
    """Train, validate and test any ``nn.Module`` that maps inputs to class logits.

    Cross-entropy (optional label smoothing) plus terms added by callbacks through the loss-term
    extension point (:mod:`lightning_optim.modules.loss_terms`), torchmetrics accuracy (top-1, and top-5
    where there are at least 5 classes) for train/val/test, L2 as weight decay that skips biases and
    normalization parameters, L1 as a loss term, and the optimizer and scheduler injected the LightningCLI
    way.

    Training loss, step by step (``training_step``): the task loss (cross-entropy) goes into a
    :class:`~lightning_optim.modules.loss_terms.StepContext` with the inputs, targets and logits;
    :func:`~lightning_optim.modules.loss_terms.combine_losses` lets every callback that has
    ``loss_terms(trainer, pl_module, ctx)`` add named terms (and optionally scale the task loss with
    ``task_loss_weight``); then the L1 term is added. Every part is logged as ``train_loss_<name>``.
    A subclass changes the task loss by overriding :meth:`task_loss`, or adds its own terms by overriding
    ``training_step`` and calling ``combine_losses`` the same way.

    At ``setup`` (before any epoch) a dry run passes one example batch through the network, in eval mode
    without gradients: ``example_input_array`` where set, else zeros of the data module's ``input_shape``
    (batch 2; skipped when the data module has none). A network that does not fit the data fails there,
    with the fix named: other input channels than the data (``data.init_args.channels``), images too small
    for it (``image_size``), or another number of outputs than classes (the network's ``num_classes``).
    Other errors of the dry run come back with their own message and a line saying where they happened.

    Args:
        model: the network; it receives the inputs and returns logits of shape ``(batch, num_classes)``.
        num_classes: number of classes; inferred from ``model`` (its ``num_classes`` attribute or last
            ``nn.Linear``) when ``None``. The CLI links it to the data module's ``num_classes``.
        optimizer: a short name (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``,
            ``adamw``), an optimizer class path (``torch.optim.RMSprop``), or a callable
            ``params -> Optimizer`` (LightningCLI's ``OptimizerCallable``: ``class_path`` plus ``init_args``
            in YAML).
        lr_scheduler: optional callable ``optimizer -> scheduler`` (``LRSchedulerCallable``); stepped per
            epoch, or per step when ``scheduler_interval="step"``. ReduceLROnPlateau monitors
            ``scheduler_monitor``.
        lr: learning rate for every parameter group; ``None`` keeps the optimizer's own. Lightning's
            ``LearningRateFinder`` / ``Tuner.lr_find`` tune this attribute.
        weight_decay: L2 decay of weights (not biases nor normalization/embedding parameters, which are in a
            parameter group with ``weight_decay=0``); ``None`` keeps the optimizer's default for weights.
        l1: coefficient of an L1 penalty ``l1 * sum(|w|)`` on the same weights, added to the training loss.
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1)``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric that a ReduceLROnPlateau scheduler watches.
        dry_run: pass one example batch through the network at ``setup`` to check that it fits the data
            (see above); ``False`` skips it.
        sharding: ``"fsdp2"`` shards the network's parameters, gradients and optimizer state over the
            data-parallel ranks with ``torch.distributed.fsdp.fully_shard`` (FSDP2) in :meth:`configure_model`:
            each direct child of the network that holds parameters, then the network itself. Needs the
            Trainer's ``strategy`` to be ``lightning.pytorch.strategies.ModelParallelStrategy`` with
            ``tensor_parallel_size=1``. ``None`` (default): no sharding (single device, DDP).
        sharding_param_dtype: with ``sharding``, FSDP2's own mixed precision (``MixedPrecisionPolicy``):
            ``"bfloat16"`` or ``"float16"``, the dtype the parameters are gathered in for each forward and backward
            (half the all-gather traffic and the unsharded parameters' memory); the shards, the gradients'
            reduction and the optimizer state stay in float32, and so do what the callbacks read and write (masks,
            gathered copies). ``None`` (default): the parameters' own dtype.

    Raises:
        ValueError: for an unknown optimizer name, a negative ``l1``/``weight_decay``, a non-positive ``lr``,
            ``label_smoothing`` outside ``[0, 1)``, an unknown ``scheduler_interval``, or a ``num_classes``
            that disagrees with the model's output size, or an unknown ``sharding``; at ``setup``, a network
            that does not fit the data (input channels, image size, number of outputs), ``sharding`` under a
            strategy other than ``ModelParallelStrategy`` (or with tensor parallelism), or
            ``ModelParallelStrategy`` without ``sharding``.
        TypeError: if ``model`` is not an ``nn.Module``.

    Example::

        from lightning.pytorch import Trainer
        from lightning_optim import ClassificationModule, ImageClassificationDataModule
        from lightning_optim.models import ConvNet3

        module = ClassificationModule(ConvNet3(image_size=8), optimizer="adamw", lr=3e-3, weight_decay=5e-4)
        Trainer(max_epochs=3).fit(module, datamodule=ImageClassificationDataModule("digits"))
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        optimizer: str | OptimizerCallable = "adam",
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        l1: float = 0.0,
        label_smoothing: float = 0.0,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val_loss",
        dry_run: bool = True,
        sharding: str | None = None,
        sharding_param_dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.register_load_state_dict_pre_hook(_resize_before_load)
        if isinstance(optimizer, str):
            optimizer_factory(optimizer)  # validates the name now, at construction time
        if not math.isfinite(l1) or l1 < 0:  # NaN passes a plain `< 0` check
            raise ValueError(f"`l1` must be a finite number >= 0, got {l1}.")
        if weight_decay is not None and (not math.isfinite(weight_decay) or weight_decay < 0):
            raise ValueError(f"`weight_decay` must be a finite number >= 0, got {weight_decay}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {scheduler_interval!r}.")
        if lr is not None and (not math.isfinite(lr) or lr <= 0):
            raise ValueError(f"`lr` must be a finite number > 0, got {lr}.")
        if sharding is not None:
            check_choice("sharding", sharding, SHARDINGS, hint=" or null (no sharding)")
        if sharding_param_dtype is not None:
            check_choice(
                "sharding_param_dtype", sharding_param_dtype, list(SHARDING_PARAM_DTYPES), hint=" or null"
            )
            if sharding is None:
                raise ValueError(
                    f"`sharding_param_dtype`={sharding_param_dtype!r} is FSDP2's mixed precision and needs "
                    "`sharding='fsdp2'`; without sharding use the Trainer's `precision` ('bf16-mixed', '16-mixed')."
                )
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        inferred = infer_num_classes(model)
        if num_classes is not None and inferred is not None and num_classes != inferred:
            raise ValueError(
                f"`num_classes`={num_classes} (from the module or the data module) but the model outputs {inferred} "
                f"classes; set the model's `num_classes` to {num_classes}."
            )
        num_classes = num_classes if num_classes is not None else inferred
        if num_classes is None or num_classes < 2:
            raise ValueError(
                f"`num_classes` must be an int >= 2 (could not infer it from the model), got {num_classes}."
            )
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.num_classes = num_classes
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr = lr
        self.weight_decay = weight_decay
        self.l1 = l1
        self.label_smoothing = label_smoothing
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.dry_run = dry_run
        self.sharding = sharding
        self.sharding_param_dtype = sharding_param_dtype
        self._dry_run_shape: tuple[int, ...] | None = None
        self._loss_part_sums: dict[str, Tensor] = {}
        self._loss_part_samples = 0
        self._train_metrics_logged = False
        # "micro": the fraction of samples classified correctly (torchmetrics' default is the macro mean)
        metrics: dict[str, Any] = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        base = MetricCollection(metrics)
        self.train_metrics = base.clone(prefix="train_")
        self.val_metrics = base.clone(prefix="val_")
        self.test_metrics = base.clone(prefix="test_")

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: Any) -> Tensor:
        return self.model(x)

    def task_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy with ``label_smoothing``, in float32 (stable under mixed precision).

        Override it in a subclass for another task loss; loss terms from callbacks still apply."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    # ----------------------------------------------------------------------------------------- dry run
    def setup(self, stage: str) -> None:
        """Check that the network fits the data before any epoch (see :meth:`check_example_batch`), and that
        ``sharding`` fits the Trainer's strategy."""
        self._check_sharding_strategy()
        if self.dry_run:
            self.check_example_batch()

    # ----------------------------------------------------------------------------------------- sharding
    def _check_sharding_strategy(self) -> None:
        """``sharding`` needs ``ModelParallelStrategy`` without tensor parallelism, and that strategy needs
        ``sharding`` (unless a subclass parallelizes in its own ``configure_model``)."""
        trainer = self._trainer
        if trainer is None:
            return
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = trainer.strategy
        model_parallel = isinstance(strategy, ModelParallelStrategy)
        if self.sharding is None:
            if model_parallel and type(self).configure_model is ClassificationModule.configure_model:
                raise ValueError(
                    f"The Trainer's strategy is {type(strategy).__name__}, which trains only what "
                    "`configure_model` parallelizes, and `sharding` is null: set `sharding='fsdp2'` "
                    "(`model.init_args.sharding: fsdp2`) to shard the network with FSDP2, or use "
                    '`strategy="ddp"`.'
                )
            return
        if not model_parallel:
            raise ValueError(
                f"`sharding`={self.sharding!r} needs the Trainer's strategy to be "
                "lightning.pytorch.strategies.ModelParallelStrategy (e.g. `ModelParallelStrategy("
                f"data_parallel_size=2, tensor_parallel_size=1)`), got {type(strategy).__name__}: use that "
                "strategy, or `sharding=None` for a single device or DDP."
            )
        mesh = strategy.device_mesh
        tensor_parallel = (
            mesh["tensor_parallel"].size() if "tensor_parallel" in (mesh.mesh_dim_names or ()) else 1
        )
        if tensor_parallel != 1:
            raise ValueError(
                f"`sharding`={self.sharding!r} shards over the data-parallel ranks only, but the "
                f"ModelParallelStrategy has tensor_parallel_size={tensor_parallel}: set `tensor_parallel_size=1` "
                "and `data_parallel_size` to the number of processes (tensor parallelism is not supported yet)."
            )

    def configure_model(self) -> None:
        """With ``sharding="fsdp2"``: ``fully_shard`` (FSDP2) each direct child of the network that holds
        parameters, then the network itself, over the data-parallel dimension of the strategy's device mesh (a
        network that holds a captured graph, as PT2E QAT prepares it, is sharded as one unit).
        Idempotent (a module sharded already is left as it is); nothing without ``sharding``."""
        if self.sharding is None:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = self.device_mesh
        if mesh is None:  # not under ModelParallelStrategy: setup has said so already
            return
        if "data_parallel" in (mesh.mesh_dim_names or ()):
            mesh = mesh["data_parallel"]
        if not is_sharded_module(self.model):
            # the structure as it is sharded (after what callbacks did at setup: a QAT preparation), on the meta
            # device; kept outside the module's submodules (not in its state_dict)
            self.__dict__["_unsharded_skeleton"] = skeleton(self.model)
        # a captured (torch.export / PT2E) graph reads its parameters with get_attr, never calling the modules
        # that hold them, and fully_shard on a GraphModule recurses in its call: such a network is one unit
        captured = any(isinstance(m, torch.fx.GraphModule) for m in self.model.modules())
        options: dict[str, Any] = {"mesh": mesh}
        if self.sharding_param_dtype is not None:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=SHARDING_PARAM_DTYPES[self.sharding_param_dtype], reduce_dtype=torch.float32
            )
        for child in self.model.children() if not captured else ():
            if _has_parameters(child) and not isinstance(child, FSDPModule):
                fully_shard(child, **options)
        if not isinstance(self.model, FSDPModule):
            fully_shard(self.model, **options)

    def _example_batch(self) -> tuple[Tensor, str] | None:
        """``(example batch, where it comes from)``, on the network's device and dtype; ``None`` when unknown."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        if any(t.is_meta for t in tensors):  # not materialized yet (deferred initialization)
            return None
        floats = [t for t in tensors if t.is_floating_point()]
        device = tensors[0].device if tensors else torch.device("cpu")
        dtype = floats[0].dtype if floats else torch.float32
        example = self.example_input_array
        if isinstance(example, Tensor):
            return example.to(device), "`example_input_array`"
        if example is not None:
            return None  # a tuple or dict of inputs: the data module's shape is not what forward takes
        dm = self._datamodule()
        try:
            shape = getattr(dm, "input_shape", None) if dm is not None else None
        except Exception:  # noqa: BLE001 - a data module that cannot tell its shape yet: nothing to check
            shape = None
        if not isinstance(shape, (tuple, list, torch.Size)) or not all(isinstance(s, int) for s in shape):
            return None
        x = torch.zeros((2, *shape), device=device, dtype=dtype)
        return x, f"zeros of the data module's `input_shape` {tuple(shape)}"

    def _dry_forward(self, x: Tensor) -> Any:
        """The network on ``x`` in eval mode without gradients; every module's train/eval mode restored."""
        modes = {m: m.training for m in self.modules()}
        # a torch.compile'd network: run the original module (no compilation for a batch of 2)
        compiled = getattr(self.model, "_orig_mod", None)
        run = compiled if isinstance(compiled, nn.Module) else self
        try:
            self.eval()
            with torch.no_grad():
                return run(x)
        finally:
            for module, mode in modes.items():
                module.training = mode

    def check_example_batch(self) -> None:
        """Pass one example batch through the network, as :meth:`setup` does when ``dry_run`` is on.

        Cheap: batch 2 (or ``example_input_array``), eval mode, no gradients, once per input shape.

        Raises:
            ValueError: the network expects other input channels than the data give (the fix:
                ``data.init_args.channels``), the images are too small for it or of a size it was not built
                for (``image_size``), or it outputs another number of values than there are classes (the
                network's ``num_classes``).
            Exception: any other error of the network on the example batch, with its own message and a
                line saying that it happened in this dry run.
        """
        found = self._example_batch()
        if found is None:
            return
        x, origin = found
        if self._dry_run_shape == tuple(x.shape):  # checked already (fit, then test after fit)
            return
        try:
            out = self._dry_forward(x)
        except Exception as err:  # noqa: BLE001 - explained or re-raised with where it happened
            raise self._explain_dry_run_error(err, x, origin) from err
        self._check_outputs(out)
        self._dry_run_shape = tuple(x.shape)

    def _datamodule(self) -> Any:
        """The data module attached to the Trainer, if any."""
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def _check_outputs(self, out: Any) -> None:
        if not isinstance(out, Tensor) or out.dim() != 2:  # other outputs: the task loss's to judge
            return
        outputs = int(out.shape[1])
        try:
            data_classes = getattr(self._datamodule(), "num_classes", None)
        except Exception:  # noqa: BLE001 - a data module that cannot count its classes: the module's count only
            data_classes = None
        data_classes = data_classes if isinstance(data_classes, int) else None
        if outputs == self.num_classes and (data_classes is None or data_classes <= outputs):
            return
        if outputs != self.num_classes:
            wanted = self.num_classes
            data_says = f" (the data have {data_classes})" if data_classes is not None else ""
            problem = f"the module's `num_classes` is {self.num_classes}{data_says}"
        else:
            wanted, problem = data_classes, f"the data have {data_classes} classes"
        raise ValueError(
            f"The network outputs {outputs} values per sample but {problem}: set the network's `num_classes` "
            f"to {wanted} (`model.init_args.model.init_args.num_classes: {wanted}`). Found at setup by the dry "
            "run of the network on an example batch."
        )

    def _fitting_image_size(self, x: Tensor, sizes: tuple[int, ...]) -> int | None:
        """The first of ``sizes`` whose square images pass through the network, else ``None``."""
        for size in sizes:
            try:
                self._dry_forward(x.new_zeros((x.shape[0], x.shape[1], size, size)))
            except Exception:  # noqa: BLE001 - this size does not fit either
                continue
            return size
        return None

    def _explain_dry_run_error(self, err: Exception, x: Tensor, origin: str) -> Exception:
        """A ValueError naming the fix for the mismatches the dry run knows; else ``err`` with where it happened."""
        message = str(err)
        shape = tuple(x.shape[1:])
        where = (
            f"Found at setup by the dry run of the network on an example batch ({origin}, batch "
            f"{x.shape[0]}); `dry_run: false` on the module skips the check."
        )
        dm = self._datamodule()
        channels = _CHANNELS_ERROR.search(message)
        if channels is not None and [int(v) for v in channels.group(1).split(",")] == list(x.shape):
            expected, got = int(channels.group(2)), int(channels.group(3))
            if expected in (1, 3) and got in (1, 3) and hasattr(dm, "channels"):
                how = "repeats grey images to 3 channels" if expected == 3 else "makes colour images grey"
                fix = (
                    f"set `data.init_args.channels: {expected}` (ImageClassificationDataModule(channels="
                    f"{expected}) {how})"
                )
            else:
                fix = f"give the data {expected} channels, or the network {got} input channels (its `in_channels`)"
            return ValueError(
                f"The network expects {expected} input channels but the data give {got} (input shape {shape}): "
                f"{fix}. torch said: {_first_line(err)}. {where}"
            )
        too_small = _TOO_SMALL_ERROR.search(message) is not None
        matmul = _MATMUL_ERROR.search(message)
        if x.dim() == 4 and (too_small or (matmul is not None and int(matmul.group(1)) == x.shape[0])):
            h, w = int(x.shape[2]), int(x.shape[3])
            fits = (lambda s: s > max(h, w)) if too_small else (lambda s: (s, s) != (h, w))
            candidates = tuple(s for s in PROBE_IMAGE_SIZES if fits(s))
            size = self._fitting_image_size(x, candidates)
            resize = (
                f"resize the images: `data.init_args.image_size: {size}` ({size}x{size} passes through it)"
                if size is not None
                else "resize the images (the data module's `image_size`)"
            )
            problem = (
                f"The data's {h}x{w} images are too small for the network"
                if too_small
                else f"The network was built for another input size than the data's {h}x{w} images (a dense "
                f"layer expects {matmul.group(3)} features per sample and gets {matmul.group(2)})"
            )
            model_fix = (
                "a network built for this size"
                if too_small
                else f"build the network for {h}x{w} inputs (its `image_size`, or `in_features` of a dense one)"
            )
            return ValueError(f"{problem}: {resize}, or {model_fix}. torch said: {_first_line(err)}. {where}")
        return _with_line(err, where)

    # ----------------------------------------------------------------------------------------- steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, index = unpack_batch(batch)
        logits = self(x)
        ctx = StepContext("train", x, y, logits, self.task_loss(logits, y), batch, batch_idx, index)
        loss, parts = combine_losses(self, ctx)
        if self.l1 > 0:
            loss, parts = self._add_l1(loss, parts)
        self.train_metrics.update(logits.detach(), y)
        self.log(  # sync_dist: the epoch mean over every rank's batches (a scalar all-reduce per step)
            "train_loss",
            parts["total"],
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=y.shape[0],
        )
        extra = {f"train_loss_{k}": v for k, v in parts.items() if k not in ("total",) and len(parts) > 2}
        if extra:
            self._log_loss_parts(extra, batch_idx, y.shape[0])
        if self._trainer is not None and batch_idx + 1 >= self._trainer.num_training_batches:
            self._log_train_metrics()  # the epoch's last batch; the metrics were updated at every step
        return loss

    def _log_train_metrics(self) -> None:
        """Hand the training metrics (updated at every step) to Lightning, which computes them at epoch end.

        Once per epoch rather than at every step: each ``self.log`` of a metric object costs a few hundred
        microseconds on the CPU, a few percent of a small model's step."""
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        self._train_metrics_logged = True

    def _log_loss_parts(self, parts: dict[str, Tensor], batch_idx: int, batch_size: int) -> None:
        """Log the loss parts (``train_loss_task``, ``train_loss_kd``, ...): the step value every
        ``log_every_n_steps`` steps and the epoch mean (weighted by batch size) with the epoch's last batch.

        Lightning's ``self.log`` costs a few hundred microseconds per call on the CPU (it moves its stored
        results to the value's device on every call); logging every part at every step added about 10% to
        the step of a small student under distillation. The epoch sums are kept here as tensors instead.
        """
        sums = self._loss_part_sums
        for name, value in parts.items():
            previous = sums.get(name)
            value = value.detach()
            sums[name] = (
                value.float() * batch_size if previous is None else previous.add_(value, alpha=batch_size)
            )
        self._loss_part_samples += batch_size
        trainer = self._trainer
        if trainer is None:  # a training_step called by hand: nothing to log to
            return
        if (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log_dict(
                {f"{k}_step": v for k, v in parts.items()},
                on_step=True,
                on_epoch=False,
                batch_size=batch_size,
            )
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's last batch (never for unsized data)
            self._flush_loss_parts()

    def _flush_loss_parts(self) -> None:
        if self._loss_part_samples:
            means = {k: v / self._loss_part_samples for k, v in self._loss_part_sums.items()}
            self.log_dict(
                means, on_step=False, on_epoch=True, sync_dist=True, batch_size=self._loss_part_samples
            )
        self._loss_part_sums = {}
        self._loss_part_samples = 0

    def on_train_epoch_start(self) -> None:
        # not called for an epoch resumed in the middle: there, the sums restored from the checkpoint go on
        self._loss_part_sums, self._loss_part_samples = {}, 0
        self._train_metrics_logged = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the running epoch sums of the loss parts, so that a run resumed mid-epoch logs the same epoch means
        checkpoint["loss_part_sums"] = {
            "sums": {k: v.detach().cpu() for k, v in self._loss_part_sums.items()},
            "samples": self._loss_part_samples,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # blocks that block pruning replaced by identity (recorded by ProgressivePruning(granularity="blocks")):
        # replaced in the unpruned architecture too, so that the weights fit
        restore_removed_blocks(self, checkpoint)
        # a network whose channels structured pruning removed: give the architecture the saved shapes first
        # (other differences, e.g. quantization observers, are load_state_dict's to handle, as before)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            resize_to_state_dict(self, state, strict=False)
        saved = checkpoint.get("loss_part_sums")
        if saved and saved.get("samples"):
            self._loss_part_sums = {k: v.to(self.device) for k, v in saved["sums"].items()}
            self._loss_part_samples = int(saved["samples"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._broadcast_buffers()

    def on_validation_start(self) -> None:
        self._broadcast_buffers()

    def on_test_start(self) -> None:
        self._broadcast_buffers()

    def on_train_end(self) -> None:
        self._broadcast_buffers()

    @property
    def unsharded_skeleton(self) -> nn.Module | None:
        """With ``sharding``, once :meth:`configure_model` has sharded the network: its structure just before,
        with parameters on the ``meta`` device (no memory); callbacks that need the plain network
        (post-training quantization, QAT's conversion, the compression report) gather the weights into a copy of
        it (:func:`lightning_optim.functional.sharding.gathered_copy`). ``None`` otherwise."""
        return self.__dict__.get("_unsharded_skeleton")

    def _broadcast_buffers(self) -> None:
        """With ``sharding``, on several ranks: rank 0's buffers (BatchNorm running statistics) on every rank of
        the data-parallel mesh. FSDP2 shards parameters but leaves buffers per rank (each rank's statistics come
        from its own batches); DDP broadcasts rank 0's at every forward. Broadcast before each training batch, each
        evaluation and when training ends, as under DDP: every rank trains, evaluates and ends with rank 0's
        statistics (they enter the training forward under QAT, whose fused conv-bn scales the weights by them, and
        a sharded checkpoint keeps rank 0's, so a resume continues exactly). One broadcast per dtype (the buffers
        flattened together)."""
        mesh = self.device_mesh if self.sharding is not None else None
        if mesh is None or not dist.is_available() or not dist.is_initialized():
            return
        if "data_parallel" in (mesh.mesh_dim_names or ()):
            mesh = mesh["data_parallel"]
        if mesh.size() == 1:
            return
        group = mesh.get_group()
        src = dist.get_global_rank(group, 0)
        by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for buffer in self.model.buffers():
            if not is_sharded(buffer) and buffer.numel():
                by_kind.setdefault((buffer.dtype, buffer.device), []).append(buffer)
        with torch.no_grad():
            for buffers in by_kind.values():
                flat = torch.cat([b.reshape(-1) for b in buffers])
                dist.broadcast(flat, src=src, group=group)
                for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
                    b.copy_(part.view_as(b))

    def on_train_epoch_end(self) -> None:
        # an epoch cut short (max_steps, a stop request, unsized data) still logs its means and metrics
        self._flush_loss_parts()
        if not self._train_metrics_logged and any(m.update_count for m in self.train_metrics.values()):
            self._log_train_metrics()

    def l1_term(self) -> Tensor:
        """``l1 * sum(|w|)`` over the weights that weight decay applies to (not biases nor norms)."""
        decay, _ = split_decay_parameters(self.model)
        if not decay:
            return torch.zeros((), device=self.device)
        return self.l1 * l1_penalty(decay)

    def _add_l1(self, loss: Tensor, parts: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        term = self.l1_term()
        loss = loss + term.to(loss.dtype)
        parts = {**parts, "l1": term.detach()}
        parts["total"] = loss.detach()
        return loss, parts

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        x, y, _ = unpack_batch(batch)
        logits = self(x)
        loss = self.task_loss(logits, y)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = unpack_batch(batch)[0] if isinstance(batch, (tuple, list, dict)) else batch
        return torch.softmax(self(x).float(), dim=-1)

    # ----------------------------------------------------------------------------------------- optim
    def configure_optimizers(self) -> Any:
        groups = weight_decay_param_groups(self.model, self.weight_decay)
        factory = optimizer_factory(self.optimizer) if isinstance(self.optimizer, str) else self.optimizer
        optimizer = factory(groups)
        if self.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = self.lr
                group["initial_lr"] = self.lr
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
