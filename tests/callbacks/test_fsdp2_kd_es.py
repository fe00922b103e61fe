"""KnowledgeDistillation and EarlyStopping(restore_best_weights=True) under sharded training (FSDP2 through
``ModelParallelStrategy``).

Fast tests: the ``teacher_sharding`` option (its choices, its refusal without a sharding strategy, what setup
makes of it), the declared support, the refusal under Lightning's ``FSDPStrategy`` (naming the strategy and the
alternatives), the logit cache's lockstep for a sharded teacher, the adapters' own optimizer, and EarlyStopping's
state under sharding (no per-rank weights in it; a resume says so and keeps the final weights when nothing
improved since). Slow tests (2 processes on CPU, gloo; worker ``tests/callbacks/fsdp2_kd_es_worker.py``): a
distilled student sharded over 2 ranks at batch B ends with the weights of a single-process run at batch 2B (the
teacher replicated, sharded with a feature pair, sharded with an uneven logit cache), the teacher unchanged and
never in the sharded checkpoint; EarlyStopping restores the weights of its best check (from each rank's shards
in memory, or from the best sharded checkpoint), equal to the single-process run's restored weights. The slow
tests share one 2-process run of both scenarios (:func:`runs`), made once per test process.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

from lightning_optim.callbacks import EarlyStopping, KnowledgeDistillation, ProgressivePruning
from lightning_optim.functional.distillation import (
    TEACHER_SHARDINGS,
    TeacherLogitCache,
    adapter_optimizer_like,
    logits_through_cache,
)
from tests.callbacks import fsdp2_kd_es_worker as worker
from tests.callbacks import fsdp2_worker as base
from tests.conftest import once, run_once_per_session
from tests.launch import scenarios_launch

#: the worker's scenarios the slow tests check, run in turn by one 2-process run
SCENARIOS = ("kd", "es")
#: float32 sums in another order (two half batches, reduce-scatter) than one process's
ATOL = 1e-5


def _model_parallel_trainer() -> pl.Trainer:
    """A Trainer under ModelParallelStrategy on 2 CPU processes, not started (no process group)."""
    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=30)
    )
    return pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False
    )


def _fsdp1_trainer() -> Any:
    """Something with Lightning's FSDPStrategy (FSDP1) as its strategy (a real Trainer refuses it on a CPU)."""
    return SimpleNamespace(
        strategy=FSDPStrategy.__new__(FSDPStrategy), val_check_interval=1.0, check_val_every_n_epoch=1
    )


# ------------------------------------------------------------------------------------------ option
@pytest.mark.parametrize("value", ["shard", "FSDP2", "ddp"])
def test_teacher_sharding_is_one_of_its_choices(value):
    with pytest.raises(ValueError) as err:
        KnowledgeDistillation(worker.teacher(), teacher_sharding=value)
    assert str(err.value) == (
        f"Unknown `teacher_sharding` {value!r}; allowed: {list(TEACHER_SHARDINGS)} or null (replicate)."
    )


def test_both_callbacks_declare_support_of_sharded_parameters():
    assert KnowledgeDistillation.sharded_parameters == "supported"
    assert EarlyStopping.sharded_parameters == "supported"


@pytest.mark.parametrize(
    ("value", "mode"), [(None, "replicate"), ("replicate", "replicate"), ("fsdp2", "fsdp2")]
)
def test_setup_under_model_parallel_strategy_chooses_the_teacher_placement(value, mode):
    kd = KnowledgeDistillation(worker.teacher(), teacher_sharding=value)
    kd.setup(_model_parallel_trainer(), base.module("fsdp2"), "fit")
    assert kd._sharded and kd._teacher_mode == mode


def test_restore_best_weights_passes_setup_under_model_parallel_strategy():
    es = EarlyStopping(monitor="val_loss", restore_best_weights=True)
    es.setup(_model_parallel_trainer(), base.module("fsdp2"), "fit")
    assert es._sharded


