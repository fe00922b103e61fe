"""trace_graph: torch.fx where it can, else torch.export rewritten into torch.fx's torch-level conventions (module
calls, torch functions and tensor methods, get_attr for parameters read elsewhere), with shapes that match a real
run and a GraphModule that computes what the model computes."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from lightning_optim.functional.pruning import TracedGraph, trace_graph
from lightning_optim.functional.pruning.dependency import DependencyError
from tests.nets import ConcatCNN, ResidualCNN, SEDepthwiseCNN

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _module_calls(traced: TracedGraph, model: nn.Module) -> dict[str, type[nn.Module]]:
    return {
        n.target: type(model.get_submodule(n.target)) for n in traced.graph.nodes if n.op == "call_module"
    }


def _real_shapes(traced: TracedGraph, *args) -> dict[fx.Node, tuple[int, ...]]:
    """The shape of every tensor node of ``traced`` when its GraphModule really runs on ``args``."""
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                shapes[n] = tuple(result.shape)
            return result

    with torch.no_grad():
        Recorder(traced.module).run(*args)
    return shapes


def _assert_meta_matches_a_real_run(traced: TracedGraph, *args) -> None:
    shapes = _real_shapes(traced, *args)
    assert len(shapes) > 10
    for node, shape in shapes.items():
        meta = node.meta.get("tensor_meta")
        assert meta is not None, node.format_node()
        assert tuple(meta.shape) == shape, node.format_node()


def _innermost(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _no_aten_ops(traced: TracedGraph) -> list[str]:
    return [
        str(n.target)
        for n in traced.graph.nodes
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
    ]


# ------------------------------------------------------------------------------------------ fx path
def test_fx_path_for_a_small_cnn():
    torch.manual_seed(0)
    model = ResidualCNN(width=8).train()
    model.stem[1].eval()  # mixed modes come back as they were
    traced = trace_graph(model, X)
    assert traced.how == "fx" and traced.notes == []
    assert model.training and not model.stem[1].training and model.blocks[0][1].training
    calls = _module_calls(traced, model)
    assert [k for k, t in calls.items() if t is nn.Conv2d] == [
        "stem.0",
        "blocks.0.0",
        "blocks.0.3",
        "blocks.1.0",
        "blocks.1.3",
    ]
    assert all(n.meta["tensor_meta"] is not None for n in traced.graph.nodes if n.op == "call_module")
    model.eval()
    torch.testing.assert_close(traced.module(X), model(X))


# ------------------------------------------------------------------------------------------ export path, CNNs
@pytest.mark.parametrize("net", [ResidualCNN, ConcatCNN, SEDepthwiseCNN])
def test_export_path_gives_the_module_calls_of_the_fx_path(net):
    torch.manual_seed(0)
    model = net().eval()
    fx_graph = trace_graph(model, X, method="fx")
    exported = trace_graph(model, X, method="export")
    assert exported.how == "export"
    assert _no_aten_ops(exported) == []  # every op of these nets has a torch-level form
    parametrized = {
        k: t
        for k, t in _module_calls(fx_graph, model).items()
        if any(True for _ in model.get_submodule(k).parameters())
    }
    # conv, batch norm, linear: the same modules in the same order (parameter-free ones become functions)
    assert list(_module_calls(exported, model).items()) == list(parametrized.items())
    assert [n.name for n in exported.graph.nodes if n.op == "placeholder"] == ["x"]
    _assert_meta_matches_a_real_run(exported, X)
    torch.testing.assert_close(exported.module(X), model(X), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fx.GraphModule(model, exported.graph)(X), model(X), atol=1e-5, rtol=1e-5)


class _Zoo(nn.Module):
    """Many ops at once: parameters used outside their module, constants, in-place ops, pooling, attention."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8, padding_idx=0)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm1d(8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.convt = nn.ConvTranspose1d(8, 4, 2, stride=2)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.c = torch.tensor([3.0])  # a plain tensor attribute: a lifted constant
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool1d(2)

    def forward(self, ids):
        h = self.emb(ids)
        h = self.proj(h) * self.scale
        h = h + F.linear(h, self.proj.weight)  # proj's weight outside proj, without its bias
        h = 2 - (torch.add(h, h, alpha=0.5) - 1)
        a, b = self.norm(h).chunk(2, dim=-1)
        h = torch.cat([b, a], -1).softmax(-1) * self.c + torch.tensor(2.0)
        t = self.act(self.bn(self.gn(h.transpose(1, 2).contiguous())))
        t = F.interpolate(self.pool(self.conv(t)), scale_factor=2.0)
        t = F.hardtanh(t, -0.5, 0.5).clone()
        t.mul_(2)
        t = self.convt(t)[..., 1:]
        t = F.avg_pool1d(t, 2) + F.adaptive_avg_pool1d(t, 3).mean(-1, keepdim=True)
        q = t.permute(0, 2, 1).unsqueeze(1)
        o = F.scaled_dot_product_attention(q, q, q, is_causal=True).squeeze(1).flatten(1).view(2, -1, 2)
        s = o.sum((1,)) @ torch.ones(2, 3)
        return {"logits": F.gelu(s, approximate="tanh") / 3, "row": h[:, 0].select(1, 2)}


