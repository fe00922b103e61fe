"""Normalization: exact ranges, statistics from the training split only, one streaming pass."""

from __future__ import annotations

import pytest
import torch

from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.data.normalization import NORMALIZATIONS, fit_normalization, normalize


@pytest.fixture(scope="module")
def digits():
    dm = ImageClassificationDataModule("digits", batch_size=64, normalization="minmax_symmetric")
    dm.setup("fit")
    return dm


def test_streaming_pass_equals_whole_tensor_fit():
    x = torch.randint(0, 256, (1000, 3, 5, 5), dtype=torch.uint8)
    for method in ("zscore", "minmax"):
        whole = fit_normalization([x], method)
        chunks = fit_normalization((x[i : i + 97] for i in range(0, 1000, 97)), method)
        for key in whole:
            assert torch.allclose(whole[key], chunks[key], rtol=1e-6)
    ref = x.double().transpose(0, 1).reshape(3, -1)
    stats = fit_normalization((x[i : i + 100] for i in range(0, 1000, 100)), "zscore")
    assert torch.allclose(stats["mean"].double(), ref.mean(1), rtol=1e-6)
    assert torch.allclose(stats["std"].double(), ref.std(1, unbiased=False), rtol=1e-5)


@pytest.mark.parametrize(("method", "lo", "hi"), [("minmax", 0.0, 1.0), ("minmax_symmetric", -1.0, 1.0)])
def test_minmax_ranges_exact_on_the_train_split(method, lo, hi):
    dm = ImageClassificationDataModule("digits", normalization=method)
    dm.setup("fit")
    x = dm.to_model_input(dm.train_split.images)
    assert x.min().item() == lo and x.max().item() == hi  # exact, not approximately
    # float tensors (in-memory data) too, per channel
    images = torch.randn(200, 3, 4, 4) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1) + 3
    dm = ImageClassificationDataModule(images=images, labels=torch.arange(200) % 4, normalization=method)
    dm.setup("fit")
    x = dm.to_model_input(dm.train_split.images)
    assert x.amin((0, 2, 3)).tolist() == [lo] * 3 and x.amax((0, 2, 3)).tolist() == [hi] * 3


def test_zscore_gives_zero_mean_unit_std_on_train():
    dm = ImageClassificationDataModule("digits", normalization="zscore")
    dm.setup("fit")
    x = dm.to_model_input(dm.train_split.images).double()
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-5


def test_stats_come_from_the_training_split_only(digits):
    train, val = digits.train_split.images, digits.val_split_data.images
    assert torch.equal(digits.norm_stats["min"], fit_normalization([train], "minmax")["min"])
    zscore = ImageClassificationDataModule("digits", normalization="zscore", val_split=0.3)
    zscore.setup("fit")
    both = fit_normalization([zscore.train_split.images, zscore.val_split_data.images], "zscore")
    train_only = fit_normalization([zscore.train_split.images], "zscore")
    assert torch.equal(zscore.norm_stats["mean"], train_only["mean"])
    assert not torch.allclose(zscore.norm_stats["mean"], both["mean"], rtol=1e-4)
    assert not torch.allclose(zscore.norm_stats["std"], both["std"], rtol=1e-4)
    assert len(val) > 0


def test_stats_reused_for_val_test_predict():
    dm = ImageClassificationDataModule("digits", normalization="zscore", batch_size=50)
    dm.setup("fit")
    mean, std = dm.norm_stats["mean"] / 255, dm.norm_stats["std"] / 255
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        images, labels = next(iter(loader))
        x, y = dm.on_after_batch_transfer((images, labels), 0)
        assert torch.allclose(x, (images.float() / 255 - mean) / std, atol=1e-5)
        assert torch.equal(y, labels)


def test_normalize_unknown_method_and_none():
    x = torch.rand(2, 1, 3, 3)
    assert normalize(x, "none", {}) is x
    with pytest.raises(
        ValueError,
        match=r"`normalization` 'l2'; allowed: "
        + repr(list(NORMALIZATIONS)).replace("[", r"\[").replace("]", r"\]"),
    ):
        ImageClassificationDataModule("digits", normalization="l2")
    with pytest.raises(ValueError, match="empty training split"):
        fit_normalization([], "zscore")
