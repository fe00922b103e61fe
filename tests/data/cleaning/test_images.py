"""The image scan: a temp folder with corrupt, truncated, zero-byte and duplicate images is cleaned and reported."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from lightning_optim.data.cleaning.images import scan_images
from tests.data.conftest import write_image


def test_scan_drops_and_reports_every_bad_file(dirty_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_optim.data.cleaning.images"):
        result = scan_images(dirty_folder, mode="RGB")
    reasons = {p.split("/")[-1]: r for p, r in result.dropped}
    assert reasons == {
        "corrupt.png": "unreadable",
        "truncated.png": "truncated",
        "zero.png": "zero_byte",
        "z_duplicate.png": "duplicate",
    }
    assert result.summary == {
        "kept": 6,
        "dropped": 4,
        "duplicate": 1,
        "truncated": 1,
        "unreadable": 1,
        "zero_byte": 1,
    }
    assert "Image scan" in caplog.text and "'kept': 6" in caplog.text
    assert result.classes == ["cat", "dog"]
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert result.images.dtype == torch.uint8 and result.images.shape == (6, 3, 6, 6)


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 4)])
def test_scan_converts_modes(dirty_folder, mode, channels):
    result = scan_images(dirty_folder, mode=mode)
    assert result.images.shape == (6, channels, 6, 6)
    if mode == "RGB":  # the L image becomes three equal channels
        index = [p.endswith("cat/b.png") for p in result.paths].index(True)
        gray = result.images[index]
        assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    if mode == "RGBA":  # opaque alpha is added to images without one
        assert (result.images[:, 3] == 255).all()


def test_scan_resizes_and_requires_one_size(tmp_path):
    (tmp_path / "a").mkdir()
    write_image(tmp_path / "a" / "small.png", size=(4, 4))
    write_image(tmp_path / "a" / "large.png", size=(9, 7), seed=1)
    with pytest.raises(ValueError, match="`image_size`"):
        scan_images(tmp_path)
    result = scan_images(tmp_path, size=5)
    assert result.images.shape == (2, 3, 5, 5)
    assert scan_images(tmp_path, size=(3, 8)).images.shape == (2, 3, 3, 8)


def test_scan_of_file_list_rejects_labels_outside_class_set(dirty_folder):
    files = [
        (dirty_folder / "cat" / "a.png", "cat"),
        (dirty_folder / "dog" / "a.png", "dog"),
        (dirty_folder / "dog" / "b.png", "horse"),
        (dirty_folder / "cat" / "b.png", 7),
    ]
    result = scan_images(files, classes=["cat", "dog"])
    assert result.labels.tolist() == [0, 1]
    assert [r for _, r in result.dropped] == ["unknown_label", "unknown_label"]
    assert result.summary["unknown_label"] == 2


def test_duplicates_can_be_kept(dirty_folder):
    assert len(scan_images(dirty_folder, drop_duplicates=False)) == 7


def test_scan_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"`image_mode` 'CMYK'; allowed: \['L', 'RGB', 'RGBA'\]"):
        scan_images(tmp_path, mode="CMYK")
    with pytest.raises(ValueError, match="`image_folder`.*holds no images"):
        scan_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="`image_folder`"):
        scan_images(tmp_path / "missing")


def test_image_folder_does_not_follow_links_outside_the_folder(tmp_path):
    from lightning_optim.data.cleaning.images import list_image_folder

    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (root / "cat", root / "dog", outside / "more"):
        folder.mkdir(parents=True)
    write_image(root / "cat" / "a.png", "L", (8, 8))
    write_image(root / "dog" / "b.png", "L", (8, 8))
    write_image(outside / "secret.png", "L", (8, 8))
    write_image(outside / "more" / "c.png", "L", (8, 8))
    (root / "cat" / "escape.png").symlink_to(outside / "secret.png")  # a file link out of the folder
    (root / "dog" / "sub").symlink_to(outside / "more")  # a folder link out of it: rglob does not enter it
    (root / "bird").symlink_to(outside)  # a whole class folder elsewhere
    (root / "cat" / "again.png").symlink_to(root / "cat" / "a.png")  # a link inside is kept
    with pytest.warns(UserWarning, match="skipped 2 symbolic link.*not followed"):
        items, classes = list_image_folder(root)
    assert sorted(os.path.basename(p) for p, _ in items) == ["a.png", "again.png", "b.png"]
    assert classes == ["cat", "dog"]


def test_a_fifo_or_a_too_large_file_in_an_image_list_is_dropped_with_its_reason(tmp_path, monkeypatch):
    """A FIFO among the files would block a plain open(); a huge file would be read whole: both are dropped."""
    import lightning_optim.data.cleaning.images as images_module

    good = tmp_path / "a.png"
    from PIL import Image

    Image.new("L", (4, 4), 7).save(good)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    big = tmp_path / "big.png"
    big.write_bytes(good.read_bytes() + b"\0" * 64)
    monkeypatch.setattr(images_module, "MAX_IMAGE_FILE_BYTES", len(good.read_bytes()) + 10)
    result = images_module.scan_images(
        [(str(good), "x"), (str(fifo), "x"), (str(big), "x")], mode="L", classes=["x"]
    )
    assert len(result) == 1
    assert dict(result.dropped) == {str(fifo): "not_a_file", str(big): "too_large"}
