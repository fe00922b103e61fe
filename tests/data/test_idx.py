"""The bounded IDX reader: every header checked against the data and the limits, only our errors for any bytes."""

from __future__ import annotations

import gzip
import os
import random
import threading

import numpy as np
import pytest
import torch

from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.data.idx import read_idx
from tests.data.idx_files import idx_bytes, write_mnist

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)


@pytest.mark.parametrize("dtype", ["uint8", "int8", ">i2", ">i4", ">f4", ">f8"])
def test_every_idx_type_round_trips(dtype):
    array = (np.arange(24) - 5).reshape(2, 3, 4).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "uint8":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(idx_bytes(array))
    assert out.shape == (2, 3, 4) and np.array_equal(out.numpy(), array)


def test_real_mnist_equals_torchvisions_reader(mnist_dir):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = mnist_dir / "MNIST" / "raw"
    ours = read_idx(raw / "t10k-images-idx3-ubyte", expect_shape=(None, 28, 28), expect_dtype="uint8")
    assert torch.equal(ours, read_image_file(str(raw / "t10k-images-idx3-ubyte")))
    labels = read_idx(raw / "t10k-labels-idx1-ubyte", expect_shape=(None,))
    assert torch.equal(labels.long(), read_label_file(str(raw / "t10k-labels-idx1-ubyte")))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"\x00\x00", r"2 byte\(s\) long, shorter than the 4-byte IDX magic"),
        (b"PK\x03\x04" + bytes(20), r"is not an IDX file: it begins 50 4b 03 04"),
        (b"\x00\x00\x07\x01" + bytes(8), r"unknown type code 0x07; IDX type codes are 0x08 \(uint8\)"),
        (b"\x00\x00\x08\x00", r"declares 0 dimensions; 1 to 8 are read"),
        (b"\x00\x00\x08\x09" + bytes(40), r"declares 9 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x03", r"truncated in its header: 3 dimensions need a 16-byte header"),
        (
            idx_bytes(IMAGES)[:-100],
            r"is truncated: its header declares 3x28x28 uint8 values = 2,352 bytes of data, ",
        ),
        (idx_bytes(IMAGES) + b"\x00" * 7, r"is too long: .* the file holds 2,359 \(7 extra\)"),
    ],
)
def test_damaged_bytes_are_refused_with_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        read_idx(data, option="data_dir")


def test_a_header_of_another_image_size_is_refused_not_scrambled():
    # 14x56 holds as many bytes as 28x28: without the shape check it would be read as scrambled digits
    data = idx_bytes(IMAGES, dims=(3, 14, 56))
    assert read_idx(data).shape == (3, 14, 56)
    with pytest.raises(ValueError, match=r"shape 3x14x56; MNIST images are Nx28x28"):
        read_idx(data, expect_shape=(None, 28, 28), what="MNIST images")
    with pytest.raises(ValueError, match=r"holds int32 values; MNIST labels are uint8"):
        read_idx(
            idx_bytes(np.zeros(3, ">i4")), expect_shape=(None,), expect_dtype="uint8", what="MNIST labels"
        )


def test_declared_sizes_are_checked_against_the_limit_before_allocating():
    huge = b"\x00\x00\x0d\x03" + (60_000).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big") * 2
    with pytest.raises(ValueError, match=r"declares 60000x1048576x1048576 float32 values = .* `max_bytes`"):
        read_idx(huge)
    # a zero dimension does not let the others declare an impossible shape
    with pytest.raises(ValueError, match="`max_bytes`"):
        read_idx(b"\x00\x00\x08\x03" + bytes(4) + (0xFFFFFFFF).to_bytes(4, "big") * 2)
    with pytest.raises(
        ValueError,
        match=r"is 2,368 bytes, more than the 1,036 bytes read at most \(`max_bytes`; its header declares 3x28x28",
    ):
        read_idx(idx_bytes(IMAGES), max_bytes=1000)
    assert read_idx(idx_bytes(IMAGES), max_bytes=2352).shape == (3, 28, 28)


