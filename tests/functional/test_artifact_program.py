"""The compact artifact holding a ``torch.export`` program: exact round trips of the three shared nets, the
batch dimension, pruned zeros, refusals, and the loader copied alone into an isolated fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_optim.functional.artifact import (
    ARCHIVE_KINDS,
    ArtifactExportError,
    describe_artifact,
    export_program,
    load_artifact,
    pack_artifact,
    read_header,
    save_artifact,
    unpack_archive,
)
from tests.functional.test_artifact import prune_
from tests.nets import ResidualCNN, SEDepthwiseCNN, TransformerBlock

ARTIFACT_PY = Path(__file__).resolve().parents[2] / "lightning_optim" / "functional" / "artifact.py"

#: the three shared nets and one input batch of each
NETS = {
    "residual CNN": (ResidualCNN, (3, 3, 16, 16)),
    "depthwise/SE": (SEDepthwiseCNN, (3, 3, 16, 16)),
    "transformer block": (TransformerBlock, (3, 5, 16)),
}


def _net(name: str, sparsity: float = 0.5) -> tuple[nn.Module, torch.Tensor]:
    build, shape = NETS[name]
    torch.manual_seed(0)
    model = build()
    model.train()
    with torch.no_grad():  # batch-norm statistics as a trained model has them
        model(torch.randn(8, *shape[1:]))
    model.eval()
    return prune_(model, sparsity), torch.randn(shape)


@pytest.mark.parametrize("name", list(NETS))
def test_the_three_nets_round_trip_exactly(name):
    model, x = _net(name)
    blob = save_artifact(model, archive_format="exported_program", example_input=x)  # verifies itself
    info = describe_artifact(blob)
    assert info["kind"] == "exported_program" and read_header(blob)["format"] == 2
    assert info["program"]["inputs"][0]["shape"] == ["batch", *x.shape[1:]]
    loaded = load_artifact(blob)
    assert isinstance(loaded, nn.Module) and not isinstance(loaded, torch.jit.ScriptModule)
    with torch.no_grad():
        for batch in (x, x[:1], torch.cat([x, x])):  # a dynamic batch: any size runs
            assert torch.equal(loaded(batch), model(batch))
    # the program's weight records went through the storage encoder: the pruned ones as sparse entries
    weights = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert info["encodings"].get("gaps", 0) + info["encodings"].get("bitmask", 0) >= len(weights)


def test_pruned_zeros_cost_nothing_and_the_program_overhead_is_small():
    dense, x = _net("residual CNN", sparsity=0.0)
    pruned, _ = _net("residual CNN", sparsity=0.9)
    dense_program = len(pack_artifact(dense, example_input=x, archive_format="exported_program"))
    pruned_program = len(pack_artifact(pruned, example_input=x, archive_format="exported_program"))
    pruned_state = len(pack_artifact(pruned, archive_format="state_dict"))
    assert pruned_program < 0.45 * dense_program, (pruned_program, dense_program)
    # the program's JSON, LZMA-compressed, costs a few KiB over the state dict, however big the model
    assert pruned_program - pruned_state < 4096, (pruned_program, pruned_state)


def test_an_exported_program_is_stored_without_its_example_batch():
    model, x = _net("depthwise/SE")
    program = torch.export.export(model, (x,))
    assert program.example_inputs is not None
    blob = save_artifact(program, example_input=x)  # the kind follows from the program
    assert program.example_inputs is not None  # the caller's program is left as it was
    archive, header = unpack_archive(blob)
    assert header["kind"] == "exported_program"
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        samples = [n for n in zf.namelist() if "sample_inputs" in n]
        assert samples and all(zf.read(n) == b"" for n in samples)
    assert x.numpy().tobytes()[:64] not in archive
    with torch.no_grad():
        assert torch.equal(load_artifact(blob)(x), model(x))


class FixedBatch(nn.Module):
    """Reshapes with a hard-coded batch size: export cannot make the batch dimension dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(x.reshape(3, 12))


def test_static_batch_where_export_cannot_make_it_dynamic():
    torch.manual_seed(0)
    model, x = FixedBatch().eval(), torch.randn(3, 3, 4)
    program = export_program(model, x)
    assert "static batch" in program._lopt_note
    blob = save_artifact(model, archive_format="exported_program", example_input=x)
    assert describe_artifact(blob)["program"]["inputs"][0]["shape"] == [3, 3, 4]
    assert "dynamic batch refused" in describe_artifact(blob)["program"]["note"]
    loaded = load_artifact(blob)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(Exception, match="shape"):  # the program refuses other batch sizes, loudly
        loaded(torch.randn(2, 3, 4))


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_export_failure_names_the_cause_and_needs_an_example():
    with pytest.raises(ArtifactExportError, match="torch.export could not capture DataDependent"):
        pack_artifact(DataDependent(), example_input=torch.randn(2, 3), archive_format="exported_program")
    with pytest.raises(ValueError, match="needs `example_input`"):
        pack_artifact(nn.Linear(3, 2), archive_format="exported_program")
    with pytest.raises(TypeError, match="nn.Module"):
        pack_artifact(nn.Linear(3, 2).state_dict(), archive_format="exported_program")


