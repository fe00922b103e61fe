"""The weight-sharing artifact: exact round trips (outputs included) of pruned and shared models, every entry
kind and dtype, the skeleton check against the user's architecture, the size breakdown, the loader copied beside
a deployment, and corrupt, truncated or crafted files refused with a ValueError naming the file."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_optim.functional.pruning import apply_masks_, compute_masks
from lightning_optim.functional.weight_sharing import (
    SharedArtifactError,
    dense_state_dict_bytes,
    load_shared,
    load_shared_state_dict,
    pack_shared,
    read_shared_header,
    save_shared,
    share_weights_,
    size_breakdown,
)
from lightning_optim.functional.weight_sharing import artifact as artifact_module
from lightning_optim.functional.weight_sharing import entropy as entropy_module
from lightning_optim.models import ConvNet3, LeNet300100


def _pruned_shared_lenet(seed: int = 0, sparsity: float = 0.9, bits: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    model = LeNet300100(in_features=64, hidden=(64, 32))
    weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    with torch.no_grad():
        apply_masks_(weights, compute_masks(weights, sparsity, "unstructured", "layer", "l1"))
    share_weights_(model, bits, init="density")
    return model.eval()


class _Buffers(nn.Module):
    """Every dtype the format stores, and the edge shapes: a scalar, an empty tensor, an all-zero weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.zero = nn.Parameter(torch.zeros(3, 3))
        self.register_buffer("scalar", torch.tensor(2.5))
        self.register_buffer("empty", torch.zeros(0, 4))
        self.register_buffer("f16", torch.randn(5).half())
        self.register_buffer("bf16", torch.randn(5).bfloat16())
        self.register_buffer("f64", torch.randn(5).double())
        for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            self.register_buffer(f"i_{str(dtype)[6:]}", torch.arange(7, dtype=dtype))
        self.register_buffer("flags", torch.tensor([True, False, True]))

    def forward(self, x):
        return self.fc(x) * self.scalar


def test_round_trip_reproduces_outputs_exactly(tmp_path):
    model = _pruned_shared_lenet()
    x = torch.randn(16, 1, 8, 8)
    path = tmp_path / "m.lws"
    blob = save_shared(model, path, example_input=x)
    assert path.read_bytes() == blob
    for rebuilt in (
        load_shared(path, LeNet300100(in_features=64, hidden=(64, 32))),
        load_shared(blob, lambda: LeNet300100(in_features=64, hidden=(64, 32))),
    ):
        assert not rebuilt.training
        assert torch.equal(rebuilt(x), model(x))
        for key, value in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[key], value), key


def test_shared_weights_are_stored_as_codebooks_and_much_smaller():
    model = _pruned_shared_lenet()
    info = size_breakdown(model)
    kinds = {e.name: e.kind for e in info.entries}
    assert kinds["fc1.weight"] == kinds["fc2.weight"] == kinds["fc3.weight"] == "shared"
    assert kinds["fc1.bias"] == "dense"
    fc1 = next(e for e in info.entries if e.name == "fc1.weight")
    assert fc1.k <= 16 and fc1.nonzero == round(0.1 * 64 * 64) and fc1.codebook == 4 * fc1.k
    # 4-bit indices and ~4.7-bit gaps: under 10 bits per non-zero weight
    assert (fc1.indices + fc1.positions) * 8 / fc1.nonzero < 10
    assert info.total < dense_state_dict_bytes(model) / 15


def test_every_dtype_and_edge_shape_round_trips():
    torch.manual_seed(0)
    model = _Buffers()
    state = load_shared_state_dict(pack_shared(model))
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        assert torch.equal(state[key], value), key
    kinds = {e["name"]: e["kind"] for e in read_shared_header(pack_shared(model))["entries"]}
    assert kinds["zero"] == "sparse" and kinds["i_int64"] == "dense"


def test_conv_net_with_batch_norm_round_trips(tmp_path):
    torch.manual_seed(0)
    model = ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32)
    model.train()(torch.randn(8, 1, 8, 8))  # running statistics and num_batches_tracked
    share_weights_(model, {"classifier*": 3, "*": 5})
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    save_shared(model, tmp_path / "c.lws", example_input=x)
    rebuilt = load_shared(tmp_path / "c.lws", ConvNet3(image_size=8, channels=(8, 16, 32), hidden=32))
    assert torch.equal(rebuilt(x), model(x))


def test_unshared_and_unpruned_models_round_trip_too():
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, hidden=(64, 32)).eval()
    rebuilt = load_shared(pack_shared(model), LeNet300100(in_features=64, hidden=(64, 32)))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_narrow_storage_types_round_and_the_file_holds_what_it_says():
    model = _pruned_shared_lenet()
    wide = len(pack_shared(model))
    blob = pack_shared(model, codebook_dtype="float16", other_dtype="bfloat16")
    assert len(blob) < wide
    state = load_shared_state_dict(blob)
    fc1 = state["fc1.weight"]
    assert torch.equal(fc1, fc1.half().float())  # codebook values are float16 values
    assert torch.equal(state["fc1.bias"], model.fc1.bias.detach().bfloat16().float())
    assert torch.equal(fc1 != 0, model.fc1.weight != 0)
    # saving what was loaded is exact again
    again = load_shared_state_dict(pack_shared(state, codebook_dtype="float16", other_dtype="bfloat16"))
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_bad_storage_type_refused():
    with pytest.raises(
        ValueError, match=r"Unknown `codebook_dtype` 'int8'; allowed: \['float32', 'float16', 'bfloat16'\]"
    ):
        pack_shared(_pruned_shared_lenet(), codebook_dtype="int8")


