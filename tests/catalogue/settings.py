"""Bad-input catalogue part: settings (rows as in ``tests/bad_input_catalogue.py``).

Settings that used to be silently ignored and are now refused before the first epoch: names and patterns that
match nothing (``layer_sparsity``, ``include``, ``exclude``, ``attribute``, ``ignore_phases``), stages that would
never run in the run (a pruning ramp after its end, QAT after a phase that ends with it, distillation from an
epoch the run never reaches), a load that loads nothing, and a resume that would lose a callback's state.
Warnings (a ramp cut short, freezing epochs the run never reaches, a partial load) are not rows here: the
catalogue lists what raises.
"""

from __future__ import annotations

from pathlib import Path

ENTRIES: list[tuple[str, str, str, str]] = [
    (
        "settings",
        "a misspelled layer name in `layer_sparsity`",
        "fit(ProgressivePruning(end=1, layer_sparsity={'fc_2': 0.5}))",
        "ValueError",
    ),
    (
        "settings",
        "an `include` pattern that matches no layer beside one that does",
        "fit(ProgressivePruning(end=1, include=['fc1', 'fc4']))",
        "ValueError",
    ),
    (
        "settings",
        "a misspelled layer name in `exclude` (the layer would be pruned)",
        "fit(ProgressivePruning(end=1, exclude=['fc_3']))",
        "ValueError",
    ),
    (
        "settings",
        "a `layer_sparsity` for the layer that `keep_last_dense` keeps dense",
        "fit(ProgressivePruning(end=1, keep_last_dense=True, layer_sparsity={'fc3': 0.5}))",
        "ValueError",
    ),
    (
        "settings",
        "an `include` pattern naming a batch norm (not a pruned module type)",
        "fit(ProgressivePruning(end=1, include=['features.block1.conv', 'features.block1.bn']), "
        "model=ConvNet3(image_size=8))",
        "ValueError",
    ),
    (
        "settings",
        "a pruning `attribute` that is no attribute of the module",
        "fit(ProgressivePruning(end=1, attribute='modle'))",
        "ValueError",
    ),
    (
        "settings",
        "a pruning ramp that starts after the last epoch",
        "fit(ProgressivePruning(start=2, end=4), max_epochs=1)",
        "ValueError",
    ),
    (
        "settings",
        "a pruning ramp in steps beyond max_epochs x steps per epoch",
        "fit(ProgressivePruning(unit='step', start=50, end=60), max_epochs=2)",
        "ValueError",
    ),
    (
        "settings",
        "QAT after a pruning ramp that ends with the run (QAT would never start)",
        "fit_with([ProgressivePruning(end=2), QuantizationAwareTraining(start_after='pruning', **QUIET_QAT)], "
        "max_epochs=2)",
        "ValueError",
    ),
    (
        "settings",
        "distillation from an epoch the run never reaches",
        "fit(KnowledgeDistillation(teacher=LeNet300100(in_features=64), start_epoch=2), max_epochs=2)",
        "ValueError",
    ),
    (
        "settings",
        "a misspelled phase in EarlyStopping's `ignore_phases`",
        "fit_with([ProgressivePruning(end=1), EarlyStopping(monitor='val_loss', ignore_phases=['prunning'])])",
        "ValueError",
    ),
    (
        "settings",
        "`ignore_phases` naming a phase the recipe does not have",
        "fit(EarlyStopping(monitor='val_loss', ignore_phases=['distillation']))",
        "ValueError",
    ),
    (
        "settings",
        "WarmStart(strict=False) from a checkpoint of another network (it would load 0 tensors)",
        "WarmStart(OTHER_NETWORK_CKPT, strict=False).setup(None, ClassificationModule(LeNet300100(in_features=64)), "
        "'fit')",
        "ValueError",
    ),
    (
        "settings",
        "resuming with feature distillation from a checkpoint without its adapters",
        "fit_with([KnowledgeDistillation(teacher=LeNet300100(in_features=64), feature_pairs={'fc1': 'fc1'})], "
        "max_epochs=2, ckpt_path=DENSE_CKPT)",
        "ValueError",
    ),
    (
        "settings",
        "an unknown `teacher_sharding` for distillation",
        "KnowledgeDistillation(teacher=LeNet300100(in_features=64), teacher_sharding='shard')",
        "ValueError",
    ),
    (
        "settings",
        "a teacher sharded with FSDP2 in a run that shards nothing",
        "fit(KnowledgeDistillation(teacher=LeNet300100(in_features=64), teacher_sharding='fsdp2'))",
        "ValueError",
    ),
    (
        "settings",
        "QAT from the first epoch beside a structured pruning ramp (it would prune during QAT)",
        "fit_with([ProgressivePruning(end=1, granularity='structured'), QuantizationAwareTraining(**QUIET_QAT)], "
        "max_epochs=2)",
        "ValueError",
    ),
    (
        "settings",
        "an unknown `sharding_param_dtype` (FSDP2's mixed precision)",
        "ClassificationModule(LeNet300100(in_features=64), sharding='fsdp2', sharding_param_dtype='bf16')",
        "ValueError",
    ),
    (
        "settings",
        "FSDP2's mixed precision without sharding",
        "ClassificationModule(LeNet300100(in_features=64), sharding_param_dtype='bfloat16')",
        "ValueError",
    ),
]