def test_a_sharded_teacher_without_a_sharding_strategy_is_refused_at_setup(tmp_path):
    kd = KnowledgeDistillation(worker.teacher(), teacher_sharding="fsdp2", **worker.KD)
    trainer = pl.Trainer(**base.trainer_kwargs(str(tmp_path), accelerator="cpu", devices=1, callbacks=[kd]))
    with pytest.raises(ValueError, match="`teacher_sharding`='fsdp2'") as err:
        trainer.fit(base.module(None), train_dataloaders=base.loader(base.BATCH))
    assert "'replicate'" in str(err.value) and "ModelParallelStrategy" in str(err.value)
    assert trainer.global_step == 0


def test_a_replicated_teacher_without_a_sharding_strategy_is_what_happens_anyway(tmp_path):
    kd = KnowledgeDistillation(worker.teacher(), teacher_sharding="replicate", **worker.KD)
    trainer = pl.Trainer(
        **base.trainer_kwargs(str(tmp_path), accelerator="cpu", devices=1, callbacks=[kd], max_epochs=1)
    )
    trainer.fit(base.module(None), train_dataloaders=base.loader(base.BATCH))
    assert trainer.global_step == 8 and not kd._sharded and kd.stats["distilled_steps"] == 8


@pytest.mark.parametrize(
    ("callback", "what"),
    [
        (lambda: KnowledgeDistillation(worker.teacher()), "KnowledgeDistillation"),
        (
            lambda: EarlyStopping(monitor="val_loss", restore_best_weights=True),
            "EarlyStopping(restore_best_weights=True)",
        ),
        (
            lambda: ProgressivePruning(granularity="channel_groups", end=1, compact_at_end=True),
            "ProgressivePruning(granularity='channel_groups', compact_at_end=True)",
        ),
    ],
)
def test_lightning_fsdp_strategy_is_refused_naming_it_and_the_alternatives(callback, what):
    with pytest.raises(ValueError) as err:
        callback().setup(_fsdp1_trainer(), base.module(None), "fit")
    message = str(err.value)
    assert message.startswith(what) and "under FSDPStrategy" in message
    assert "ModelParallelStrategy" in message and 'strategy="ddp"' in message


def test_early_stopping_without_restore_is_not_refused_under_lightning_fsdp():
    es = EarlyStopping(monitor="val_loss")
    es.setup(_fsdp1_trainer(), base.module(None), "validate")
    assert es._sharded


# ------------------------------------------------------------------------------------------ pure parts
def _filled_cache(n: int) -> TeacherLogitCache:
    cache = TeacherLogitCache(2**20)
    cache.insert(torch.arange(n), torch.randn(n, 3))
    return cache


def test_cache_lockstep_runs_the_teacher_on_an_empty_batch_when_another_rank_needs_it():
    calls: list[int] = []

    def forward(x):
        calls.append(len(x))
        return torch.zeros(len(x), 3)

    cache, index, x = _filled_cache(4), torch.arange(4), torch.randn(4, 2)
    logits, hits = logits_through_cache(cache, index, x, forward, lockstep=lambda needed: True)
    assert calls == [0] and hits == 4 and torch.equal(logits, cache.values[:4])
    logits_through_cache(cache, index, x, forward, lockstep=lambda needed: needed)  # no rank needs it
    logits_through_cache(cache, index, x, forward)  # no lockstep: as before
    assert calls == [0]
    # a rank that misses runs the teacher on its misses only, as without lockstep
    logits_through_cache(cache, torch.arange(6), torch.randn(6, 2), forward, lockstep=lambda needed: needed)
    assert calls == [0, 2]


