"""Tests generated from the settings table: every exported callback, every mode.

For each callback in ``lightning_optim.callbacks.__all__``: a 2-epoch fit on the embedded digits,
``state_dict`` round trip, pickling (before and after fit), LightningCLI YAML instantiation, resume from a
mid-run checkpoint equal to the uninterrupted run, ``bf16-mixed``, and (``-m slow``) a 2-process DDP fit
on CPU whose final model and callback state are identical on both ranks.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.callbacks import matrix_support as ms
from tests.callbacks.callback_settings import CALLBACK_SETTINGS
from tests.conftest import once
from tests.launch import run_ranks

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORTED = ms.exported_callbacks()


def _skip_reason(name: str, mode: str) -> str | None:
    return ms.entry(name).get("skip", {}).get(mode)


def _params(name: str, mode: str):
    marks = []
    reason = _skip_reason(name, mode) if name in CALLBACK_SETTINGS else None
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(name, id=name, marks=marks)


def _cases(mode: str):
    return [_params(n, mode) for n in sorted(CALLBACK_SETTINGS) if ms.callback_class(n) in EXPORTED]


def _fit(name: str, root: str, callback=None, ckpt_path=None, **overrides):
    pl.seed_everything(0, workers=True)
    callback = callback if callback is not None else ms.make_callback(name)
    module = ms.make_module(name)
    dm = ms.make_datamodule(name)
    extra = [*ms.companions(name), *overrides.pop("callbacks", [])]
    trainer = pl.Trainer(callbacks=[callback, *extra], **ms.trainer_kwargs(name, root, **overrides))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, callback


def test_every_exported_callback_has_settings():
    missing = sorted(set(EXPORTED) - {ms.callback_class(n) for n in CALLBACK_SETTINGS})
    assert not missing, f"Exported callbacks without an entry in tests/callbacks/settings/: {missing}"
    unknown = sorted(n for n in CALLBACK_SETTINGS if ms.callback_class(n) not in EXPORTED)
    assert not unknown, f"Settings entries for callbacks that are not exported: {unknown}"


#: the tests that check one shared fit of each entry (:func:`_fitted`), in this order; ``tests/conftest.py`` puts
#: each entry's tests next to each other so that pytest-xdist hands them to one worker, which fits it once
SHARED_FIT_TESTS = (
    "test_fit_two_epochs",
    "test_state_dict_round_trip",
    "test_pickling",
    "test_resume_equals_uninterrupted",
)


@dataclass
class Fitted:
    """An entry's 2-epoch fit with a checkpoint after each epoch, and its callback pickled before the fit."""

    trainer: pl.Trainer
    module: pl.LightningModule
    callback: pl.Callback
    ckpt_dir: Path
    pickled_before_fit: bytes


def _fitted(name: str, tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    """The entry's fit, made once per test process (:func:`tests.conftest.once`) and read, never changed, by the
    fit, state_dict, pickling and resume tests (the same fit each of them made on its own before)."""

    def make() -> Fitted:
        root = tmp_path_factory.mktemp("fitted")
        ckpt_dir = root / "ckpt"
        checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        before = pickle.dumps(ms.make_callback(name))  # a fresh one (the fit seeds and makes its own)
        trainer, module, callback = _fit(
            name, str(root / "fit"), callbacks=[checkpoints], enable_checkpointing=True
        )
        return Fitted(trainer, module, callback, ckpt_dir, before)

    return once(f"callback-matrix-fit:{name}", make)


@pytest.mark.parametrize("name", _cases("fit"))
def test_fit_two_epochs(name, tmp_path_factory):
    fitted = _fitted(name, tmp_path_factory)
    trainer, module, callback = fitted.trainer, fitted.module, fitted.callback
    assert trainer.state.finished, trainer.state
    assert trainer.current_epoch == 2
    check = ms.entry(name).get("check_active")
    if check is not None:
        check(trainer, module, callback)


@pytest.mark.parametrize("name", _cases("state_dict"))
def test_state_dict_round_trip(name, tmp_path_factory):
    callback = _fitted(name, tmp_path_factory).callback
    state = callback.state_dict()
    fresh = ms.make_callback(name)
    fresh.load_state_dict(state)
    ms.assert_states_equal(state, fresh.state_dict(), what=f"{name} state")
    assert callback.state_key == fresh.state_key


@pytest.mark.parametrize("name", _cases("pickle"))
def test_pickling(name, tmp_path_factory):
    fitted = _fitted(name, tmp_path_factory)
    clone = pickle.loads(fitted.pickled_before_fit)
    assert type(clone) is type(fitted.callback)
    clone = pickle.loads(pickle.dumps(fitted.callback))
    ms.assert_states_equal(fitted.callback.state_dict(), clone.state_dict(), what=f"{name} pickled state")


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "fsdp2"])
@pytest.mark.parametrize("name", _cases("cli"))
def test_cli_yaml_instantiation(name, sharded, tmp_path):
    from lightning.pytorch import LightningDataModule

    from lightning_optim.cli import LightningOptimCLI
    from lightning_optim.modules import ClassificationModule

    init_args = ms.entry(name).get("cli_kwargs", ms.callback_kwargs(name))
    config = {
        "trainer": {
            "accelerator": "cpu",
            "logger": False,
            "max_epochs": 1,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": f"lightning_optim.callbacks.{ms.callback_class(name)}", "init_args": init_args}
            ],
        },
        "model": {
            "class_path": "ClassificationModule",
            "init_args": {"model": {"class_path": "LeNet300100", "init_args": {"in_features": 64}}},
        },
        "data": {"class_path": "ImageClassificationDataModule", "init_args": {"dataset": "digits"}},
    }
    if sharded:  # the recipe of sharded training: ModelParallelStrategy, the network sharded with FSDP2
        config["trainer"]["devices"] = 2
        config["trainer"]["strategy"] = {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
            "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
        }
        config["model"]["init_args"]["sharding"] = "fsdp2"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    cli = LightningOptimCLI(
        ClassificationModule, LightningDataModule, run=False, args=["--config", str(path)]
    )
    cls = getattr(__import__("lightning_optim.callbacks", fromlist=["_"]), ms.callback_class(name))
    found = [cb for cb in cli.trainer.callbacks if isinstance(cb, cls)]
    assert len(found) == 1, f"{name} was not instantiated from YAML: {cli.trainer.callbacks}"
    if sharded:
        from lightning_optim.callbacks._trainer import sharded_strategy

        assert sharded_strategy(cli.trainer) == FSDP2_STRATEGY and cli.model.sharding == "fsdp2"


