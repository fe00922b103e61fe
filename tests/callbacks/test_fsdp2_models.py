"""Models we did not write under FSDP2 (2 CPU processes): torchvision's ResNet-18 (residual), MobileNetV3-small
(depthwise separable convolutions, squeeze-excitation) and a Hugging Face transformers ``BertLayer`` (transformer
block), random weights, each sharded with ``ClassificationModule(sharding="fsdp2")`` and fitted with unstructured
pruning, post-training quantization and (the BertLayer) the compression report, and again with channel-group
pruning compacted at the end (``fsdp2_models_worker.py``)."""

from __future__ import annotations

import pytest
import torch

from tests.callbacks import fsdp2_models_worker as worker
from tests.conftest import once, run_once_per_session
from tests.launch import scenarios_launch

_launch = scenarios_launch(
    "tests.callbacks.fsdp2_models_worker",
    [*worker.MODELS, *(f"{m}:groups" for m in worker.MODELS)],
    name="models",
)


def _results(tmp_path_factory) -> dict[str, list[dict]] | str:
    got = run_once_per_session(__name__, tmp_path_factory, _launch)
    if isinstance(got, str):
        return got
    return {
        f"{m}{kind}": [torch.load(got / f"{m}{kind}_rank{r}.pt", weights_only=True) for r in (0, 1)]
        for m in worker.MODELS
        for kind in ("", "_groups")
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """Both ranks' results of every model, made once per test session (a failed run fails each test with the
    ranks' logs)."""
    got = once(f"{__name__}:runs", lambda: _results(tmp_path_factory))
    if isinstance(got, str):
        pytest.fail(got, pytrace=False)
    return got


@pytest.mark.slow
@pytest.mark.parametrize("model", list(worker.MODELS))
def test_sharded_pruning_and_int8_on_models_we_did_not_write(runs, model):
    """Every parameter sharded at the first step; the masks (shard-wise) prune each weight to the ramp's final
    sparsity; both ranks end with the same masks, weights and int8 model, which PTQ made from a gathered copy."""
    r0, r1 = runs[model]
    assert r0["sharded"] and r1["sharded"], "the network was not sharded"
    assert r0["global_step"] == r1["global_step"] == 8
    assert r0["masks"] and set(r0["masks"]) == set(r1["masks"])
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name]), f"{model}: mask of {name} differs between the ranks"
    for name, weight in r0["weights"].items():
        assert torch.equal(weight, r1["weights"][name]), f"{model}: {name} differs between the ranks"
    kept = sum(int(m.sum()) for m in r0["masks"].values())
    total = sum(m.numel() for m in r0["masks"].values())
    assert 1 - kept / total == pytest.approx(worker.PRUNING["final_sparsity"], abs=0.01), model
    for name, mask in r0["masks"].items():  # pruned weights are zero in the trained network
        assert not r0["weights"][name][~mask].any(), f"{model}: {name} has weights where its mask is 0"
    assert r0["int8"] and set(r0["int8"]) == set(r1["int8"]), f"{model}: no int8 model"
    for key, value in r0["int8"].items():
        assert torch.equal(value, r1["int8"][key]), f"{model}: int8 {key} differs between the ranks"


@pytest.mark.slow
def test_the_report_measures_the_whole_network(runs):
    """The compression report under FSDP2 counts the gathered network (the BertLayer classifier), not a rank's
    shard, and its rows are the same on both ranks."""
    r0, r1 = runs["bert_layer"]
    full = sum(w.numel() for w in r0["weights"].values())
    assert r0["rows"] and r0["rows"] == r1["rows"]
    end = next(row for row in r0["rows"] if row["stage"] == "fit end")
    assert end["parameters"] == full
    assert end["weight_sparsity"] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("model", list(worker.MODELS))
def test_channel_groups_compacted_under_fsdp2_on_models_we_did_not_write(runs, model):
    """Channel-group pruning under FSDP2 (masks scored on gathered copies), compacted at the end on a gathered copy
    and sharded again: the network is smaller, identical on both ranks, and computes the same on both."""
    r0, r1 = runs[f"{model}_groups"]
    for got in (r0, r1):
        assert got["compacted"] and got["sharded"], f"{model}: not compacted, or not sharded again"
        assert got["removed"] > 0, f"{model}: compaction removed nothing"
        assert sum(w.numel() for w in got["weights"].values()) < got["before"], model
    assert r0["removed"] == r1["removed"] and r0["requested"] == r1["requested"]
    assert set(r0["weights"]) == set(r1["weights"])
    for name, weight in r0["weights"].items():
        assert torch.equal(weight, r1["weights"][name]), f"{model}: {name} differs between the ranks"
    torch.testing.assert_close(r0["output"], r1["output"], atol=0, rtol=0)