#: what the message must name
MUST_NAME: dict[str, str] = {
    "a misspelled layer name in `layer_sparsity`": "Close matches: ['fc2']",
    "an `include` pattern that matches no layer beside one that does": "`include` pattern 'fc4' matches no module",
    "a misspelled layer name in `exclude` (the layer would be pruned)": "Close matches: ['fc3']",
    "a `layer_sparsity` for the layer that `keep_last_dense` keeps dense": "keep_last_dense=True",
    "an `include` pattern naming a batch norm (not a pruned module type)": "which is not pruned",
    "a pruning `attribute` that is no attribute of the module": "close matches: ['model']",
    "a pruning ramp that starts after the last epoch": "`max_epochs` >= 4",
    "a pruning ramp in steps beyond max_epochs x steps per epoch": "`max_steps` >= 60",
    "QAT after a pruning ramp that ends with the run (QAT would never start)": "QAT would never start",
    "distillation from an epoch the run never reaches": "`start_epoch`=2",
    "a misspelled phase in EarlyStopping's `ignore_phases`": "close matches: ['pruning']",
    "`ignore_phases` naming a phase the recipe does not have": "Phases present: []",
    "WarmStart(strict=False) from a checkpoint of another network (it would load 0 tensors)": "would load none of",
    "resuming with feature distillation from a checkpoint without its adapters": "feature adapters",
    "an unknown `teacher_sharding` for distillation": "allowed: ['replicate', 'fsdp2']",
    "a teacher sharded with FSDP2 in a run that shards nothing": "`teacher_sharding`='replicate'",
    "QAT from the first epoch beside a structured pruning ramp (it would prune during QAT)": "`start_after: 'pruning'`",
    "an unknown `sharding_param_dtype` (FSDP2's mixed precision)": "allowed: ['bfloat16', 'float16']",
    "FSDP2's mixed precision without sharding": "precision",
}


def fixtures(tmp: Path) -> dict:
    """``fit_with`` (a tiny fit with several callbacks, optionally resumed), ``QUIET_QAT`` (QAT without dry run,
    report or export), ``OTHER_NETWORK_CKPT`` (a checkpoint of another network) and ``DENSE_CKPT`` (a checkpoint of
    a run without any callback, taken at the end of its first epoch)."""
    import lightning.pytorch as pl
    import torch

    from lightning_optim.data import ImageClassificationDataModule
    from lightning_optim.models import LeNet300100
    from lightning_optim.modules import ClassificationModule
    from tests.conftest import quiet_trainer_kwargs

    root = tmp / "settings"
    root.mkdir(exist_ok=True)

    def fit_with(callbacks, max_epochs: int = 1, model=None, ckpt_path=None):
        pl.seed_everything(0)
        module = ClassificationModule(model if model is not None else LeNet300100(in_features=64), lr=1e-3)
        trainer = pl.Trainer(
            callbacks=list(callbacks),
            **quiet_trainer_kwargs(root, max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1),
        )
        trainer.fit(
            module, datamodule=ImageClassificationDataModule("digits", batch_size=16), ckpt_path=ckpt_path
        )
        return trainer

    other = root / "other_network.ckpt"
    torch.save(
        {"state_dict": {"net.body.weight": torch.zeros(4, 4), "net.head.weight": torch.zeros(2, 4)}}, other
    )
    dense = root / "dense.ckpt"
    fit_with([], max_epochs=1).save_checkpoint(dense)
    quiet_qat = {
        "dry_run": False,
        "report": False,
        "export": False,
        "latency_batch_sizes": (),
        "verbose": False,
    }
    return {
        "fit_with": fit_with,
        "QUIET_QAT": quiet_qat,
        "OTHER_NETWORK_CKPT": str(other),
        "DENSE_CKPT": str(dense),
    }