@pytest.mark.parametrize("name", _cases("resume"))
def test_resume_equals_uninterrupted(name, tmp_path, tmp_path_factory):
    fitted = _fitted(name, tmp_path_factory)
    full_module, full_cb = fitted.module, fitted.callback
    mid = fitted.ckpt_dir / "epoch=0.ckpt"
    assert mid.is_file(), sorted(os.listdir(fitted.ckpt_dir))
    _, resumed_module, resumed_cb = _fit(
        name, str(tmp_path / "b"), ckpt_path=str(mid), enable_checkpointing=True
    )
    ignore = set(ms.entry(name).get("resume_ignore", ()))
    state_a = {
        k: v for k, v in ms.flatten_state(full_cb.state_dict()).items() if k.split(".")[0] not in ignore
    }
    state_b = {
        k: v for k, v in ms.flatten_state(resumed_cb.state_dict()).items() if k.split(".")[0] not in ignore
    }
    ms.assert_states_equal(state_a, state_b, what=f"{name} callback state after resume")
    ms.assert_states_equal(
        ms.model_state(full_module), ms.model_state(resumed_module), what=f"{name} model after resume"
    )


@pytest.mark.parametrize("name", _cases("bf16"))
def test_bf16_mixed(name, tmp_path):
    trainer, module, _ = _fit(name, str(tmp_path), precision="bf16-mixed")
    assert trainer.state.finished
    for key, value in ms.model_state(module).items():
        assert torch.isfinite(value).all(), f"{name}: non-finite {key} after bf16-mixed fit"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs CUDA (runs on a lent GPU)")
@pytest.mark.parametrize("name", _cases("fp16"))
def test_16_mixed_on_gpu(name, tmp_path):
    trainer, module, _ = _fit(
        name, str(tmp_path), precision="16-mixed", accelerator="gpu", deterministic=False
    )
    assert trainer.state.finished
    for key, value in ms.model_state(module).items():
        assert torch.isfinite(value).all(), f"{name}: non-finite {key} after 16-mixed fit"


@pytest.mark.slow
def test_ddp_two_processes_identical(tmp_path):
    names = [
        n
        for n in sorted(CALLBACK_SETTINGS)
        if ms.callback_class(n) in EXPORTED and not _skip_reason(n, "ddp")
    ]
    if not names:
        pytest.skip("no exported callbacks yet")
    run_ranks(
        "tests.callbacks.ddp_matrix_worker", [tmp_path, *names], tmp_path / "logs", name="ddp", timeout=600
    )
    for name in names:
        r0 = torch.load(tmp_path / f"{name}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{name}_rank1.pt", weights_only=True)
        assert r0["world_size"] == r1["world_size"] == 2
        ms.assert_states_equal(r0["model"], r1["model"], atol=0.0, what=f"{name} model rank0 vs rank1")
        ms.assert_states_equal(
            r0["callback"], r1["callback"], atol=0.0, what=f"{name} callback rank0 vs rank1"
        )


