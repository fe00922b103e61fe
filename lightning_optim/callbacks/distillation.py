"""Teacher-student knowledge distillation as a callback (Hinton, Vinyals, Dean 2015; FitNets-style features)."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_optim.callbacks._trainer import (
    DDP_ALTERNATIVE,
    is_distributed,
    known_input_shape,
    refuse_sharded,
    sharded_strategy,
)
from lightning_optim.callbacks.phases import PhaseState, target_model
from lightning_optim.checks import check_choice
from lightning_optim.functional.distillation.features import (
    adapter_optimizer_like,
    build_feature_adapters,
    dry_run,
    feature_pairs_loss,
    first_tensor,
    get_layer,
    hook_feature_pairs,
)
from lightning_optim.functional.distillation.losses import (
    DISTILLATION_RAMPS,
    FEATURE_LOSSES,
    check_alpha,
    check_logit_shapes,
    check_temperature,
    kd_loss,
    ramp_length,
    ramp_progress,
    scheduled_value,
)
from lightning_optim.functional.distillation.teacher import (
    TEACHER_SHARDINGS,
    FrozenTeacher,
    TeacherLogitCache,
    load_teacher_weights,
    logits_through_cache,
    shard_teacher,
)
from lightning_optim.models.ensemble import LogitEnsemble
from lightning_optim.modules.loss_terms import StepContext


class KnowledgeDistillation(Callback):
    r"""Train the student under a frozen teacher: Hinton et al.'s soft targets plus optional feature matching.

    The training loss of a module that uses the loss-term extension point
    (:mod:`lightning_optim.modules.loss_terms`, as :class:`~lightning_optim.modules.ClassificationModule`
    does) becomes

    .. math:: \alpha \, T^2 \, \mathrm{KL}(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T))
              + (1 - \alpha)\, \mathrm{CE}(s, y) + w_f \sum_{\text{pairs}} d(A(f_s), f_t)

    logged as ``train_loss_task`` (the unweighted CE), ``train_loss_kd`` (the weighted KD term),
    ``train_loss_feature`` and ``train_loss``; temperature, alpha, teacher time per step and cache hit rate
    go to the logger once per epoch as ``distill/*``.

    The teacher lives on the callback, not in the LightningModule: it is never wrapped by DDP (no
    ``find_unused_parameters`` needed, no gradient sync), never written into the student's checkpoints, kept
    frozen and in eval mode (also when Lightning calls ``.train()``), moved to the student's device at fit
    start and run under ``no_grad`` inside the training step, hence under the same autocast as the student.
    In a run of several processes rank 0's teacher (and adapter) weights are broadcast to every rank at fit
    start, so every rank distils from the same teacher even when the ranks built it differently.

    **Feature distillation**: ``feature_pairs`` maps student layer names (inside ``pl_module.model``) to
    teacher layer names. Forward hooks are registered at fit start and removed at fit end. Where the shapes
    differ a learned adapter (1x1 conv, or linear on flattened features) maps the student feature to the
    teacher's shape. Adapters are built at ``setup`` (shapes from a dry run on ``input_shape``), added to the
    first optimizer as an extra parameter group at fit start (so their optimizer state is checkpointed and
    restored on resume), saved in this callback's state (not the student's ``state_dict``, so the exported
    student carries no adapter), and their gradients are averaged across DDP ranks before each optimizer
    step. A learning-rate scheduler created before the group was added leaves the adapters' learning rate
    at ``adapter_lr`` (most schedulers) -- give them their own ``adapter_lr`` if that matters.

    **Offline mode** (``cache_teacher_logits=True``): for training data that is *not* augmented, teacher
    logits are stored once per sample (keyed by the dataset index of the data module's ``return_index=True``,
    within ``cache_max_mb``) and reused instead of running the teacher every step. The cache is not
    checkpointed (it refills in one epoch after a resume). It cannot be combined with feature pairs, which
    need the teacher's activations every step.

    **Sharded training (FSDP2)**: under Lightning's ``ModelParallelStrategy`` with a student sharded by
    ``fully_shard`` (``ClassificationModule(sharding="fsdp2")``) the teacher is, by ``teacher_sharding``,
    ``"replicate"`` (the default: a whole, plain copy on every rank, outside FSDP, as under DDP) or ``"fsdp2"``
    (sharded with ``fully_shard`` over the student's data-parallel mesh at fit start: each rank keeps one shard,
    the whole weights are gathered for each forward and freed after it; forward only, never a gradient). Either
    way the teacher stays on the callback, never in the student's checkpoint. Each rank distils its own batch;
    FSDP2 averages the student's gradients over the ranks, so 2 ranks with batch B train as one process with
    batch 2B. Feature adapters stay whole on every rank (they are small); their gradients are averaged over the
    ranks, and since FSDP2's optimizer state is saved by the sharded network's parameter names, they get their
    own optimizer (the student optimizer's class and settings, ``adapter_lr``), saved in this callback's state
    with the adapters. With ``cache_teacher_logits`` and a sharded teacher, the ranks agree at each step whether
    any of them needs the teacher (one all-reduce) and run it together. Lightning's ``FSDPStrategy`` (FSDP1) is
    refused at setup.

    **Phase**: ``phase_name = "distillation"``. ``phase_state`` is ``"pending"`` before ``start_epoch``,
    ``"active"`` until ``end_epoch`` (or, without an end epoch, while a temperature/alpha ramp is running),
    ``"done"`` afterwards. Without ``end_epoch`` and ramp, distillation is a loss on the whole run that does
    not change the model's structure, so it is ``"done"`` from ``start_epoch`` on and does not hold off
    :class:`EarlyStopping`. Messages say what runs instead (:meth:`describe_phase`): ``"running (epoch 3 of
    5)"`` while it distills, ``"done"`` once it no longer does.

    Args:
        teacher: the teacher network (in YAML: ``class_path`` + ``init_args``); with ``teacher_checkpoint``
            this is the architecture its weights are loaded into.
        teacher_checkpoint: a Lightning checkpoint of a :class:`~lightning_optim.modules.ClassificationModule`
            (or a plain state dict) holding the teacher's weights; read with ``weights_only=True``.
        temperature: softmax temperature ``T > 0`` (at the start of a ramp).
        alpha: weight of the KD term in ``[0, 1]``; the task loss gets ``1 - alpha``.
        final_temperature: with a ramp, the temperature reached after ``schedule_epochs``.
        final_alpha: with a ramp, the alpha reached after ``schedule_epochs``.
        schedule: ramp shape, ``"linear"`` or ``"cosine"``.
        schedule_epochs: ramp length in epochs from ``start_epoch`` (default: to ``end_epoch``, else
            ``max_epochs``); progress is per step.
        start_epoch: first epoch that distills.
        end_epoch: first epoch that no longer distills (``None``: to the end of training).
        feature_pairs: ``{student_layer: teacher_layer}`` of intermediate features to match.
        feature_loss: ``"mse"`` or ``"cosine"``.
        feature_weight: weight ``w_f`` of the feature term, ``>= 0``.
        adapter_lr: learning rate of the adapters' parameter group (default: the first group's).
        input_shape: per-sample input shape for the dry run that sizes adapters and checks output shapes
            (default: ``pl_module.example_input_array``, else the data module's ``input_shape``).
        cache_teacher_logits: offline mode (see above); needs ``return_index=True`` on the data module and
            no training augmentation.
        cache_max_mb: memory bound of the logit cache in MiB.
        teacher_sharding: under a sharding strategy, ``"replicate"`` or ``"fsdp2"`` (see above); ``None``:
            ``"replicate"``. Without a sharding strategy ``"replicate"`` is what happens anyway (accepted, no
            effect) and ``"fsdp2"`` is refused at setup.

    Raises:
        ValueError: ``temperature``/``final_temperature`` <= 0, ``alpha``/``final_alpha`` outside [0, 1], an
            unknown ``schedule`` or ``feature_loss``, a teacher layer in ``feature_pairs`` that does not exist,
            a negative ``feature_weight``, ``start_epoch < 0``, ``end_epoch <= start_epoch``, a non-positive
            ``schedule_epochs``/``cache_max_mb``/``adapter_lr``, ``cache_teacher_logits`` with
            ``feature_pairs``, an unknown ``teacher_sharding``, or a ``teacher_checkpoint`` that does not fit
            ``teacher``. At setup: ``teacher_sharding="fsdp2"`` without a sharding strategy, Lightning's
            ``FSDPStrategy`` (only FSDP2 through ``ModelParallelStrategy`` is supported), an unknown
            student layer, teacher/student output shapes that differ, offline mode on augmented data or
            without sample indices, or ``start_epoch`` not before ``max_epochs`` (an ``end_epoch`` or ramp that
            ends after the run gets a warning). On resume, with ``feature_pairs``, a checkpoint without this
            callback's state (its adapters): refused; without feature pairs such a resume goes on with a warning.
        FileNotFoundError: ``teacher_checkpoint`` does not exist.
        TypeError: ``teacher`` is not an ``nn.Module``.

    Example::

        teacher = ConvNet3()
        kd = KnowledgeDistillation(teacher, teacher_checkpoint="runs/teacher.ckpt", temperature=4.0, alpha=0.9)
        student = ClassificationModule(LeNet300100(hidden=(32, 32)))
        Trainer(max_epochs=10, callbacks=[kd]).fit(student, datamodule=dm)
    """

    #: works with a student sharded by FSDP2 (``ModelParallelStrategy``): the teacher replicated or sharded by
    #: ``teacher_sharding``, feature adapters replicated with averaged gradients (``FSDPStrategy``: refused)
    sharded_parameters = "supported"

    phase_name = "distillation"

    def __init__(
        self,
        teacher: nn.Module,
        teacher_checkpoint: str | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
        final_temperature: float | None = None,
        final_alpha: float | None = None,
        schedule: str = "linear",
        schedule_epochs: int | None = None,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        feature_pairs: dict[str, str] | None = None,
        feature_loss: str = "mse",
        feature_weight: float = 1.0,
        adapter_lr: float | None = None,
        input_shape: tuple[int, ...] | None = None,
        cache_teacher_logits: bool = False,
        cache_max_mb: float = 256.0,
        teacher_sharding: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(
                f"`teacher` must be an nn.Module (the architecture), got {type(teacher).__name__}."
            )
        self.temperature = check_temperature(temperature, "temperature")
        self.alpha = check_alpha(alpha, "alpha")
        self.final_temperature = (
            None if final_temperature is None else check_temperature(final_temperature, "final_temperature")
        )
        self.final_alpha = None if final_alpha is None else check_alpha(final_alpha, "final_alpha")
        check_choice("schedule", schedule, DISTILLATION_RAMPS)
        if schedule_epochs is not None and schedule_epochs < 1:
            raise ValueError(f"`schedule_epochs` must be >= 1 or None, got {schedule_epochs}.")
        if start_epoch < 0:
            raise ValueError(f"`start_epoch` must be >= 0, got {start_epoch}.")
        if end_epoch is not None and end_epoch <= start_epoch:
            raise ValueError(f"`end_epoch` must be > `start_epoch` ({start_epoch}) or None, got {end_epoch}.")
        check_choice("feature_loss", feature_loss, FEATURE_LOSSES)
        if not math.isfinite(feature_weight) or feature_weight < 0:
            raise ValueError(f"`feature_weight` must be >= 0 and finite, got {feature_weight}.")
        if adapter_lr is not None and (not math.isfinite(adapter_lr) or adapter_lr <= 0):
            raise ValueError(f"`adapter_lr` must be > 0 and finite, or None, got {adapter_lr}.")
        if cache_max_mb <= 0:
            raise ValueError(f"`cache_max_mb` must be > 0, got {cache_max_mb}.")
        if teacher_sharding is not None:
            check_choice("teacher_sharding", teacher_sharding, TEACHER_SHARDINGS, hint=" or null (replicate)")
        feature_pairs = dict(feature_pairs or {})
        if cache_teacher_logits and feature_pairs:
            raise ValueError(
                "`cache_teacher_logits=True` cannot be combined with `feature_pairs`: feature matching needs the "
                "teacher's activations at every step. Use one or the other."
            )
        if teacher_checkpoint is not None:
            load_teacher_weights(teacher, teacher_checkpoint)
        for teacher_layer in feature_pairs.values():
            get_layer(teacher, teacher_layer, "feature_pairs", "teacher")
        _warn_if_ensemble_temperature_differs(teacher, self.temperature, self.final_temperature)
        self.teacher = FrozenTeacher(teacher)
        self.teacher_checkpoint = teacher_checkpoint
        self.schedule = schedule
        self.schedule_epochs = schedule_epochs
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.feature_pairs = feature_pairs
        self.feature_loss = feature_loss
        self.feature_weight = float(feature_weight)
        self.adapter_lr = adapter_lr
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.cache_teacher_logits = cache_teacher_logits
        self.cache_max_mb = float(cache_max_mb)
        self.teacher_sharding = teacher_sharding

        self._sharded = False  # set at setup: the Trainer shards the student (FSDP2)
        self._teacher_mode = "replicate"  # the teacher_sharding in effect (set at setup)
        self._device: torch.device | None = None
        self._adapter_optimizer: torch.optim.Optimizer | None = None  # under sharding only
        self._pending_adapter_optimizer_state: dict[str, Any] | None = None
        self.adapters = nn.ModuleDict()
        self._pending_adapter_state: dict[str, Tensor] | None = None
        self._handles: list[Any] = []
        self._student_features: dict[str, Tensor] = {}
        self._teacher_features: dict[str, Tensor] = {}
        self._capture = False
        self._checked_shapes = False
        self._epoch_stats: dict[str, float] = {}
        self._reset_epoch_stats()
        self._epoch_closed = True  # no epoch under way (set by the epoch hooks)
        self._resumed_mid_epoch = False
        self.cache = TeacherLogitCache(int(self.cache_max_mb * 2**20)) if cache_teacher_logits else None
        self._reset_stats()

    # ----------------------------------------------------------------------------------------- identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            temperature=self.temperature, alpha=self.alpha, feature_pairs=sorted(self.feature_pairs.items())
        )

    def _reset_epoch_stats(self) -> None:
        self._epoch_stats = {
            "steps": 0,
            "teacher_seconds": 0.0,
            "samples": 0,
            "hits": 0,
            "temperature": 0.0,
            "alpha": 0.0,
        }

    def _reset_stats(self) -> None:
        self.stats: dict[str, float] = {
            "teacher_seconds": 0.0,
            "teacher_calls": 0,
            "teacher_samples": 0,
            "cache_hit_samples": 0,
            "distilled_steps": 0,
        }

    # ----------------------------------------------------------------------------------------- schedule
    def is_distilling(self, epoch: int) -> bool:
        """Whether distillation applies at ``epoch``."""
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def _has_ramp(self) -> bool:
        return self.final_temperature is not None or self.final_alpha is not None

    def _ramp_length(self, trainer: Any) -> float | None:
        if not self._has_ramp():
            return None
        return ramp_length(
            self.schedule_epochs, self.start_epoch, self.end_epoch, getattr(trainer, "max_epochs", None)
        )

    def current_values(self, trainer: Any, batch_idx: int = 0) -> tuple[float, float]:
        """``(temperature, alpha)`` at the trainer's position (``batch_idx`` within the epoch)."""
        length = self._ramp_length(trainer)
        if length is None:
            return self.temperature, self.alpha
        batches = getattr(trainer, "num_training_batches", 0)
        progress = ramp_progress(trainer.current_epoch, self.start_epoch, length, batch_idx, batches)
        t = scheduled_value(self.temperature, self.final_temperature, progress, self.schedule)
        a = scheduled_value(self.alpha, self.final_alpha, progress, self.schedule)
        return t, a

    def phase_state(self, trainer: Any) -> PhaseState:
        """``"pending"`` before ``start_epoch``; ``"active"`` until ``end_epoch`` (or the end of a ramp);
        ``"done"`` afterwards (and from ``start_epoch`` on when there is neither end epoch nor ramp)."""
        epoch = int(getattr(trainer, "current_epoch", 0))
        if epoch < self.start_epoch:
            return "pending"
        if self.end_epoch is not None:
            return "active" if epoch < self.end_epoch else "done"
        length = self._ramp_length(trainer) if self._has_ramp() else None
        if length is not None and epoch < self.start_epoch + math.ceil(length):
            return "active"
        return "done"

    def describe_phase(self, trainer: Any, finished: bool = False) -> str:
        """What distillation does at the trainer's position, in plain words (for messages; the contract's word
        is :meth:`phase_state`): ``"pending (starts at epoch 2)"``, ``"running (epoch 3 of 5)"`` (its own
        epochs, to ``end_epoch`` or the end of training), ``"done"``; with ``finished=True`` (training has
        ended) ``"done"``, ``"never started"`` or ``"stopped before its end (epoch 2 of 5)"``."""
        epoch = int(getattr(trainer, "current_epoch", 0))
        max_epochs = getattr(trainer, "max_epochs", None)
        last = self.end_epoch
        if last is None and isinstance(max_epochs, int) and max_epochs > 0:
            last = max_epochs
        total = f" of {last - self.start_epoch}" if last is not None else ""
        if finished:  # current_epoch: the epochs completed
            if epoch <= self.start_epoch:
                return "never started"
            if self.end_epoch is not None and epoch < self.end_epoch:
                return f"stopped before its end (epoch {epoch - self.start_epoch}{total})"
            return "done"
        if epoch < self.start_epoch:
            return f"pending (starts at epoch {self.start_epoch})"
        if self.end_epoch is not None and epoch >= self.end_epoch:
            return "done"
        return f"running (epoch {epoch - self.start_epoch + 1}{total})"

    # ----------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._run_check_strategy(trainer)
        if stage == "fit":
            self._run_setup(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_fit_start(trainer, pl_module)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._run_check_resume(trainer, checkpoint)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resumed_mid_epoch:  # the epoch's aggregates so far came with the checkpoint
            self._resumed_mid_epoch = False
            return
        self._epoch_closed = False
        self._reset_epoch_stats()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_log_epoch(trainer, pl_module)
        self._epoch_closed = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._capture = bool(self._handles)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._capture = False
        self._student_features.clear()
        self._teacher_features.clear()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self._run_sync_adapter_grads(trainer)
        self._run_adapter_step()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_fit_end(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    # ----------------------------------------------------------------------------------------- loss terms
    def task_loss_weight(self, trainer: Any, pl_module: Any, ctx: StepContext) -> float:
        """``1 - alpha`` while distilling in training, else 1."""
        if ctx.stage != "train" or not self.is_distilling(trainer.current_epoch):
            return 1.0
        return 1.0 - self.current_values(trainer, ctx.batch_idx)[1]

    def loss_terms(self, trainer: Any, pl_module: Any, ctx: StepContext) -> dict[str, Tensor]:
        """``{"kd": alpha * T^2 * KL, "feature": w_f * sum of feature losses}`` for a training step."""
        if ctx.stage != "train" or not self.is_distilling(trainer.current_epoch):
            return {}
        return self._run_loss_terms(trainer, pl_module, ctx)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if len(self.adapters):
            adapters = {k: v.detach().cpu().clone() for k, v in self.adapters.state_dict().items()}
        else:
            adapters = dict(self._pending_adapter_state or {})
        # the epoch's aggregates (logged at its end): a run resumed mid-epoch, or before the epoch-end hooks,
        # logs the same distill/alpha, distill/temperature as the uninterrupted run
        if self._adapter_optimizer is not None:
            adapter_optimizer = _cpu_copy(self._adapter_optimizer.state_dict())
        else:
            adapter_optimizer = self._pending_adapter_optimizer_state
        return {
            "adapters": adapters,
            # under sharding only (the adapters' own optimizer); the same on every rank, so rank 0's is saved
            "adapter_optimizer": adapter_optimizer,
            "epoch_stats": {
                k: v for k, v in self._epoch_stats.items() if k != "teacher_seconds"
            },  # no wall time
            "epoch_closed": self._epoch_closed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "epoch_stats" in state_dict:
            self._epoch_stats = {**dict(state_dict["epoch_stats"]), "teacher_seconds": 0.0}
            self._epoch_closed = bool(state_dict.get("epoch_closed", True))
            self._resumed_mid_epoch = not self._epoch_closed
        self._pending_adapter_optimizer_state = state_dict.get("adapter_optimizer")
        if self._adapter_optimizer is not None and self._pending_adapter_optimizer_state is not None:
            self._adapter_optimizer.load_state_dict(self._pending_adapter_optimizer_state)
            self._pending_adapter_optimizer_state = None
        adapters = dict(state_dict.get("adapters", {}))
        if len(self.adapters):
            self.adapters.load_state_dict(adapters)
            self._pending_adapter_state = None
        else:
            self._pending_adapter_state = adapters

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = []
        state["_student_features"] = {}
        state["_teacher_features"] = {}
        state["_capture"] = False
        if self._adapter_optimizer is not None:
            state["_pending_adapter_optimizer_state"] = _cpu_copy(self._adapter_optimizer.state_dict())
        state["_adapter_optimizer"] = None
        if self.cache is not None:
            state["cache"] = TeacherLogitCache(self.cache.max_bytes)
        return state

    # ----------------------------------------------------------------------------------------- internals
    def _dry_run_input(self, trainer: Any, pl_module: Any) -> Tensor | None:
        """The module's own example (first two samples, its dtype kept: token ids stay integers), else zeros of
        the known input shape (``input_shape``, else the data module's); ``None`` when the shape is unknown."""
        example = getattr(pl_module, "example_input_array", None)
        if self.input_shape is None and isinstance(example, Tensor):
            return example[:2] if example.ndim > 0 and example.shape[0] >= 1 else example
        shape = known_input_shape(trainer, pl_module, self.input_shape)
        return None if shape is None else torch.zeros(2, *shape)

    def _run_check_resume(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        """A resume from a checkpoint without this callback's state: refused with feature pairs (the adapters'
        weights, and the optimizer group that trains them, are not in it), said otherwise (distillation holds no
        weights of the student: the temperature and alpha follow the epoch, nothing else is restored)."""
        held = [str(k) for k in checkpoint.get("callbacks", {})]
        if self.state_key in held or self._legacy_state_key in checkpoint.get("callbacks", {}):
            return
        source = (
            f"resuming from {getattr(trainer, 'ckpt_path', None)}, which holds no state of this callback (its state "
            f"key {self.state_key!r} is not among the checkpoint's callback states {held}: saved without it, or with "
            "another `temperature`, `alpha` or `feature_pairs`)"
        )
        if self.feature_pairs:
            raise ValueError(
                f"KnowledgeDistillation: {source}. Its feature adapters (`feature_pairs`) were not saved in it, so they "
                "would restart from random weights beside an optimizer state that does not know them: refused. Resume "
                "with the settings the checkpoint was saved with, or start a new fit from its weights (WarmStart) "
                "instead of `ckpt_path`."
            )
        rank_zero_warn(
            f"KnowledgeDistillation: {source}. Distillation goes on by its settings (temperature and alpha follow the "
            "epoch); it keeps no weights or masks of the student, so the checkpoint's model is used as it is."
        )

    def _check_fits(self, trainer: Any) -> None:
        """Distillation that starts at or after ``max_epochs`` is refused (it would never run); an ``end_epoch`` or
        a temperature/alpha ramp that ends after the run is said with what the run reaches."""
        max_epochs = getattr(trainer, "max_epochs", None)
        if getattr(trainer, "fast_dev_run", False) or not isinstance(max_epochs, int) or max_epochs < 0:
            return
        if self.start_epoch >= max_epochs:
            raise ValueError(
                f"KnowledgeDistillation `start_epoch`={self.start_epoch} is not before the Trainer's "
                f"max_epochs={max_epochs}: the student would never be distilled. Allowed: 0 <= start_epoch < "
                "max_epochs."
            )
        late = []
        if self.end_epoch is not None and self.end_epoch > max_epochs:
            late.append(
                f"`end_epoch`={self.end_epoch} is after the run's {max_epochs} epochs: the distillation phase is "
                "never done, so EarlyStopping holds off to the end"
            )
        length = self._ramp_length(trainer)
        if length is not None and self.start_epoch + length > max_epochs:
            progress = (max_epochs - self.start_epoch) / length
            t = scheduled_value(self.temperature, self.final_temperature, progress, self.schedule)
            a = scheduled_value(self.alpha, self.final_alpha, progress, self.schedule)
            late.append(
                f"the temperature/alpha ramp of {length:g} epochs from epoch {self.start_epoch} ends after the run's "
                f"{max_epochs} epochs: it reaches {progress:.0%} of its course (temperature {t:.3g}, alpha {a:.3g})"
            )
        if late:
            rank_zero_warn(
                f"KnowledgeDistillation: {'; '.join(late)}. Shorten the schedule or train for more epochs."
            )

    def _run_setup(self, trainer: Any, pl_module: Any) -> None:
        self._check_fits(trainer)
        student = target_model(pl_module)
        for student_layer in self.feature_pairs:
            get_layer(student, student_layer, "feature_pairs", "student")
        if self.cache is not None:
            dm = getattr(trainer, "datamodule", None)
            if dm is not None and getattr(dm, "return_index", True) is False:
                raise ValueError(
                    "`cache_teacher_logits=True` keys the cache by sample index: set `return_index=True` on the data module."
                )
            augmentation = getattr(dm, "augmentation", None)
            augmented = (
                augmentation not in (None, "none", [], ())
                or getattr(dm, "batch_augmentation", None) is not None
            )
            if dm is not None and augmented:
                raise ValueError(
                    "`cache_teacher_logits=True` needs training data that is not augmented (cached teacher logits would "
                    f"not match augmented inputs); the data module uses augmentation={getattr(dm, 'augmentation', '?')!r}. "
                    "Set `cache_teacher_logits=False` to run the teacher every step."
                )
        self._ramp_length(trainer)  # validates the ramp against the trainer
        x = self._dry_run_input(trainer, pl_module)
        needs_shapes = bool(self.feature_pairs) and not self._adapters_match_pairs()
        if x is None:
            if needs_shapes:
                raise ValueError(
                    "Feature distillation needs the input shape to size its adapters: give `input_shape`, set "
                    "`example_input_array` on the module, or use a data module with an `input_shape` property."
                )
            return
        student_out, teacher_out, s_feats, t_feats = dry_run(student, self.teacher, x, self.feature_pairs)
        if isinstance(student_out, Tensor) and isinstance(teacher_out, Tensor):
            check_logit_shapes(student_out, teacher_out)
            self._checked_shapes = True
        if needs_shapes:
            self.adapters = build_feature_adapters(self.feature_pairs, s_feats, t_feats)
        if self._pending_adapter_state is not None:
            self.adapters.load_state_dict(self._pending_adapter_state)
            self._pending_adapter_state = None

    def _adapters_match_pairs(self) -> bool:
        return len(self.adapters) == len(self.feature_pairs) and len(self.adapters) > 0

    def _capturing(self) -> bool:
        return self._capture

    def _run_check_strategy(self, trainer: Any) -> None:
        """The teacher's place under the Trainer's strategy: without sharding, ``teacher_sharding="fsdp2"`` is
        refused; under ``ModelParallelStrategy`` (FSDP2) it is ``teacher_sharding`` (default ``"replicate"``);
        Lightning's ``FSDPStrategy`` is refused. No collective (every rank alike, before any step)."""
        strategy = sharded_strategy(trainer)
        self._sharded = False
        self._teacher_mode = "replicate"
        if strategy is None:
            if self.teacher_sharding == "fsdp2":
                name = type(getattr(trainer, "strategy", None)).__name__
                raise ValueError(
                    f"KnowledgeDistillation `teacher_sharding`='fsdp2' shards the teacher over the data-parallel "
                    f"ranks of a sharded run, but the Trainer's strategy ({name}) shards nothing. Use "
                    "`teacher_sharding`='replicate' or null (the whole teacher on every rank), or "
                    "`ModelParallelStrategy` with `ClassificationModule(sharding='fsdp2')`."
                )
            return
        from lightning.pytorch.strategies import ModelParallelStrategy

        if not isinstance(trainer.strategy, ModelParallelStrategy):
            refuse_sharded(
                trainer,
                "KnowledgeDistillation",
                "only FSDP2 through ModelParallelStrategy is supported",
                f'ModelParallelStrategy with `ClassificationModule(sharding="fsdp2")`, or {DDP_ALTERNATIVE}',
            )
        self._sharded = True
        self._teacher_mode = self.teacher_sharding or "replicate"

    def _run_fit_start(self, trainer: Any, pl_module: Any) -> None:
        student = target_model(pl_module)
        device = pl_module.device
        self._device = device
        dtype = next((p.dtype for p in student.parameters() if p.is_floating_point()), torch.float32)
        # a student in true half/double precision gets a teacher in its dtype
        half = dtype in (torch.float16, torch.bfloat16, torch.float64)
        if self._teacher_mode == "fsdp2":
            if half:
                self.teacher.to(dtype=dtype)
            if not self.teacher.is_sharded():  # each rank keeps its slice of its own copy: rank 0's first
                self._run_sync_from_rank0(trainer, self.teacher, device)
            shard_teacher(self.teacher, _data_parallel_mesh(trainer))  # moves each shard to the mesh's device
        else:
            if half:
                self.teacher.to(device=device, dtype=dtype)
            else:
                self.teacher.to(device=device)
            self._run_sync_from_rank0(trainer, self.teacher, device)
        self.adapters.to(device)
        self._run_sync_from_rank0(trainer, self.adapters, device)
        self._remove_hooks()
        self._handles = hook_feature_pairs(
            student,
            self.teacher,
            self.feature_pairs,
            self._student_features,
            self._teacher_features,
            enabled=self._capturing,
        )
        params = [p for p in self.adapters.parameters() if p.requires_grad]
        if params:
            if not trainer.optimizers:
                raise ValueError(
                    "Feature distillation trains adapters and needs an optimizer; the module configured none."
                )
            optimizer = trainer.optimizers[0]
            lr = self.adapter_lr if self.adapter_lr is not None else optimizer.param_groups[0]["lr"]
            if self._sharded:  # FSDP2 saves the student's optimizer by its parameter names: an own optimizer
                if self._adapter_optimizer is None:
                    self._adapter_optimizer = adapter_optimizer_like(optimizer, params, lr)
                if self._pending_adapter_optimizer_state is not None:
                    self._adapter_optimizer.load_state_dict(self._pending_adapter_optimizer_state)
                    self._pending_adapter_optimizer_state = None
            else:
                present = {id(p) for group in optimizer.param_groups for p in group["params"]}
                if not any(id(p) in present for p in params):
                    optimizer.add_param_group({"params": params, "lr": lr, "initial_lr": lr})
        self._reset_stats()
        if self.cache is not None:
            self.cache.clear()
        placement = ""
        if self._sharded:
            world = int(getattr(trainer, "world_size", 1))
            placement = (
                f", sharded over {world} ranks (FSDP2)"
                if self._teacher_mode == "fsdp2"
                else ", replicated on every rank"
            )
        rank_zero_info(
            f"KnowledgeDistillation: teacher {type(self.teacher.module).__name__} with "
            f"{self.teacher.num_parameters():,} parameters ({self.teacher.memory_bytes() / 2**20:.2f} MiB per rank"
            f"{placement}) on {device}, "
            f"T={self.temperature}, alpha={self.alpha}"
            + (
                f", {len(self.feature_pairs)} feature pair(s), adapters {sum(p.numel() for p in params):,} parameters"
                if self.feature_pairs
                else ""
            )
            + (f", offline logit cache up to {self.cache_max_mb:g} MiB" if self.cache is not None else "")
            + "."
        )

    def _teacher_forward(self, inputs: Any) -> Tensor:
        sync = isinstance(inputs, Tensor) and inputs.is_cuda
        if sync:
            torch.cuda.synchronize(inputs.device)
        start = time.perf_counter()
        out = first_tensor(self.teacher(inputs))
        if sync:
            torch.cuda.synchronize(inputs.device)
        self.stats["teacher_seconds"] += time.perf_counter() - start
        self.stats["teacher_calls"] += 1
        self.stats["teacher_samples"] += int(out.shape[0])
        return out

    def _teacher_logits(self, ctx: StepContext) -> Tensor:
        if self.cache is None:
            return self._teacher_forward(ctx.inputs)
        if ctx.sample_index is None:
            raise ValueError(
                "`cache_teacher_logits=True` needs sample indices in the batch: set `return_index=True` on the data module."
            )
        lockstep = self._any_rank_needs_teacher if self._teacher_mode == "fsdp2" else None
        logits, n_hit = logits_through_cache(
            self.cache, ctx.sample_index, ctx.inputs, self._teacher_forward, lockstep=lockstep
        )
        self.stats["cache_hit_samples"] += n_hit
        self._epoch_stats["hits"] += n_hit
        return logits

    def _run_loss_terms(self, trainer: Any, pl_module: Any, ctx: StepContext) -> dict[str, Tensor]:
        temperature, alpha = self.current_values(trainer, ctx.batch_idx)
        seconds_before = self.stats["teacher_seconds"]
        teacher_logits = self._teacher_logits(ctx)
        if not self._checked_shapes:
            check_logit_shapes(ctx.logits, teacher_logits)
            self._checked_shapes = True
        terms = {"kd": alpha * kd_loss(ctx.logits, teacher_logits, temperature)}
        if self.feature_pairs:
            total = feature_pairs_loss(
                self.adapters,
                self.feature_pairs,
                self._student_features,
                self._teacher_features,
                self.feature_loss,
            )
            terms["feature"] = self.feature_weight * total
        self.stats["distilled_steps"] += 1
        epoch = self._epoch_stats
        epoch["steps"] += 1
        epoch["teacher_seconds"] += self.stats["teacher_seconds"] - seconds_before
        epoch["samples"] += int(ctx.targets.shape[0])
        epoch["temperature"], epoch["alpha"] = float(temperature), float(alpha)
        return terms

    def _run_log_epoch(self, trainer: Any, pl_module: Any) -> None:
        """Epoch aggregates to the logger (once per epoch: no per-step logging cost).

        Under DDP each rank has its own teacher time and cache hits: the logged values are their mean over the
        ranks (``sync_dist=True``; temperature and alpha are the same on every rank, their mean unchanged)."""
        epoch = self._epoch_stats
        if not epoch["steps"]:
            return
        log = {
            "distill/temperature": epoch["temperature"],
            "distill/alpha": epoch["alpha"],
            "distill/teacher_ms_per_step": 1000.0 * epoch["teacher_seconds"] / epoch["steps"],
        }
        if self.cache is not None:
            log["distill/cache_hit_rate"] = epoch["hits"] / max(epoch["samples"], 1)
        pl_module.log_dict(log, on_step=False, on_epoch=True, sync_dist=True)

    def _run_sync_adapter_grads(self, trainer: Any) -> None:
        world = int(getattr(trainer, "world_size", 1))
        if world <= 1 or not len(self.adapters) or not (dist.is_available() and dist.is_initialized()):
            return
        for p in self.adapters.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)

    def _any_rank_needs_teacher(self, needed: bool) -> bool:
        """Whether any rank needs the (sharded) teacher for this step: an all-reduce of one flag, so that the
        ranks run its forward, a collective, together."""
        if not (dist.is_available() and dist.is_initialized()):
            return needed
        flag = torch.tensor([1.0 if needed else 0.0], device=self._device or "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _run_sync_from_rank0(self, trainer: Any, module: nn.Module, device: torch.device) -> None:
        """Rank 0's weights of ``module`` (the teacher, before it is sharded; the adapters) on every rank, so that
        every rank distils from the same teacher and trains the same adapters even when the ranks built them
        differently (a teacher without ``teacher_checkpoint``, adapters drawn from unseeded random numbers).
        One broadcast per tensor, through ``device`` under NCCL (a tensor at a time); nothing in a single process.
        """
        if not is_distributed(trainer):
            return
        tensors = [t for t in (*module.parameters(), *module.buffers()) if not _is_dtensor(t)]
        group_device = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
        with torch.no_grad():
            for t in tensors:
                if t.device == group_device and t.is_contiguous():
                    dist.broadcast(t.data, src=0)
                else:
                    buf = t.detach().to(group_device).contiguous()
                    dist.broadcast(buf, src=0)
                    t.data.copy_(buf)

    def _run_adapter_step(self) -> None:
        """Under sharding: the adapters' own optimizer steps with the student's (their averaged gradients), then
        their gradients are cleared."""
        if self._adapter_optimizer is None:
            return
        self._adapter_optimizer.step()
        self._adapter_optimizer.zero_grad(set_to_none=True)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._capture = False
        self._student_features.clear()
        self._teacher_features.clear()

    def _run_fit_end(self, trainer: Any) -> None:
        self._remove_hooks()
        s = self.stats
        per_sample = s["teacher_seconds"] / s["teacher_samples"] if s["teacher_samples"] else 0.0
        s["estimated_saved_seconds"] = per_sample * s["cache_hit_samples"]
        msg = (
            f"KnowledgeDistillation: {int(s['distilled_steps'])} distilled steps, teacher ran {int(s['teacher_calls'])} "
            f"times on {int(s['teacher_samples'])} samples in {s['teacher_seconds']:.2f} s"
        )
        if self.cache is not None:
            msg += (
                f"; {int(s['cache_hit_samples'])} samples served from the logit cache ({len(self.cache)} entries, "
                f"{self.cache.nbytes / 2**20:.2f} MiB), about {s['estimated_saved_seconds']:.2f} s of teacher time saved"
            )
        rank_zero_info(msg + ".")


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _data_parallel_mesh(trainer: Any) -> Any:
    """The data-parallel dimension of the strategy's device mesh (the whole mesh when it has no named one)."""
    mesh = trainer.strategy.device_mesh
    return mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh


def _cpu_copy(obj: Any) -> Any:
    """``obj`` (nested dicts and lists) with every tensor copied to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_copy(v) for v in obj)
    return obj


def _warn_if_ensemble_temperature_differs(
    teacher: nn.Module, temperature: float, final_temperature: float | None
) -> None:
    """A ``LogitEnsemble(combine="probabilities")`` averages distributions at its own temperature; distilling at
    another one softens that average again instead of averaging at the distillation temperature."""
    if not isinstance(teacher, LogitEnsemble) or teacher.combine != "probabilities":
        return
    if teacher.temperature != temperature or (
        final_temperature is not None and final_temperature != teacher.temperature
    ):
        rank_zero_warn(
            f"The teacher LogitEnsemble averages probabilities at `temperature`={teacher.temperature:g}, but "
            f"distillation runs at `temperature`={temperature:g}"
            + (f" to `final_temperature`={final_temperature:g}" if final_temperature is not None else "")
            + ": the soft targets are then not the members' mean distribution at the distillation temperature. "
            "Give the ensemble the distillation temperature, or use combine='logits' (right at every temperature)."
        )
