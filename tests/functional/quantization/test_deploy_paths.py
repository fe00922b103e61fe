"""Deploy files are opened only when they are regular files: a FIFO would block onnx/zip readers forever."""

from __future__ import annotations

import os

import pytest

from lightning_optim.functional.quantization import onnx as onnx_io
from lightning_optim.functional.quantization import pt2e


@pytest.mark.parametrize(
    "reader",
    [pt2e.read_pt2_metadata, pt2e.verify_pt2, pt2e.load_pt2],
    ids=lambda f: f.__name__,
)
def test_pt2_readers_refuse_a_fifo_and_a_folder_without_blocking(tmp_path, reader):
    fifo = tmp_path / "model.pt2"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        reader(fifo)
    with pytest.raises(ValueError, match="is a folder"):
        reader(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader(tmp_path / "missing.pt2")


@pytest.mark.parametrize(
    "reader",
    [onnx_io.verify_onnx, onnx_io.read_onnx_metadata, onnx_io.OnnxRunner],
    ids=lambda f: f.__name__,
)
def test_onnx_readers_refuse_a_fifo_without_blocking(tmp_path, reader):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        reader(fifo)