def test_export_rewrite_of_many_ops_runs_like_the_model():
    torch.manual_seed(0)
    model = _Zoo().eval()
    ids = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(1))
    traced = trace_graph(model, ids, method="export")
    nodes = list(traced.graph.nodes)
    calls = [n.target for n in nodes if n.op == "call_module"]
    assert calls == [
        "emb",
        "proj",
        "norm",
        "gn",
        "bn",
        "conv",
        "convt",
    ]  # proj once: its other use is F.linear
    functional = [n for n in nodes if n.target is F.linear]
    assert len(functional) == 1 and functional[0].args[1].op == "get_attr"
    assert functional[0].args[1].target == "proj.weight" and functional[0].args[2] is None
    attrs = {n.target for n in nodes if n.op == "get_attr"}
    assert attrs == {"scale", "proj.weight", "c", "_lifted_tensor_0"}
    assert any("proj.weight" in note for note in traced.notes)
    by_target = {n.target for n in nodes if n.op in ("call_function", "call_method")}
    assert {
        torch.add,
        operator.sub,
        "chunk",
        "softmax",
        F.relu,
        F.max_pool1d,
        F.interpolate,
        "mul_",
    } <= by_target
    assert {F.hardtanh, "clone", F.scaled_dot_product_attention, "reshape", "permute", "select"} <= by_target
    (alpha,) = [n for n in nodes if n.target is torch.add]
    assert alpha.kwargs == {"alpha": 0.5}
    (sliced,) = [n for n in nodes if n.target is operator.getitem and n.args[0].target == "convt"]
    assert sliced.args[1] == (slice(None), slice(None), slice(1, None))  # the INT64 end became None
    assert [n.target for n in nodes if n.op == "placeholder"] == ["ids"]
    _assert_meta_matches_a_real_run(traced, ids)
    expected, got = model(ids), traced.module(ids)
    assert isinstance(got, dict) and got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ transformers
@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    from tests.nets import tiny_bert_config

    config = tiny_bert_config()
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    return model, ids


def test_fx_cannot_trace_bert_alone(tiny_bert):
    model, ids = tiny_bert
    with pytest.raises(DependencyError, match="BertForSequenceClassification.*torch.fx could not trace"):
        trace_graph(model, ids, method="fx")


def test_bert_is_exported_and_rewritten_to_module_calls(tiny_bert):
    model, ids = tiny_bert
    model.train()
    traced = trace_graph(model, ids)
    assert all(m.training for m in model.modules())  # eval mode only while tracing
    model.eval()
    assert traced.how == "export"
    assert "torch.fx could not trace" in traced.notes[0]
    calls = _module_calls(traced, model)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    embeddings = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert len(linears) == 14 and len(norms) == 5 and len(embeddings) == 3
    assert set(calls) == linears | norms | embeddings
    nodes = list(traced.graph.nodes)
    sdpa = [n for n in nodes if n.target is F.scaled_dot_product_attention]
    assert [_innermost(n) for n in sdpa] == [f"bert.encoder.layer.{i}.attention.self" for i in range(2)]
    assert sdpa[0].kwargs["scale"] == pytest.approx(8**-0.5) and "attn_mask" in sdpa[0].kwargs
    for i in range(2):  # q, k, v: reshaped to heads and transposed; the context back (as torch.fx would)
        inside = [
            n.target
            for n in nodes
            if n.op == "call_method" and _innermost(n).startswith(f"bert.encoder.layer.{i}.")
        ]
        assert inside.count("reshape") >= 4 and inside.count("transpose") >= 4
    assert [n.target for n in nodes if n.op == "placeholder"] == ["input_ids"]
    assert {n.target for n in nodes if n.op == "get_attr"} == {
        "bert.embeddings.position_ids",
        "bert.embeddings.token_type_ids",
    }
    kept = [n for n in nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
    assert kept and {_innermost(n) for n in kept} <= {"bert", "bert.embeddings"}  # only mask and position ids

    # shapes: each module node's tensor_meta is its module's output in a real run of the model
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape))
        )
        for name in calls
    ]
    try:
        expected = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    module_nodes = {n.target: n for n in nodes if n.op == "call_module"}
    assert {k: tuple(n.meta["tensor_meta"].shape) for k, n in module_nodes.items()} == seen
    assert seen["bert.encoder.layer.0.intermediate.dense"] == (2, 8, 64)
    _assert_meta_matches_a_real_run(traced, ids)

    out = traced.module(ids)
    assert type(out).__name__ == "SequenceClassifierOutput"
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        fx.GraphModule(model, traced.graph)(ids).logits, expected, atol=1e-5, rtol=1e-5
    )


def test_vit_and_distilbert_are_exported_and_run_like_the_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=16,
            patch_size=8,
            num_labels=3,
        )
    ).eval()
    distil = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=100, max_position_embeddings=16
        )
    ).eval()
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    for model, x in ((vit, X), (distil, ids)):
        traced = trace_graph(model, x)
        assert traced.how == "export"
        linears = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.LayerNorm))}
        assert linears <= set(_module_calls(traced, model))
        assert sum(n.target is F.scaled_dot_product_attention for n in traced.graph.nodes) == 2
        _assert_meta_matches_a_real_run(traced, x)
        torch.testing.assert_close(traced.module(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)
    vit_traced = trace_graph(vit, X)
    assert _module_calls(vit_traced, vit)["vit.embeddings.patch_embeddings.projection"] is nn.Conv2d
    attrs = {n.target for n in vit_traced.graph.nodes if n.op == "get_attr"}
    assert attrs == {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}


# ------------------------------------------------------------------------------------------ failures
class _DataDependent(nn.Module):
    """A branch on a tensor's value: torch.fx cannot trace it, torch.export cannot guard on it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


def test_a_model_no_tracer_handles_raises_with_both_failures():
    with pytest.raises(DependencyError) as info:
        trace_graph(_DataDependent(), torch.randn(2, 4))
    message = str(info.value)
    assert "_DataDependent" in message
    assert "torch.fx could not trace" in message and "torch.export could not export" in message
    assert "exclude that module from pruning, or leave it dense" in message


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        trace_graph(ResidualCNN(), X, method="jit")
