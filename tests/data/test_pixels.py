"""One scaling rule per image dtype (tensors and files), transparency on black, and augmentations checked
against the data's image size at setup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_optim.data import ImageClassificationDataModule, scan_images
from lightning_optim.data.pixels import check_image_tensor, pixel_scale

LABELS = torch.arange(30) % 2


def _inputs(images: torch.Tensor, **kwargs) -> torch.Tensor:
    dm = ImageClassificationDataModule(images=images, labels=LABELS, normalization="none", **kwargs)
    dm.setup("fit")
    return dm.to_model_input(dm.train_split.images)


def test_uint16_images_are_scaled_by_65535_not_read_as_0_to_65535():
    images = torch.full((30, 1, 4, 4), 32768, dtype=torch.uint16)
    x = _inputs(images)
    assert torch.allclose(x, torch.full_like(x, 32768 / 65535))
    dm = ImageClassificationDataModule(images=images, labels=LABELS)
    dm.setup("fit")
    meta = dm.deploy_metadata()
    assert meta["pixel_scale"] == 65535.0 and meta["mean"] == pytest.approx([32768 / 65535])


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint32])
def test_wide_integer_pixels_in_0_255_follow_the_uint8_rule(dtype):
    values = torch.randint(0, 128 if dtype == torch.int8 else 256, (30, 1, 4, 4))
    x = _inputs(values.to(dtype))
    assert torch.allclose(
        x, _inputs(values.to(torch.uint8))
    )  # int32 reached the model unscaled (0..255) before
    assert float(x.max()) <= 1.0


@pytest.mark.parametrize(
    ("dtype", "low", "high"), [(torch.int32, 0, 1000), (torch.int16, -5, 10), (torch.int64, 0, 256)]
)
def test_wide_integer_pixels_outside_0_255_are_refused_naming_dtype_and_range(dtype, low, high):
    images = torch.full((30, 1, 4, 4), low, dtype=dtype)
    images[0, 0, 0, 0] = high
    name = str(dtype).replace("torch.", "")
    with pytest.raises(
        ValueError,
        match=rf"`images` are {name} with values in \[{low}, {high}\].*images.float\(\) / max_value",
    ):
        ImageClassificationDataModule(images=images, labels=LABELS)


def test_bool_float_and_complex_images():
    mask = torch.zeros(30, 1, 4, 4, dtype=torch.bool)
    mask[:, :, 0, 0] = True
    x = _inputs(mask)
    assert x[:, :, 0, 0].eq(1).all() and x[:, :, 1:, :].eq(0).all()
    floats = torch.rand(30, 1, 4, 4) * 7  # float stays as it is
    assert torch.equal(check_image_tensor(floats), floats) and pixel_scale(torch.float16) == 1.0
    with pytest.raises(ValueError, match="dtype torch.complex64 are not images"):
        check_image_tensor(torch.zeros(2, 1, 2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"shape \(30, 1, 0, 4\) hold no value per sample"):
        ImageClassificationDataModule(images=torch.zeros(30, 1, 0, 4), labels=LABELS)


def test_uint16_colour_to_grey_keeps_16_bits():
    images = torch.full((30, 3, 2, 2), 60000, dtype=torch.uint16)
    x = _inputs(images, channels=1)
    assert torch.allclose(x, torch.full_like(x, 60000 / 65535), atol=1e-4)


# ------------------------------------------------------------------------------------------------ image files
def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    (tmp_path / "a").mkdir()
    values = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a" / "x.png")
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    for mode in ("L", "RGB"):
        result = scan_images(tmp_path, mode=mode)
        assert result.images.shape[1] == (1 if mode == "L" else 3)
        assert np.array_equal(
            result.images[0, 0].numpy(), expected
        )  # saturated at 255 before: all but 1 pixel
        assert int(result.images.max()) == 245  # 63000 / 257


def test_32_bit_integer_and_float_images_follow_their_rule(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 4), 200, np.int32)).save(tmp_path / "a" / "i.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "a" / "f.tif")
    result = scan_images(tmp_path, mode="L")
    assert sorted(result.images[:, 0, 0, 0].tolist()) == [128, 200]
    Image.fromarray(np.full((4, 4), 1000, np.int32)).save(tmp_path / "a" / "j.tif")
    with pytest.raises(
        ValueError, match=r"j.tif' is 32-bit integer grey \(PIL mode 'I'\) with values in \[1000, 1000\]"
    ):
        scan_images(tmp_path, mode="L")


def test_palette_transparency_comes_out_black_as_documented(tmp_path):
    (tmp_path / "a").mkdir()
    index = np.zeros((4, 4), np.uint8)
    index[0, 0] = 1
    img = Image.fromarray(index, "P")
    img.putpalette([255, 255, 255, 200, 100, 50] + [0] * 762)  # index 0: white, transparent
    img.save(tmp_path / "a" / "p.png", transparency=0)
    grey = np.full((4, 4), 255, np.uint8)
    Image.fromarray(grey, "L").save(
        tmp_path / "a" / "g.png", transparency=255
    )  # grey colour-key transparency
    result = scan_images(tmp_path, mode="RGB")
    by_name = dict(zip((p.split("/")[-1] for p in result.paths), result.images))
    assert by_name["p.png"][:, 0, 0].tolist() == [200, 100, 50]
    assert by_name["p.png"][:, 1:, :].eq(0).all()  # white before the fix
    assert by_name["g.png"].eq(0).all()
    assert scan_images(tmp_path, mode="L").images.amax(dim=(1, 2, 3)).tolist() == [0, 124]
    rgba = scan_images(tmp_path, mode="RGBA").images
    assert rgba[:, 3].eq(0).sum() == 16 + 15  # alpha kept where the mode keeps it


# ------------------------------------------------------------------------------------------------ augmentation
@pytest.mark.parametrize(
    ("augmentation", "message"),
    [
        ([{"name": "crop", "size": 10}], r"\['crop'\] .* fails on the data's 8x8 images: Required crop size"),
        ([{"name": "elastic"}], r"\['elastic'\] .* fails on the data's 8x8 images: .*Padding size"),
    ],
)
def test_an_augmentation_that_cannot_work_on_the_image_size_fails_at_setup(augmentation, message):
    dm = ImageClassificationDataModule(
        images=torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8),
        labels=LABELS,
        augmentation=augmentation,
        augmentation_mode="sample",
    )
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


def test_the_setup_check_leaves_the_random_streams_as_they_were():
    sample = ImageClassificationDataModule("digits", augmentation="standard", augmentation_mode="sample")
    state = torch.get_rng_state()
    sample.setup("fit")
    assert torch.equal(torch.get_rng_state(), state)
    batch = ImageClassificationDataModule("digits", augmentation="standard", seed=3)
    batch.setup("fit")
    fresh = torch.Generator().manual_seed(3)
    assert torch.equal(batch.batch_augmentation.generator.get_state(), fresh.get_state())
