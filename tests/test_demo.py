"""`python -m lightning_optim.demo` (make demo): dense -> pruned -> int8 on the embedded digits, every figure
measured in the run, every file in a new run folder."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings

import pytest
import torch

from lightning_optim import demo
from lightning_optim.functional.quantization.onnx import OnnxRunner
from lightning_optim.functional.quantization.pt2e import load_pt2
from lightning_optim.models import SmallResNet

#: tiny settings: one dense epoch, a two-epoch ramp + compaction, two interleaved timing rounds
TINY = ["--epochs", "1", "--finetune-epochs", "2"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One demo run through the command line with tiny settings: its result, printed output, the warnings and
    Lightning info lines it let through, and the latencies the timing function returned."""
    runs = tmp_path_factory.mktemp("demo") / "runs"
    measured: list[dict[str, dict[str, float]]] = []
    original = demo.compare_latency

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        measured.append(out)
        return out

    threads = torch.get_num_threads()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # Lightning's info lines go to its logger's handlers, not to stdout
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(handler)
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(io.StringIO()) as buffer,
        warnings.catch_warnings(record=True) as caught,
    ):
        patch.setattr(demo, "compare_latency", spy)
        warnings.simplefilter("always")
        result = demo.main([*TINY, "--runs-dir", str(runs)])
    lightning_logger.removeHandler(handler)
    assert torch.get_num_threads() == threads  # restored after the run
    logged = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    return result, buffer.getvalue(), caught + logged, measured, runs


def test_demo_prints_a_narrow_table_and_names_its_run_folder(first_run):
    result, out, _, _, runs = first_run
    assert result.run_dir.is_dir() and result.run_dir.parent == runs
    assert re.fullmatch(r"demo-\d{8}-\d{6}(-\d+)?", result.run_dir.name)
    assert out.rstrip().splitlines()[-1] == f"Run folder: {result.run_dir}"
    table = result.table.splitlines()
    assert len(table) == 1 + len(result.rows)
    assert "\n".join(table) in out
    too_wide = [line for line in [*table, *result.notes] if len(line) > demo.TABLE_WIDTH]
    assert not too_wide, too_wide
    # every printed line, the paths (which the user's folder makes long) excepted
    too_wide = [
        line
        for line in out.splitlines()
        if len(line) > demo.TABLE_WIDTH and str(result.run_dir.parent) not in line
    ]
    assert not too_wide, too_wide
    assert [r.stage for r in result.rows][:2] == ["dense", "pruned"]
    assert {r.fmt for r in result.rows if r.stage == "int8"} == {".onnx", ".pt2"}
    for header in ("test acc", "params", "size", "b256 ms", "faster"):
        assert header in table[0]


def test_demo_first_screen_has_no_dependency_warnings(first_run):
    _, out, shown, _, _ = first_run
    shown = [s if isinstance(s, str) else f"{s.category.__name__}: {s.message}" for s in shown]
    assert not shown, shown  # no warning, no Lightning info line (accelerator, logger tip, model summary)
    assert "Tip" not in out and "GPU available" not in out and "| Name" not in out


def test_demo_prunes_channels_and_writes_every_file(first_run):
    result, _, _, _, _ = first_run
    removed, total = result.pruned_channels
    assert 0 < removed < total
    expected = {
        "dense.ckpt",
        "dense_fp32.pt",
        "pruned.ckpt",
        "pruned_fp32.pt",
        "model_int8.pt2",
        "model_int8.onnx",
        "report.md",
        "report.json",
    }
    assert set(result.files) == expected
    assert {p.name for p in result.run_dir.iterdir()} == expected
    dense_state = torch.load(result.files["dense_fp32.pt"], weights_only=True)
    pruned_state = torch.load(result.files["pruned_fp32.pt"], weights_only=True)
    SmallResNet().load_state_dict(dense_state)  # the dense model as trained (strict)
    assert pruned_state["stem.conv.weight"].shape[0] < dense_state["stem.conv.weight"].shape[0]  # removed
    assert sum(
        v.numel() for k, v in pruned_state.items() if "running" not in k and "num_batches" not in k
    ) == (result.row("pruned").parameters)


def test_demo_figures_are_the_measurements(first_run):
    """Sizes are the files' bytes, latencies what the timing returned, speed-ups and size ratios their
    quotients against the dense row, accuracies what the deploy files compute, and the printed table and the
    report hold the same numbers."""
    result, out, _, measured, _ = first_run
    assert len(measured) == 1
    timed = measured[0]
    assert [r.latency_ms for r in result.rows] == [
        timed[str(i)]["median_ms"] for i in range(len(result.rows))
    ]
    dense = result.rows[0]
    for r in result.rows:
        assert r.file_bytes == r.path.stat().st_size and r.path.parent == result.run_dir
        assert r.speedup == pytest.approx(dense.latency_ms / r.latency_ms)
        assert r.smaller == pytest.approx(dense.file_bytes / r.file_bytes)
        assert f"{r.latency_ms:.2f}" in out and f"{r.speedup:.1f}x" in out
    best = result.best
    assert best is not None and best.speedup == max(r.speedup for r in result.rows if r.stage == "int8")
    assert result.targets == {
        "speedup": best.speedup >= demo.TARGET_SPEEDUP,
        "smaller": best.file_bytes < dense.file_bytes,
        "accuracy": 100 * (dense.test_accuracy - best.test_accuracy) <= demo.TARGET_ACCURACY_DROP,
    }
    assert f"{best.path.name} in {best.runtime}, {best.speedup:.1f}x faster" in " ".join(result.notes)
    # the accuracies of the int8 rows are those of the files on disk
    dm = demo.build_data(demo.DemoConfig())
    x, y = dm.to_model_input(dm.test_split.images), dm.test_split.labels
    for fmt, model in (
        (".onnx", OnnxRunner(result.files["model_int8.onnx"], threads=1)),
        (".pt2", load_pt2(result.files["model_int8.pt2"])),
    ):
        with torch.inference_mode():
            accuracy = float((model(x).argmax(-1) == y).float().mean())
        assert result.row("int8", fmt).test_accuracy == pytest.approx(accuracy)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert [row["latency_ms"] for row in report["rows"]] == [r.latency_ms for r in result.rows]
    assert [row["file_bytes"] for row in report["rows"]] == [r.file_bytes for r in result.rows]
    assert result.table in (result.run_dir / "report.md").read_text()


def test_a_second_run_gets_its_own_folder_and_leaves_the_first_alone(first_run):
    result, _, _, _, runs = first_run
    before = {p.name: p.read_bytes() for p in result.run_dir.iterdir()}
    config = demo.DemoConfig(
        epochs=1,
        finetune_epochs=1,
        latency_batch_size=16,
        latency_repeats=1,
        latency_rounds=1,
        calibration_batches=1,
        runs_dir=str(runs),
        onnx=False,
    )
    second = demo.run_demo(config)
    assert second.run_dir != result.run_dir and second.run_dir.parent == runs
    assert {p.name: p.read_bytes() for p in result.run_dir.iterdir()} == before
    assert {r.fmt for r in second.rows if r.stage == "int8"} == {".pt2"}
    assert any("No ONNX file" in n for n in second.notes)
    assert "b16 ms" in second.table


def test_run_folders_created_in_the_same_second_differ(tmp_path):
    folders = [demo.make_run_dir(tmp_path) for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--finetune-epochs", "0"], "--finetune-epochs must be >= 1"),
        (["--sparsity", "1.0"], "--sparsity must be in (0, 1)"),
    ],
)
def test_demo_rejects_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit):
        demo.main(argv)
    assert message in capsys.readouterr().err
