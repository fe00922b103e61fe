"""Paths named in configs are opened as given and never followed outside what the user gave."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from lightning_optim.functional.distillation.teacher import load_teacher_weights
from lightning_optim.models import LeNet300100
from lightning_optim.paths import is_within, opened_user_file, read_user_file, user_file
from lightning_optim.weights import load_weights


def test_user_file_accepts_a_regular_file_as_given(tmp_path):
    path = tmp_path / "w.ckpt"
    path.write_bytes(b"x")
    assert user_file(str(path), "checkpoint") == path


def test_user_file_refuses_missing_folder_and_fifo(tmp_path):
    with pytest.raises(FileNotFoundError, match="`checkpoint` .*missing.ckpt' does not exist"):
        user_file(tmp_path / "missing.ckpt", "checkpoint")
    with pytest.raises(ValueError, match="`teacher_checkpoint` .* is a folder"):
        user_file(tmp_path, "teacher_checkpoint")
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)  # reading it would block forever: refused before anything opens it
    with pytest.raises(ValueError, match="is not a regular file"):
        user_file(fifo, "checkpoint")


def test_user_file_expands_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.ckpt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "..")
    with pytest.raises(FileNotFoundError):
        user_file("~/w.ckpt", "checkpoint")
    monkeypatch.setenv("CKPT_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        user_file("$CKPT_DIR/w.ckpt", "checkpoint")


def test_is_within_resolves_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "inside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "inner_link.png").symlink_to(root / "inside.png")
    assert is_within(root / "inside.png", root)
    assert is_within(root / "inner_link.png", root)
    assert not is_within(root / "link.png", root)
    assert not is_within(root / ".." / "outside" / "secret.png", root)
    assert not is_within(tmp_path / "root_sibling", root)  # a prefix of the name is not containment


@pytest.mark.parametrize("loader", ["teacher", "warm_start"])
def test_checkpoint_loaders_refuse_a_folder(tmp_path, loader):
    with pytest.raises(ValueError, match="is a folder"):
        if loader == "teacher":
            load_teacher_weights(LeNet300100(), tmp_path)
        else:
            load_weights(LeNet300100(), str(tmp_path), "checkpoint")


def test_checkpoint_loaders_read_a_file_they_are_given(tmp_path):
    model = LeNet300100()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    other = load_weights(LeNet300100(), str(path), "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


# ------------------------------------------------------------------------------------- opening user files
def test_opened_user_file_reads_bytes_and_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\r\nhi,1\r\n")
    with opened_user_file(path, "train_file", what="a CSV file") as fh:
        assert fh.read() == b"text,label\r\nhi,1\r\n"
    with opened_user_file(path, "train_file", "r", encoding="utf-8", newline="") as fh:
        assert fh.read() == "text,label\r\nhi,1\r\n"
    assert read_user_file(path, "train_file", max_bytes=100) == path.read_bytes()
    with pytest.raises(ValueError, match=r"`train_file` .* has 18 bytes, more than the 10"):
        read_user_file(path, "train_file", max_bytes=10)
    with pytest.raises(ValueError, match="Unknown `mode` 'w'"):
        with opened_user_file(path, "train_file", "w"):
            pass


def test_opened_user_file_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    outcome: list = []

    def read() -> None:
        try:
            read_user_file(fifo, "train_file", what="a CSV file")
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO blocked")
    assert isinstance(outcome[0], ValueError)
    assert "`train_file`" in str(outcome[0]) and "not a regular file" in str(outcome[0])
    assert "a CSV file" in str(outcome[0])


def test_opened_user_file_checks_the_open_descriptor_too(tmp_path, monkeypatch):
    """A path that passes the first check but is swapped for a FIFO before it is opened: refused on the open
    descriptor, without blocking (the window between a check and an open is not trusted)."""
    import lightning_optim.paths as paths

    fifo = tmp_path / "swapped.ckpt"
    os.mkfifo(fifo)
    monkeypatch.setattr(paths, "user_file", lambda path, option, what: Path(path))  # the check "passed"
    with pytest.raises(ValueError, match="not a regular file"):
        with paths.opened_user_file(fifo, "checkpoint"):
            pass