def test_size_breakdown_adds_up_to_the_file():
    model = _pruned_shared_lenet()
    blob = pack_shared(model, metadata={"model": "LeNet300100"})
    info = size_breakdown(blob)
    assert info.total == len(blob) == sum(info.parts().values())
    assert set(info.by_layer()) == set(model.state_dict())
    assert info.metadata == {"model": "LeNet300100"}
    table = info.markdown()
    assert "fc1.weight" in table and f"total {len(blob)} B" in table
    assert size_breakdown(model, metadata={"model": "LeNet300100"}).total == len(blob)


def test_metadata_and_skeleton_in_the_header():
    header = read_shared_header(pack_shared(_pruned_shared_lenet(), metadata={"input_shape": [1, 8, 8]}))
    assert header["metadata"] == {"input_shape": [1, 8, 8]}
    assert [(e["name"], e["shape"]) for e in header["entries"]][:2] == [
        ("fc1.weight", [64, 64]),
        ("fc1.bias", [64]),
    ]


def test_wrong_architecture_refused_naming_the_differences(tmp_path):
    path = tmp_path / "m.lws"
    save_shared(_pruned_shared_lenet(), path)
    with pytest.raises(
        SharedArtifactError,
        match=r"m\.lws: the model \(LeNet300100\) does not fit.*shapes differ: .*'fc1\.weight: file \(64, 64\), model \(300, 64\)",
    ):
        load_shared(path, LeNet300100(in_features=64))
    with pytest.raises(SharedArtifactError, match=r"missing in the file.*not in the model"):
        load_shared(path, ConvNet3(image_size=8))


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.lws"):
        load_shared_state_dict(tmp_path / "nothing.lws")


# ------------------------------------------------------------------------------------------ corrupt files
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("artifact") / "model.lws"
    return path, save_shared(_pruned_shared_lenet(), path)


def test_every_truncation_is_refused_naming_the_file(saved, tmp_path):
    _, blob = saved
    for cut in sorted({0, 3, 8, 9, 12, 40, len(blob) // 3, len(blob) // 2, len(blob) - 5, len(blob) - 1}):
        path = tmp_path / f"cut{cut}.lws"
        path.write_bytes(blob[:cut])
        with pytest.raises(SharedArtifactError, match=rf"cut{cut}\.lws: not a valid weight-sharing artifact"):
            load_shared(path, LeNet300100(in_features=64, hidden=(64, 32)))


def test_every_altered_byte_is_refused(saved):
    _, blob = saved
    for at in range(0, len(blob), max(1, len(blob) // 97)):
        altered = bytearray(blob)
        altered[at] ^= 0x10
        with pytest.raises(SharedArtifactError, match="<bytes>: not a valid weight-sharing artifact"):
            load_shared_state_dict(bytes(altered))


def test_not_an_artifact_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(
        SharedArtifactError, match=r"model\.pt: not a valid weight-sharing artifact: bad magic bytes"
    ):
        load_shared_state_dict(path)
    with pytest.raises(SharedArtifactError, match="truncated file"):
        load_shared_state_dict(b"")


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_crafted_files_with_a_valid_crc_are_refused(saved):
    _, blob = saved
    body = blob[:-4]
    with pytest.raises(SharedArtifactError, match="do not add up"):
        load_shared_state_dict(_recrc(body + b"\x00"))  # a trailing byte
    with pytest.raises(SharedArtifactError, match="do not add up"):
        load_shared_state_dict(_recrc(body[:-1]))  # a missing byte
    # the header's declared element count beyond the bound on what decoding allocates
    with pytest.raises(SharedArtifactError, match="more than max_elements=100"):
        load_shared_state_dict(blob, max_elements=100)
    # a version this loader does not read
    version_at = len(artifact_module.MAGIC) + 1 + (1 if body[len(artifact_module.MAGIC)] & 0x80 else 0)
    changed = bytearray(body)
    changed[version_at] = 7
    with pytest.raises(SharedArtifactError, match="format version 7"):
        load_shared_state_dict(_recrc(bytes(changed)))


def test_load_shared_bounds_decoding_by_the_model(saved):
    _, blob = saved
    # a model smaller than the file's skeleton: refused from the header, before decoding
    with pytest.raises(SharedArtifactError):
        load_shared(blob, nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ deployment
def test_loader_copied_beside_a_deployment_needs_torch_alone(saved, tmp_path):
    path, _ = saved
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(artifact_module.__file__, deploy / "artifact.py")
    shutil.copy(entropy_module.__file__, deploy / "entropy.py")
    code = (
        "import sys, torch, artifact\n"
        f"state = artifact.load_shared_state_dict({str(path)!r})\n"
        "assert not any(m.startswith('lightning_optim') for m in sys.modules), 'imported lightning_optim'\n"
        "torch.save(state, 'state.pt')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=deploy,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(deploy / "state.pt", weights_only=True)
    expected = _pruned_shared_lenet().state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