def test_bad_archive_format_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"Unknown `archive_format` 'onnx'; allowed: \[") as err:
        pack_artifact(nn.Linear(3, 2), archive_format="onnx")
    assert all(kind in str(err.value) for kind in ARCHIVE_KINDS)
    with pytest.raises(ValueError, match="contradicts"):
        pack_artifact(nn.Linear(3, 2), torchscript=True, archive_format="state_dict")


def test_truncated_or_altered_program_artifact_is_refused():
    model, x = _net("residual CNN")
    blob = save_artifact(model, archive_format="exported_program", example_input=x)
    with pytest.raises(ValueError, match="truncated"):
        load_artifact(blob[:-100])
    with pytest.raises(ValueError, match="Corrupt artifact"):
        load_artifact(blob[:20])
    altered = bytearray(blob)
    altered[-50] ^= 0x01  # one bit of the last stream
    with pytest.raises(ValueError, match="CRC-32"):
        load_artifact(bytes(altered))
    with pytest.raises(ValueError, match="unexpected bytes"):
        load_artifact(blob + b"\0")


# ------------------------------------------------------------------------------------- the loader, alone
_ISOLATED_PRELUDE = """
import importlib.util, sys
here, torch_site = sys.argv[1], sys.argv[2]
# only the folder artifact.py was copied to, the standard library and the folder torch is installed in
# (read without its .pth files: no editable install of lightning_optim)
sys.path[:] = [here] + [p for p in sys.path if p.startswith(sys.base_prefix)] + [torch_site]
assert importlib.util.find_spec("lightning_optim") is None, "lightning_optim is importable"
"""


def _isolated(script: str, folder: Path) -> subprocess.CompletedProcess:
    torch_site = str(Path(torch.__file__).resolve().parents[1])
    return subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _ISOLATED_PRELUDE + textwrap.dedent(script),
            str(folder),
            torch_site,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def test_artifact_py_copied_alone_loads_and_runs_in_a_fresh_isolated_process(tmp_path):
    """The 3-line use of the docs, then the command line, in one isolated fresh process (a second one would only
    add its imports): the library use runs first, in the process as it starts, and the modules it imported are
    read before the command line runs; ``runpy`` then executes artifact.py anew as ``__main__``."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(ARTIFACT_PY, deploy / "artifact.py")
    model, x = _net("residual CNN")
    save_artifact(model, deploy / "model.lopt", archive_format="exported_program", example_input=x)
    torch.save(x, deploy / "x.pt")
    with torch.no_grad():
        expected = model(x)

    result = _isolated(
        """
        import torch, artifact                       # the 3-line use of the docs
        model = artifact.load_artifact("model.lopt")
        y = model(torch.load("x.pt", weights_only=True))
        torch.save(y.detach(), "y.pt")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning_optim", "lightning", "torchao")))
        print("--- the command line ---", flush=True)

        # the command line: python artifact.py model.lopt --input x.pt --output z.pt
        import runpy
        sys.argv = ["artifact.py", "model.lopt", "--input", "x.pt", "--output", "z.pt"]
        try:
            runpy.run_path("artifact.py", run_name="__main__")
        except SystemExit as done:
            assert not done.code, done.code
        """,
        deploy,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    library, command_line = result.stdout.split("--- the command line ---\n")
    assert library.split() == ["[]"], result.stdout
    assert torch.equal(torch.load(deploy / "y.pt", weights_only=True), expected)
    assert "exported_program" in command_line and "['batch', 3, 16, 16]" in command_line
    assert torch.equal(torch.load(deploy / "z.pt", weights_only=True), expected)


def test_command_line_describes_runs_and_extracts(tmp_path, capsys):
    from lightning_optim.functional.artifact import main

    model, x = _net("transformer block")
    path = tmp_path / "block.lopt"
    save_artifact(model, path, archive_format="exported_program", example_input=x, metadata={"task": "demo"})
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "exported_program" in out and "ran on [[1, 5, 16]]: output [1, 5, 16]" in out and '"task"' in out
    assert main([str(path), "--extract", str(tmp_path / "block.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "block.pt2"))
    with torch.no_grad():
        assert torch.equal(program.module()(x), model(x))
    state_path = tmp_path / "state.lopt"
    save_artifact(model, state_path)
    assert main([str(state_path)]) == 0
    assert "load_artifact(path, model=...)" in capsys.readouterr().out
    assert json.loads(json.dumps(describe_artifact(path)["metadata"])) == {"task": "demo"}