def test_the_adapters_own_optimizer_takes_the_steps_of_a_parameter_group():
    torch.manual_seed(0)
    student, adapter = nn.Linear(3, 2), nn.Linear(2, 2)
    twin = nn.Linear(2, 2)
    twin.load_state_dict(adapter.state_dict())
    main = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    grouped = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    grouped.add_param_group({"params": list(twin.parameters()), "lr": 0.05})
    own = adapter_optimizer_like(main, list(adapter.parameters()), lr=0.05)
    assert type(own) is torch.optim.SGD and own.defaults["momentum"] == 0.9 and own.defaults["nesterov"]
    for _ in range(3):
        x = torch.randn(4, 2)
        for net, opt in ((adapter, own), (twin, grouped)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(adapter.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------ ES state
def test_sharded_best_weights_without_a_process_group_stay_out_of_the_state_and_a_resume_says_so(tmp_path):
    # a state saved with no process group (after the fit) cannot gather the shards: it says the copy is lost
    es = EarlyStopping(monitor="score", restore_best_weights=True)
    es._sharded, es._best_weights_local = True, True
    es.best_weights, es.best_epoch = {"model.0.weight": torch.ones(2)}, 4
    state = es.state_dict()
    assert state["best_weights"] is None and state["best_weights_per_rank"] is True
    assert state["best_epoch"] == 4
    resumed = EarlyStopping(monitor="score", restore_best_weights=True)
    with pytest.warns(UserWarning, match="re-arms at the next improvement"):
        resumed.load_state_dict(state)
    assert resumed.best_weights is None and resumed.best_epoch == 4
    # nothing improved after the resume: the final weights stay, and that is said
    module = base.module(None)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(**base.trainer_kwargs(str(tmp_path), accelerator="cpu", devices=1))
    with pytest.warns(UserWarning, match="the final weights are kept"):
        resumed._run_restore_best_weights(trainer, module)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert resumed.restored_epoch is None


def test_unsharded_best_weights_stay_in_the_state():
    es = EarlyStopping(monitor="score", restore_best_weights=True)
    es.best_weights, es.best_epoch = {"w": torch.ones(2)}, 1
    state = es.state_dict()
    assert torch.equal(state["best_weights"]["w"], torch.ones(2)) and state["best_weights_per_rank"] is False


# ------------------------------------------------------------------------------------------ 2 processes
_launch = scenarios_launch("tests.callbacks.fsdp2_kd_es_worker", SCENARIOS, name="kd_es")


def _results(tmp_path_factory) -> dict[str, list[dict[str, Any]]] | str:
    """Each scenario's results (rank 0, rank 1), or why the run failed (the ranks' statuses and logs)."""
    got = run_once_per_session(__name__, tmp_path_factory, _launch)
    if isinstance(got, str):
        return got
    return {s: [torch.load(got / f"{s}_rank{r}.pt", weights_only=True) for r in (0, 1)] for s in SCENARIOS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """The 2-process run's results, made once per test session; a failed run fails every test that needs it
    with the ranks' logs (and is not started again)."""
    got = once(f"{__name__}:runs", lambda: _results(tmp_path_factory))
    if isinstance(got, str):
        pytest.fail(got, pytrace=False)
    return got


@pytest.fixture(scope="module")
def kd_runs(runs) -> list[dict[str, Any]]:
    return runs["kd"]


@pytest.fixture(scope="module")
def es_runs(runs) -> list[dict[str, Any]]:
    return runs["es"]


def _single_process_kd(run: str, root: Path) -> tuple[KnowledgeDistillation, pl.LightningModule]:
    """The reference: one process at twice the batch, the same distillation without sharding options (and,
    for the ``cache`` run, without the cache: cached logits equal the teacher's)."""
    settings = {
        k: v for k, v in worker.KD_RUNS[run].items() if k not in ("teacher_sharding", "cache_teacher_logits")
    }
    kd = KnowledgeDistillation(worker.teacher(), **worker.KD, **settings)
    trainer = pl.Trainer(**base.trainer_kwargs(str(root), accelerator="cpu", devices=1, callbacks=[kd]))
    module = base.module(None)
    pl.seed_everything(0)  # as the sharded run's ranks are re-seeded when their process group starts
    trainer.fit(module, train_dataloaders=base.loader(2 * base.BATCH))
    assert trainer.global_step == 8
    return kd, module


def _assert_weights_close(got: dict[str, torch.Tensor], module: nn.Module, what: str) -> None:
    expected = dict(module.named_parameters())
    assert set(got) == set(expected), what
    for name, p in expected.items():
        torch.testing.assert_close(
            got[name], p.detach(), atol=ATOL, rtol=0, msg=lambda m, n=name: f"{what} {n}: {m}"
        )


def _checkpoint_keys(path: str) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(path).read_metadata().state_dict_metadata)


@pytest.mark.slow
@pytest.mark.parametrize("run", list(worker.KD_RUNS))
def test_fsdp2_distilled_student_equals_single_process(run, kd_runs, tmp_path):
    reference_kd, reference = _single_process_kd(run, tmp_path)
    for rank, results in enumerate(kd_runs):
        got = results[run]
        assert got["global_step"] == 8 and got["student_sharded"], (rank, run)
        assert got["teacher_mode"] == ("replicate" if run == "replicate" else "fsdp2")
        _assert_weights_close(got["student"], reference.model, f"{run}, rank {rank}: student")
        if run == "features":
            assert got["adapter_optimizer"]
            for name, value in reference_kd.adapters.state_dict().items():
                torch.testing.assert_close(got["adapters"][name], value, atol=ATOL, rtol=0)
    # the student moved: the comparison can fail
    untrained = base.module(None).model
    assert any(not torch.allclose(kd_runs[0][run]["student"][n], p) for n, p in untrained.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("run", list(worker.KD_RUNS))
def test_fsdp2_teacher_is_unchanged_and_sharded_as_asked(run, kd_runs):
    expected = dict(worker.teacher().named_parameters())
    full = sum(p.numel() for p in expected.values())
    for results in kd_runs:
        got = results[run]
        for name, p in expected.items():
            assert torch.equal(got["teacher_before"][name], p.detach()), name
            assert torch.equal(got["teacher_after"][name], p.detach()), name
        assert got["teacher_sharded"] is (run != "replicate")
        assert (got["teacher_local_numel"] < full) is (run != "replicate")


@pytest.mark.slow
def test_fsdp2_sharded_teacher_with_an_uneven_cache_runs_in_lockstep(kd_runs):
    rank0, rank1 = (r["cache"] for r in kd_runs)
    # epoch 2: rank 0 has all 32 of its samples cached, rank 1 only its first 16
    assert rank0["cache_hits"] == 32 and rank1["cache_hits"] == 16
    # rank 0 ran the teacher 4 times in epoch 1 and twice more, on empty batches, beside rank 1's 2 forwards
    assert rank0["teacher_calls"] == 6 and rank1["teacher_calls"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("run", list(worker.KD_RUNS))
def test_fsdp2_checkpoint_holds_the_student_and_no_teacher(run, kd_runs):
    path = kd_runs[0][run]["checkpoint"]
    assert path == kd_runs[1][run]["checkpoint"] and Path(path).is_dir()  # a sharded checkpoint
    keys = _checkpoint_keys(path)
    model_keys = {k.removeprefix("state_dict.") for k in keys if k.startswith("state_dict.")}
    assert model_keys == set(base.module(None).state_dict())
    assert all(k.startswith(("state_dict.model.", "optimizer_0.")) for k in keys), sorted(keys)
    meta = torch.load(Path(path) / "meta.pt", map_location="cpu", weights_only=True)
    states = [v for k, v in meta["callbacks"].items() if k.startswith("KnowledgeDistillation")]
    assert len(states) == 1
    state = states[0]
    assert set(state) == {"adapters", "adapter_optimizer", "epoch_stats", "epoch_closed"}
    if run == "features":  # the adapters (replicated: rank 0's are every rank's) and their own optimizer
        assert set(state["adapters"]) == set(kd_runs[0][run]["adapters"])
        for name, value in state["adapters"].items():
            assert torch.equal(value, kd_runs[0][run]["adapters"][name])
        (group,) = state["adapter_optimizer"]["param_groups"]  # the student's SGD settings, its lr
        assert len(group["params"]) == len(state["adapters"]) and group["lr"] == 0.1
    else:
        assert state["adapters"] == {} and state["adapter_optimizer"] is None


def _single_process_es(root: Path) -> tuple[EarlyStopping, worker.ScriptedScore, pl.LightningModule]:
    es, score, checkpoint = worker.es_callbacks("memory", root / "ckpt")
    trainer = pl.Trainer(
        **base.trainer_kwargs(
            str(root),
            accelerator="cpu",
            devices=1,
            callbacks=[score, es, checkpoint],
            enable_checkpointing=True,
            max_epochs=len(worker.SCORES),
        )
    )
    module = base.module(None)
    pl.seed_everything(0)
    loader = base.loader(2 * base.BATCH)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=base.loader(2 * base.BATCH))
    return es, score, module


@pytest.mark.slow
@pytest.mark.parametrize("source", list(worker.ES_RUNS))
def test_fsdp2_restore_best_weights_gives_the_best_check(source, es_runs, tmp_path):
    reference_es, reference_score, reference = _single_process_es(tmp_path)
    assert (
        reference_es.restored_epoch == worker.BEST_EPOCH and reference_es.stopped_epoch == worker.STOP_EPOCH
    )
    for rank, results in enumerate(es_runs):
        got = results[source]
        assert got["sharded"] and got["best_epoch"] == worker.BEST_EPOCH, rank
        assert got["stopped_epoch"] == worker.STOP_EPOCH and got["restored_epoch"] == worker.BEST_EPOCH
        best, last = got["checks"][worker.BEST_EPOCH], got["checks"][worker.STOP_EPOCH]
        assert any(not torch.equal(best[n], last[n]) for n in best)  # the final weights are other weights
        for name, value in best.items():
            assert torch.equal(got["restored"][name], value), f"{source}, rank {rank}: {name}"
        # the checks saw the single-process run's weights, and the restore gave its restored weights
        _assert_weights_close(got["restored"], reference.model, f"{source}, rank {rank}: restored")
        for epoch, weights in got["checks"].items():
            for name, value in weights.items():
                torch.testing.assert_close(value, reference_score.weights[epoch][name], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_fsdp2_whole_best_weights_are_restored_into_the_shards(es_runs):
    for results in es_runs:
        got, epoch0 = results["whole"], results["memory"]["checks"][0]
        assert got["restored_epoch"] == 0
        assert any(not torch.equal(epoch0[n], v) for n, v in results["memory"]["restored"].items())
        for name, value in epoch0.items():
            assert torch.equal(got["restored"][name], value), name


@pytest.mark.slow
def test_fsdp2_best_checkpoints_are_a_folder_and_a_file(es_runs):
    assert Path(es_runs[0]["checkpoint"]["best_checkpoint"]).is_dir()
    assert Path(es_runs[0]["checkpoint_file"]["best_checkpoint"]).is_file()


@pytest.mark.slow
def test_fsdp2_memory_copy_is_gathered_whole_into_the_checkpoint(es_runs):
    best_weights = es_runs[0]["memory"]["checks"][worker.BEST_EPOCH]
    for results in es_runs:  # the state after the fit (process group up): gathered on every rank
        got = results["memory"]
        assert got["state_per_rank"] is False
        for name, value in best_weights.items():
            assert torch.equal(got["state_best_weights"][f"model.{name}"], value), name
    best = Path(es_runs[0]["memory"]["best_checkpoint"])
    assert best.is_dir() and "epoch=1" in best.name
    meta = torch.load(best / "meta.pt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in meta["callbacks"].items() if k.startswith("EarlyStopping")]
    assert state["best_weights_per_rank"] is False and state["best_epoch"] == worker.BEST_EPOCH
    for name, value in best_weights.items():  # whole tensors, as an unsharded run's checkpoint holds them
        assert torch.equal(state["best_weights"][f"model.{name}"], value), name


@pytest.mark.slow
def test_fsdp2_memory_best_weights_survive_a_resume(es_runs):
    """A sharded run stopped after its best check and resumed from its last sharded checkpoint restores the best
    check's weights (held only by the checkpoint), as the uninterrupted run does."""
    straight = es_runs[0]["memory"]["restored"]
    for rank, results in enumerate(es_runs):
        got = results["memory_resumed"]
        assert got["saved_best_epoch"] == worker.BEST_EPOCH and got["saved_best_weights"] is not None
        assert got["restored_epoch"] == worker.BEST_EPOCH and got["stopped_epoch"] == worker.STOP_EPOCH
        assert worker.BEST_EPOCH not in got["checks"]  # the best check ran before the resume
        for name, value in straight.items():
            assert torch.equal(got["restored"][name], value), f"rank {rank}: {name}"