def test_gzip_is_read_and_bounded(tmp_path):
    data = idx_bytes(IMAGES)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data))
    assert torch.equal(read_idx(path), torch.from_numpy(IMAGES))
    assert torch.equal(
        read_idx(gzip.compress(data[:10]) + gzip.compress(data[10:])), torch.from_numpy(IMAGES)
    )
    with pytest.raises(ValueError, match=r"truncated gzip file"):
        read_idx(gzip.compress(data)[:-30])
    with pytest.raises(ValueError, match=r"not a valid gzip file"):
        read_idx(b"\x1f\x8b" + bytes(30))
    # a bomb: 64 MB of zeros in 64 kB; decompression stops at the bound
    bomb = gzip.compress(b"\x00\x00\x08\x01" + (1 << 26).to_bytes(4, "big") + bytes(1 << 26))
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match=r"decompresses to more than 1,000,036 bytes \(`max_bytes`\)"):
        read_idx(bomb, max_bytes=1_000_000)


def test_paths_missing_folders_and_fifos_are_refused_without_blocking(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`data_dir`: IDX file '.*nothing' does not exist"):
        read_idx(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"is a folder; give the path of an IDX file"):
        read_idx(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            read_idx(fifo)
        except BaseException as err:  # noqa: BLE001 - recorded for the assertion
            errors.append(err)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # unblock the reader so that the test run does not hang
        with open(fifo, "wb"):
            pass
        pytest.fail("read_idx blocked on a FIFO")
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "not a regular file" in str(errors[0])


def test_random_and_mutated_bytes_give_only_value_errors():
    """A short, seeded fuzz (the hypothesis run is elsewhere): any bytes give a tensor or a ValueError."""
    rng = random.Random(0)
    good = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
    cases = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40))) for _ in range(300)]
    for _ in range(300):
        mutated = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        cases.append(bytes(mutated[: rng.randrange(len(mutated) + 1)]))
    cases += [gzip.compress(c) for c in cases[:50]]
    for data in cases:
        try:
            read_idx(data, max_bytes=1 << 16)
        except ValueError:
            pass


# ------------------------------------------------------------------------------------------------ data module
def test_mnist_layout_read_by_our_reader_plain_and_gz(tmp_path):
    write_mnist(tmp_path / "plain")
    write_mnist(tmp_path / "gz", gz=True)
    write_mnist(tmp_path / "fashion", folder="FashionMNIST")
    splits = {}
    for name, dataset in (("plain", "mnist"), ("gz", "mnist"), ("fashion", "fashionmnist")):
        dm = ImageClassificationDataModule(dataset, data_dir=str(tmp_path / name), val_split=0.25)
        dm.setup("fit")
        assert len(dm.train_split) + len(dm.val_split_data) == 40 and len(dm.test_split) == 20
        assert dm.train_split.images.shape[1:] == (1, 28, 28) and dm.train_split.labels.dtype == torch.long
        splits[name] = dm.train_split.images
    assert torch.equal(splits["plain"], splits["gz"])


def _replace(raw, name, data):
    (raw / name).write_bytes(data)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", r"t10k-images-idx3-ubyte' is truncated: its header declares 20x28x28 uint8 values"),
        ("empty", r"t10k-labels-idx1-ubyte' is empty \(0 bytes\)"),
        ("14x56", r"train-images-idx3-ubyte' declares 3-D data of shape 40x14x56; MNIST images are Nx28x28"),
        ("count", r"MNIST files disagree: .*t10k-images-idx3-ubyte' holds 20 images but .* 19 labels"),
        (
            "label 10",
            r"`data_dir` \(file .*t10k-labels-idx1-ubyte'\) holds 1 label\(s\) out of range, the first at "
            r"index 3 \(10\); class indices must be 0..9 \(10 classes\)",
        ),
    ],
)
def test_damaged_mnist_files_are_refused_at_setup_naming_the_file(tmp_path, damage, message):
    raw = write_mnist(tmp_path)
    if damage == "truncate":
        path = raw / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "empty":
        _replace(raw, "t10k-labels-idx1-ubyte", b"")
    elif damage == "14x56":
        data = (raw / "train-images-idx3-ubyte").read_bytes()
        _replace(
            raw,
            "train-images-idx3-ubyte",
            data[:8] + (14).to_bytes(4, "big") + (56).to_bytes(4, "big") + data[16:],
        )
    elif damage == "count":
        _replace(raw, "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(19, np.uint8)))
    else:
        labels = (np.arange(20) % 10).astype(np.uint8)
        labels[3] = 10
        _replace(raw, "t10k-labels-idx1-ubyte", idx_bytes(labels))
    dm = ImageClassificationDataModule("mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")
