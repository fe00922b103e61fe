"""The old import paths of 0.1 still work for one release, each with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib

import pytest

from lightning_optim._deprecation import REMOVED_IN

# (old module, name, new module, new name)
MOVED = [
    # three constants were called SCHEDULES: the LR one is LR_SCHEDULES, distillation's is DISTILLATION_RAMPS
    ("lightning_optim.callbacks", "SCHEDULES", "lightning_optim.callbacks", "LR_SCHEDULES"),
    (
        "lightning_optim.functional.lr_scheduling",
        "SCHEDULES",
        "lightning_optim.functional.lr_scheduling",
        "LR_SCHEDULES",
    ),
    (
        "lightning_optim.functional.lr_scheduling.schedules",
        "SCHEDULES",
        "lightning_optim.functional.lr_scheduling.schedules",
        "LR_SCHEDULES",
    ),
    (
        "lightning_optim.functional.distillation",
        "SCHEDULES",
        "lightning_optim.functional.distillation",
        "DISTILLATION_RAMPS",
    ),
    (
        "lightning_optim.functional.distillation.losses",
        "SCHEDULES",
        "lightning_optim.functional.distillation",
        "DISTILLATION_RAMPS",
    ),
    (
        "lightning_optim.compression",
        "compact_model",
        "lightning_optim.functional.pruning.compaction",
        "compact_model",
    ),
    (
        "lightning_optim.compression.compaction",
        "channel_followers",
        "lightning_optim.functional.pruning",
        "channel_followers",
    ),
    (
        "lightning_optim.compression.measure",
        "measure_latency",
        "lightning_optim.functional.compression_report.measure",
        "measure_latency",
    ),
    (
        "lightning_optim.compression.report",
        "format_markdown",
        "lightning_optim.functional.compression_report.report",
        "format_markdown",
    ),
    (
        "lightning_optim.compression.report",
        "evaluate_classifier",
        "lightning_optim.functional.compression_report.evaluate",
        "evaluate_classifier",
    ),
    (
        "lightning_optim.compression.report",
        "plot_report",
        "lightning_optim.functional.compression_report.plots",
        "plot_report",
    ),
    (
        "lightning_optim.compression.artifact",
        "load_artifact",
        "lightning_optim.functional.artifact",
        "load_artifact",
    ),
    ("lightning_optim.compression.pipeline", "WarmStart", "lightning_optim.callbacks", "WarmStart"),
    (
        "lightning_optim.compression.pipeline",
        "CompressionPipeline",
        "lightning_optim.callbacks",
        "CompressionPipeline",
    ),
    (
        "lightning_optim.compression.pipeline",
        "run_digits_pipeline",
        "lightning_optim.demo",
        "run_digits_pipeline",
    ),
    (
        "lightning_optim.compression.quantization",
        "create_backend",
        "lightning_optim.functional.quantization",
        "create_backend",
    ),
    (
        "lightning_optim.compression.quantization.eager",
        "EagerBackend",
        "lightning_optim.functional.quantization.eager",
        "EagerBackend",
    ),
    (
        "lightning_optim.compression.quantization.fusion",
        "find_fusion_groups",
        "lightning_optim.functional.quantization.fusion",
        "find_fusion_groups",
    ),
    (
        "lightning_optim.compression.quantization.backend",
        "QuantizationError",
        "lightning_optim.functional.quantization",
        "QuantizationError",
    ),
    (
        "lightning_optim.compression.quantization.report",
        "quantization_report",
        "lightning_optim.functional.quantization.report",
        "quantization_report",
    ),
    ("lightning_optim.callbacks.schedules", "OneCycle", "lightning_optim.callbacks", "OneCycle"),
    (
        "lightning_optim.callbacks.teacher",
        "TeacherLogitCache",
        "lightning_optim.functional.distillation",
        "TeacherLogitCache",
    ),
    (
        "lightning_optim.functional.masks",
        "compute_masks",
        "lightning_optim.functional.pruning",
        "compute_masks",
    ),
    (
        "lightning_optim.functional.sparsity_schedules",
        "scheduled_sparsity",
        "lightning_optim.functional.pruning",
        "scheduled_sparsity",
    ),
    (
        "lightning_optim.functional.lr_schedules",
        "one_cycle_lr",
        "lightning_optim.functional.lr_scheduling",
        "one_cycle_lr",
    ),
    (
        "lightning_optim.models",
        "count_parameters",
        "lightning_optim.functional.compression_report",
        "count_parameters",
    ),
    (
        "lightning_optim.models",
        "count_nonzero_parameters",
        "lightning_optim.functional.compression_report",
        "count_nonzero",
    ),
    (
        "lightning_optim.models.stats",
        "count_nonzero_parameters",
        "lightning_optim.functional.compression_report",
        "count_nonzero",
    ),
    (
        "lightning_optim.callbacks.quantization",
        "EXPORT_FORMATS",
        "lightning_optim.functional.quantization.export",
        "EXPORT_FORMATS",
    ),
]


@pytest.mark.parametrize(("old", "name", "new", "new_name"), MOVED, ids=[f"{o}.{n}" for o, n, _, _ in MOVED])
def test_old_path_warns_and_gives_the_same_object(old, name, new, new_name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"removed in lightning-optim {REMOVED_IN}") as record:
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), new_name)
    message = str(record[0].message)
    assert f"`{old}.{name}`" in message and "moved to `lightning_optim." in message


def test_from_import_of_an_old_path_warns():
    with pytest.warns(
        DeprecationWarning, match="lightning_optim.functional.pruning.compaction.compact_model"
    ):
        from lightning_optim.compression.compaction import compact_model  # noqa: F401


@pytest.mark.parametrize(
    "module",
    [
        "lightning_optim.callbacks",
        "lightning_optim.functional.lr_scheduling",
        "lightning_optim.functional.lr_scheduling.schedules",
        "lightning_optim.functional.distillation",
        "lightning_optim.functional.distillation.losses",
    ],
)
def test_renamed_constants_leave_other_names_alone(module):
    """Only `SCHEDULES` is forwarded: another unknown name is a plain AttributeError (no warning, no recursion)."""
    import warnings

    mod = importlib.import_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not hasattr(mod, "no_such_name")
    with pytest.warns(DeprecationWarning, match="SCHEDULES"):
        exec(f"from {module} import SCHEDULES", {})


def test_unknown_name_on_an_old_path_is_an_attribute_error():
    module = importlib.import_module("lightning_optim.compression.measure")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_old_load_model_weights_wrapper_loads_with_a_warning(tmp_path):
    import torch

    from lightning_optim.compression.pipeline import load_model_weights
    from lightning_optim.models import LeNet300100

    model = LeNet300100(in_features=64)
    path = tmp_path / "w.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    other = LeNet300100(in_features=64)
    with pytest.warns(DeprecationWarning, match="lightning_optim.weights.load_weights"):
        load_model_weights(str(path), other)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_recipes_with_the_old_class_paths_still_build():
    from lightning_optim.cli import build_cli

    args = [
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.callbacks+=lightning_optim.compression.pipeline.CompressionPipeline",
        "--model=ClassificationModule",
        "--model.model=LeNet300100",
        "--model.model.in_features=64",
        "--data=ImageClassificationDataModule",
        "--data.dataset=digits",
    ]
    with pytest.warns(DeprecationWarning, match="lightning_optim.callbacks.pipeline.CompressionPipeline"):
        cli = build_cli(args, run=False)
    assert any(type(cb).__name__ == "CompressionPipeline" for cb in cli.trainer.callbacks)


@pytest.mark.parametrize("engine", ["x86", "fbgemm"])
def test_quantization_backend_meaning_the_engine_still_works(engine):
    """`backend="x86"` (0.2.x: the engine) is mapped to `engine` with a warning naming `engine`."""
    from lightning_optim.callbacks import PostTrainingQuantization, QuantizationAwareTraining
    from lightning_optim.functional.quantization import create_backend

    for cls in (QuantizationAwareTraining, PostTrainingQuantization):
        with pytest.warns(DeprecationWarning, match=rf"pass `engine='{engine}'`.*removed in lightning-optim"):
            cb = cls(backend=engine, verbose=False)
        assert (cb.backend_name, cb.engine) == ("eager", engine)
    with pytest.warns(DeprecationWarning, match="`engine="):
        assert create_backend(engine).engine == engine


def test_quantization_backend_export_format_is_renamed_file_format():
    from lightning_optim.functional.quantization import create_backend

    backend = create_backend()
    with pytest.warns(DeprecationWarning, match="renamed `file_format`"):
        assert backend.export_format == backend.file_format == "torchscript"
