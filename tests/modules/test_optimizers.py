"""Every optimizer from a YAML recipe through the CLI parser, by short name, class path or init_args."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser

from lightning_optim.cli import _import_short_name_modules, build_cli
from lightning_optim.modules import OPTIMIZERS, ClassificationModule, optimizer_factory


def recipe_model(model_args: dict) -> dict:
    return {
        "class_path": "ClassificationModule",
        "init_args": {"model": {"class_path": "LeNet300100", "init_args": {"in_features": 64}}, **model_args},
    }


@functools.cache
def model_parser() -> LightningArgumentParser:
    _import_short_name_modules()
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(ClassificationModule, "model", subclass_mode=True)
    return parser


def module_from_yaml(model_args: dict):
    """Parse the ``model:`` section of a recipe with LightningCLI's parser, short class names included."""
    parser = model_parser()
    cfg = parser.parse_string(yaml.safe_dump({"model": recipe_model(model_args)}))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg).model


def build_optimizer(module) -> torch.optim.Optimizer:
    out = module.configure_optimizers()
    return out["optimizer"] if isinstance(out, dict) else out


def one_step_changes_weights(module, optimizer) -> bool:
    before = module.model.fc1.weight.detach().clone()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    module.task_loss(module(x), y).backward()
    optimizer.step()
    return not torch.equal(before, module.model.fc1.weight)


# (YAML value of `optimizer`, expected class, expected settings of the first param group)
YAML_OPTIMIZERS = [
    ("sgd", torch.optim.SGD, {"lr": 0.01, "momentum": 0.0, "nesterov": False}),
    ("momentum", torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.01}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 0.001}),
    ("adam", torch.optim.Adam, {"lr": 0.001}),
    ("adamw", torch.optim.AdamW, {"lr": 0.001, "weight_decay": 0.01}),
    ("torch.optim.RMSprop", torch.optim.RMSprop, {}),
    ("Adagrad", torch.optim.Adagrad, {}),
    (
        {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.8, "nesterov": True}},
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.8, "nesterov": True},
    ),
    (
        {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
        torch.optim.SGD,
        {"momentum": 0.9},
    ),
    ({"class_path": "torch.optim.Adagrad", "init_args": {"lr": 0.05}}, torch.optim.Adagrad, {"lr": 0.05}),
    ({"class_path": "torch.optim.RMSprop", "init_args": {"alpha": 0.9}}, torch.optim.RMSprop, {"alpha": 0.9}),
    (
        {"class_path": "torch.optim.Adam", "init_args": {"betas": [0.8, 0.99]}},
        torch.optim.Adam,
        {"betas": (0.8, 0.99)},
    ),
    (
        {"class_path": "torch.optim.AdamW", "init_args": {"weight_decay": 0.1}},
        torch.optim.AdamW,
        {"weight_decay": 0.1},
    ),
]


@pytest.mark.parametrize(("value", "cls", "settings"), YAML_OPTIMIZERS, ids=lambda v: str(v)[:40])
def test_optimizer_from_yaml(value, cls, settings):
    module = module_from_yaml({"optimizer": value})
    optimizer = build_optimizer(module)
    assert type(optimizer) is cls
    decay_group = next(g for g in optimizer.param_groups if g["name"] == "decay")
    for key, expected in settings.items():
        got = tuple(decay_group[key]) if isinstance(expected, tuple) else decay_group[key]
        assert got == pytest.approx(expected), key
    assert one_step_changes_weights(module, optimizer)


def test_lr_and_weight_decay_from_yaml_override_the_optimizer():
    module = module_from_yaml(
        {
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
            "lr": 0.02,
            "weight_decay": 1e-3,
        },
    )
    optimizer = build_optimizer(module)
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.02]
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {"decay": 1e-3, "no_decay": 0.0}


def test_scheduler_from_yaml():
    module = module_from_yaml(
        {
            "optimizer": "sgd",
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2}},
            "scheduler_interval": "step",
        },
    )
    config = module.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "step"


def test_reduce_on_plateau_monitors_the_configured_metric():
    module = module_from_yaml(
        {
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau"},
            "scheduler_monitor": "val_acc",
        },
    )
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val_acc"


def test_unknown_optimizer_in_a_recipe_names_the_option(tmp_path):
    recipe = {
        "trainer": {"logger": False, "default_root_dir": str(tmp_path)},
        "model": recipe_model({"optimizer": "adamax_typo"}),
        "data": {"class_path": "ImageClassificationDataModule"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match=r"Unknown `optimizer` 'adamax_typo'; allowed names: .*nesterov"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_cli(["--config", str(tmp_path / "recipe.yaml")], run=False)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_short_names_are_case_insensitive(name):
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(optimizer_factory(name.upper())(params)) is OPTIMIZERS[name][0]


@pytest.mark.parametrize(
    "name", ["adamax_typo", "torch.nn.Linear", "torch.optim.Optimizer", "no.such.module.Opt", ""]
)
def test_optimizer_factory_rejects_non_optimizers(name):
    with pytest.raises(ValueError, match=r"Unknown `optimizer`.*allowed names: \['adagrad'"):
        optimizer_factory(name)