# ------------------------------------------------------------------------------------------ sharded (FSDP2)
#: the substring every refusal under FSDP2 names, and the alternative it offers
FSDP2_STRATEGY, FSDP2_ALTERNATIVE = "ModelParallelStrategy (FSDP2)", 'strategy="ddp"'


#: under FSDP2 with bf16-mixed: the callbacks whose sharded work runs inside the autocast steps (the others work
#: on gathered float copies at fit end)
BF16_FSDP2 = ("ProgressivePruning", "QuantizationAwareTraining", "KnowledgeDistillation")


def _fsdp2_names() -> list[str]:
    return [
        n
        for n in sorted(CALLBACK_SETTINGS)
        if ms.callback_class(n) in EXPORTED and not _skip_reason(n, "fsdp2")
    ]


#: the worker module of the FSDP2 matrix (on one node its ranks are forked by ``tests.launch.run_ranks``)
FSDP2_WORKER = "tests.callbacks.fsdp2_matrix_worker"


def check_fsdp2_results(out: Path, names: list[str], resume: bool) -> dict[str, str]:
    """Every entry either fitted under FSDP2 (the network sharded; both ranks end with identical weights and
    callback state; with ``resume``, the run resumed from the first epoch's sharded checkpoint ends equal to the
    uninterrupted one) or was refused at setup, before any step, naming the strategy and the alternative, as its
    class's ``sharded_parameters`` declares. Returns ``{name: "fitted" | "refused"}``."""
    import lightning_optim.callbacks as callbacks_pkg

    outcome = {}
    for name in names:
        r0, r1 = (torch.load(out / f"{name}_rank{r}.pt", weights_only=True) for r in (0, 1))
        assert r0["world_size"] == r1["world_size"] == 2
        support = getattr(callbacks_pkg, ms.callback_class(name)).sharded_parameters
        if "refused" in r0:
            assert support != "supported", f"{name} declares sharded support but was refused: {r0['refused']}"
            for got in (r0, r1):
                message = got["refused"]["message"]
                assert FSDP2_STRATEGY in message and FSDP2_ALTERNATIVE in message, message
                assert got["refused"]["global_step"] == 0, f"{name} was refused after a step"
            outcome[name] = "refused"
            continue
        assert support != "refused", f"{name} declares it refuses sharded parameters but fitted"
        assert "refused" not in r1, f"{name} was refused on rank 1 only"
        assert r0["sharded"] and r0["global_step"] == r1["global_step"] > 0
        ms.assert_states_equal(r0["model"], r1["model"], atol=0.0, what=f"{name} model rank0 vs rank1")
        ms.assert_states_equal(
            r0["callback"], r1["callback"], atol=0.0, what=f"{name} callback rank0 vs rank1"
        )
        if resume:
            ignore = set(ms.entry(name).get("resume_ignore", ()))
            for got in (r0, r1):
                assert got["resumed_from_directory"], f"{name}: the checkpoint was not a sharded directory"
                assert got["resumed_global_step"] == got["global_step"]
                ms.assert_states_equal(
                    got["model"],
                    got["resumed_model"],
                    what=f"{name} model after resuming (sharded checkpoint)",
                )
                a, b = (
                    {k: v for k, v in got[key].items() if k.split(".")[0] not in ignore}
                    for key in ("callback", "resumed_callback")
                )
                ms.assert_states_equal(
                    a, b, what=f"{name} callback state after resuming (sharded checkpoint)"
                )
        outcome[name] = "fitted"
    return outcome


@pytest.mark.slow
def test_fsdp2_fit_and_resume_from_a_sharded_checkpoint(tmp_path):
    """Every entry under FSDP2 on 2 CPU processes: fit, resume from a sharded checkpoint, or a refusal at setup."""
    names = _fsdp2_names()
    run_ranks(FSDP2_WORKER, [tmp_path, *names], tmp_path / "logs", name="fsdp2", timeout=600)
    outcome = check_fsdp2_results(tmp_path, names, resume=True)
    assert "fitted" in outcome.values()


@pytest.mark.slow
def test_fsdp2_bf16_mixed(tmp_path):
    """The callbacks whose sharded work runs inside the training steps (:data:`BF16_FSDP2`), under FSDP2 with
    ``precision="bf16-mixed"``: fitted with identical ranks (bf16-mixed alone is tested for every entry)."""
    names = [n for n in _fsdp2_names() if n in BF16_FSDP2]
    run_ranks(
        FSDP2_WORKER,
        [tmp_path, "--no-resume", *names],
        tmp_path / "logs",
        name="fsdp2_bf16",
        env={"FSDP2_PRECISION": "bf16-mixed"},
        timeout=600,
    )
    outcome = check_fsdp2_results(tmp_path, names, resume=False)
    assert "fitted" in outcome.values()
