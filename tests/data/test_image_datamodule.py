"""ImageClassificationDataModule: sources, splits, augmentation paths, checkpoints, BatchSizeFinder, bad inputs,
`channels` and `image_size` on every source."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BatchSizeFinder, ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage

from lightning_optim.data import ImageClassificationDataModule
from lightning_optim.models import LeNet300100
from lightning_optim.modules import ClassificationModule
from tests.conftest import quiet_trainer_kwargs
from tests.data.conftest import write_image


def test_digits_batches_and_metadata():
    dm = ImageClassificationDataModule("digits", batch_size=32, return_index=True)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 8, 8)
    assert labels.dtype == torch.long and index.shape == (32,)
    assert torch.equal(dm.train_split.images[index], images)
    x, y, i = dm.on_after_batch_transfer((images, labels, index), 0)
    assert x.dtype == torch.float32 and torch.equal(i, index)
    assert len(dm.train_split) + len(dm.val_split_data) == 1438 and len(dm.test_split) == 359


def test_seeded_split():
    def val_labels(seed):
        dm = ImageClassificationDataModule("digits", seed=seed)
        dm.setup("fit")
        return dm.val_split_data.images

    assert torch.equal(val_labels(1), val_labels(1))
    assert not torch.equal(val_labels(1), val_labels(2))


def test_real_mnist(mnist_dir):
    dm = ImageClassificationDataModule("mnist", data_dir=str(mnist_dir), val_split=0.1, augmentation="light")
    dm.setup("fit")
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    assert len(dm.train_split) == 54000 and len(dm.val_split_data) == 6000 and len(dm.test_split) == 10000
    assert dm.train_split.images.dtype == torch.uint8


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "cifar10"])
def test_missing_data_without_download_names_options(tmp_path, name):
    dm = ImageClassificationDataModule(name, data_dir=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError, match=r"`data_dir`.*`download` is False.*`download: true`"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"dataset": "imagenet"},
            ValueError,
            r"`dataset` 'imagenet'; allowed: \['cifar10', 'digits', 'fashionmnist', 'mnist'\]",
        ),
        ({"val_split": 0.0}, ValueError, r"`val_split` must be in \(0, 1\), got 0.0"),
        ({"val_split": 1.0}, ValueError, r"`val_split` must be in \(0, 1\), got 1.0"),
        ({"val_split": -0.2}, ValueError, r"`val_split` must be in \(0, 1\)"),
        (
            {"augmentation": "extreme"},
            ValueError,
            r"`augmentation` preset 'extreme'; allowed presets: \['none', 'light'",
        ),
        (
            {"augmentation": [{"name": "mixup"}]},
            ValueError,
            r"augmentation name 'mixup'; allowed: \['affine'",
        ),
        (
            {"augmentation_mode": "gpu"},
            ValueError,
            r"`augmentation_mode` 'gpu'; allowed: \['batch', 'sample'\]",
        ),
        ({"image_mode": "P"}, ValueError, r"`image_mode` 'P'; allowed: \['L', 'RGB', 'RGBA'\]"),
        ({"nonfinite": "ignore"}, ValueError, r"`nonfinite` policy 'ignore'; allowed: \['drop'"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be >= 1"),
        ({"num_workers": -1}, ValueError, r"`num_workers` must be >= 0"),
    ],
)
def test_bad_input_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ImageClassificationDataModule(**kwargs)


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(
        ValueError, match=r"`image_folder` .* holds no images: expected the ImageFolder layout"
    ):
        ImageClassificationDataModule(image_folder=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="`image_folder`"):
        ImageClassificationDataModule(image_folder=str(tmp_path / "nope"))


def test_image_folder_is_cleaned_and_resized(dirty_folder):
    dm = ImageClassificationDataModule(
        image_folder=str(dirty_folder), image_size=8, image_mode="L", val_split=0.25
    )
    assert dm.num_classes == 2 and dm.input_shape == (1, 8, 8)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog"]
    assert len(dm.train_split) + len(dm.val_split_data) + len(dm.test_split) == 6  # 4 bad files dropped
    assert dm.train_split.images.dtype == torch.uint8 and dm.train_split.images.shape[1:] == (1, 8, 8)
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape[1:] == (1, 8, 8)


def test_image_folder_with_train_and_test(tmp_path):
    seeds = iter(range(100, 200))  # distinct and fixed: equal images would be dropped as duplicates
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                write_image(tmp_path / split / c / f"{i}.png", size=(5, 5), seed=next(seeds))
    (tmp_path / "test" / "zebra").mkdir()
    write_image(tmp_path / "test" / "zebra" / "z.png", size=(5, 5), seed=5)
    dm = ImageClassificationDataModule(image_folder=str(tmp_path), val_split=0.25)
    dm.setup("fit")
    assert dm.input_shape == (3, 5, 5) and len(dm.test_split) == 4  # the unknown 'zebra' class is dropped
    assert len(dm.train_split) == 6 and len(dm.val_split_data) == 2


@pytest.mark.parametrize(("policy", "n_train"), [("drop", None), ("mean", "all"), ("zero", "all")])
def test_in_memory_float_tensors_with_nonfinite_rows(policy, n_train):
    images = torch.rand(100, 2, 3, 3)
    images[::10, 0, 1, 1] = float("nan")
    images[5, 1, 0, 0] = float("inf")
    labels = torch.arange(100) % 3
    dm = ImageClassificationDataModule(images=images, labels=labels, nonfinite=policy, val_split=0.2)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.input_shape == (2, 3, 3)
    for split in (dm.train_split, dm.val_split_data, dm.test_split):
        assert torch.isfinite(split.images).all()
    total = len(dm.train_split) + len(dm.val_split_data) + len(dm.test_split)
    assert total == (89 if policy == "drop" else 100)
    assert sum(r["bad_rows"] for r in dm.cleaning_reports.values()) == 11
    assert torch.isfinite(dm.norm_stats["mean"]).all()


def test_sample_mode_runs_v2_per_image_in_workers():
    dm = ImageClassificationDataModule(
        "digits",
        batch_size=64,
        augmentation=[{"name": "affine", "degrees": 20, "translate": [0.2, 0.2]}],
        augmentation_mode="sample",
        num_workers=2,
        persistent_workers=True,
        normalization="none",
    )
    dm.setup("fit")
    assert dm.batch_augmentation is None and dm.persistent_workers
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (64, 1, 8, 8)
    same = images[labels == labels[0]]
    assert len(same) > 1
    # evaluation data is not augmented
    val = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(val, dm.val_split_data.images[: len(val)])


def test_batch_mode_augments_training_batches_only(tmp_path):
    dm = ImageClassificationDataModule(
        "digits", batch_size=16, augmentation="standard", normalization="none", seed=3
    )
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path))
    dm.trainer = trainer
    dm.setup("fit")
    images = dm.train_split.images[:16]
    trainer.state.stage = RunningStage.TRAINING
    augmented = dm.on_after_batch_transfer((images, torch.zeros(16)), 0)[0]
    assert not torch.allclose(augmented, images.float() / 255)
    trainer.state.stage = RunningStage.VALIDATING
    plain = dm.on_after_batch_transfer((images, torch.zeros(16)), 0)[0]
    assert torch.equal(plain, images.float() / 255)


def test_crop_augmentation_sets_the_input_shape():
    dm = ImageClassificationDataModule("digits", augmentation=[{"name": "crop", "size": 6, "padding": 1}])
    assert dm.input_shape == (1, 6, 6)
    dm.setup("fit")
    x, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert x.shape[1:] == (1, 6, 6)


def test_normalization_stats_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    dm = ImageClassificationDataModule(
        "digits", batch_size=64, normalization="zscore", augmentation="light", seed=1
    )
    module = ClassificationModule(LeNet300100(in_features=64), lr=1e-3)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(tmp_path, enable_checkpointing=True, callbacks=[ckpt], limit_train_batches=3)
    )
    trainer.fit(module, datamodule=dm)
    saved = torch.load(ckpt.last_model_path, weights_only=True)
    state = saved["ImageClassificationDataModule"]
    assert torch.equal(state["norm_stats"]["mean"], dm.norm_stats["mean"])
    # a data module with another split fits other statistics, but takes the checkpoint's
    other = ImageClassificationDataModule(
        "digits", batch_size=64, normalization="zscore", augmentation="light", seed=2
    )
    other.setup("fit")
    assert not torch.equal(other.norm_stats["mean"], dm.norm_stats["mean"])
    other = ImageClassificationDataModule(
        "digits", batch_size=64, normalization="zscore", augmentation="light", seed=2
    )
    trainer2 = pl.Trainer(**quiet_trainer_kwargs(tmp_path))
    trainer2.validate(
        ClassificationModule(LeNet300100(in_features=64)), datamodule=other, ckpt_path=ckpt.last_model_path
    )
    assert torch.equal(other.norm_stats["mean"], dm.norm_stats["mean"])
    assert torch.equal(other.norm_stats["std"], dm.norm_stats["std"])
    assert torch.equal(
        other.batch_augmentation.generator.get_state(), dm.batch_augmentation.generator.get_state()
    )
    # a checkpoint fitted with another normalization is refused
    with pytest.raises(ValueError, match="normalization='zscore'"):
        ImageClassificationDataModule("digits", normalization="minmax").load_state_dict(state)


def test_batch_size_finder_tunes_batch_size(tmp_path):
    dm = ImageClassificationDataModule("digits", batch_size=2)
    module = ClassificationModule(LeNet300100(in_features=64), lr=1e-3)
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, init_val=2, max_trials=3)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(tmp_path, callbacks=[finder], max_steps=1, limit_val_batches=1)
    )
    trainer.fit(module, datamodule=dm)
    # 2 -> 4 -> 8: three trials succeed, the finder stops at max_trials and keeps the largest
    assert dm.batch_size == 8 == finder.optimal_batch_size
    assert trainer.train_dataloader.batch_size == 8


def test_feature_table_tensors_are_cleaned_and_normalized_per_feature():
    features = torch.randn(300, 5) * torch.tensor([1.0, 10.0, 0.1, 5.0, 2.0]) + 4
    features[7, 2] = float("nan")
    features[50, 0] = float("-inf")
    dm = ImageClassificationDataModule(
        images=features, labels=torch.arange(300) % 2, nonfinite="median", val_split=0.2
    )
    assert dm.input_shape == (5,)
    dm.setup("fit")
    x = dm.to_model_input(dm.train_split.images)
    assert torch.isfinite(x).all() and x.shape[1] == 5
    assert torch.allclose(x.mean(0), torch.zeros(5), atol=1e-4) and torch.allclose(
        x.std(0, unbiased=False), torch.ones(5), atol=1e-3
    )
    with pytest.raises(ValueError, match="`augmentation` needs \\(N, C, H, W\\) images"):
        ImageClassificationDataModule(images=features, labels=torch.zeros(300), augmentation="light")


def test_sample_mode_is_reproducible_under_a_seed():
    dm = ImageClassificationDataModule(
        "digits", batch_size=64, augmentation="strong", augmentation_mode="sample"
    )
    dm.setup("fit")

    def first_batch():
        pl.seed_everything(3, verbose=False)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(0)
        return next(iter(loader))[0]

    a, b = first_batch(), first_batch()
    assert torch.equal(a, b)
    assert not torch.equal(a, dm.train_split.images[loader_order(dm)][:64])


def loader_order(dm):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    return list(loader.sampler)


def _fit_augmented(tmp_path, max_epochs, ckpt_path=None, callbacks=()):
    pl.seed_everything(0, verbose=False)
    dm = ImageClassificationDataModule("digits", batch_size=64, augmentation="strong", seed=4)
    module = ClassificationModule(LeNet300100(in_features=64), lr=1e-2)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=max_epochs,
            limit_train_batches=3,
            limit_val_batches=1,
            enable_checkpointing=bool(callbacks),
            callbacks=list(callbacks),
        )
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, dm


def test_resume_continues_the_augmentation_stream(tmp_path):
    straight, _ = _fit_augmented(tmp_path / "a", max_epochs=2)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    _fit_augmented(tmp_path / "b", max_epochs=1, callbacks=[ckpt])
    resumed, _ = _fit_augmented(tmp_path / "c", max_epochs=2, ckpt_path=ckpt.last_model_path)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_fashionmnist_reader(mnist_dir, tmp_path):
    # FashionMNIST uses MNIST's file names and format: MNIST's raw files stand in for it here
    (tmp_path / "FashionMNIST").mkdir()
    (tmp_path / "FashionMNIST" / "raw").symlink_to(mnist_dir / "MNIST" / "raw", target_is_directory=True)
    dm = ImageClassificationDataModule("Fashion-MNIST", data_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.dataset == "fashionmnist" and dm.input_shape == (1, 28, 28)
    assert len(dm.test_split) == 10000 and dm.test_split.images.dtype == torch.uint8


# ------------------------------------------------------------------------------------ channels (issue 27)
def _model_batch(dm, split="val"):
    """The first batch of ``split`` as the model sees it (normalized, not augmented)."""
    return dm.on_after_batch_transfer(next(iter(getattr(dm, f"{split}_dataloader")())), 0)[0]


def test_channels_3_repeats_grey_images_on_the_device_only():
    grey = ImageClassificationDataModule("digits", batch_size=32)
    rgb = ImageClassificationDataModule("digits", batch_size=32, channels=3)
    grey.setup("fit")
    rgb.setup("fit")
    assert rgb.input_shape == (3, 8, 8) and rgb.source_shape == (1, 8, 8) and rgb.model_channels == 3
    # the stored images stay one uint8 channel (host memory and transfer unchanged)
    assert rgb.train_split.images.shape[1:] == (1, 8, 8) and rgb.train_split.images.dtype == torch.uint8
    assert next(iter(rgb.val_dataloader()))[0].shape[1:] == (1, 8, 8)
    # statistics: one per model input channel, each the grey channel's
    for key in ("mean", "std"):
        assert rgb.norm_stats[key].shape == (3,)
        assert torch.equal(rgb.norm_stats[key], grey.norm_stats[key].expand(3))
    x1, x3 = _model_batch(grey), _model_batch(rgb)
    assert x3.shape == (32, 3, 8, 8) and x3.is_contiguous()
    assert torch.equal(x3, x1.expand(-1, 3, -1, -1))  # exactly the grey inputs, three times


@pytest.mark.parametrize("normalization", ["none", "minmax", "minmax_symmetric"])
def test_channels_3_with_every_normalization(normalization):
    dm = ImageClassificationDataModule("digits", channels=3, normalization=normalization)
    dm.setup("fit")
    x = _model_batch(dm)
    assert x.shape[1] == 3 and x.is_contiguous()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert all(v.shape == (3,) for v in dm.norm_stats.values())


def test_channels_3_with_augmentation_in_both_modes(tmp_path):
    for mode in ("batch", "sample"):
        dm = ImageClassificationDataModule(
            "digits", channels=3, augmentation="standard", augmentation_mode=mode, batch_size=16
        )
        trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path))
        dm.trainer = trainer
        dm.setup("fit")
        trainer.state.stage = RunningStage.TRAINING
        x = _model_batch(dm, "train")
        assert x.shape == (16, 3, 8, 8), mode
        assert torch.equal(x[:, 0], x[:, 2]), mode  # augmented once, then repeated: the channels agree


def test_channels_1_makes_colour_images_grey_by_luma_once():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 5, 5), dtype=torch.uint8)
    dm = ImageClassificationDataModule(images=images, labels=torch.arange(60) % 3, channels=1)
    assert dm.input_shape == (1, 5, 5) and dm.source_shape == (3, 5, 5)
    dm.setup("fit")
    stored = torch.cat([dm.train_split.images, dm.val_split_data.images, dm.test_split.images])
    assert stored.dtype == torch.uint8 and stored.shape[1:] == (1, 5, 5)  # converted on the stored tensors
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    expected = (images.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
    assert torch.equal(stored.sort(0).values, expected.sort(0).values)
    assert dm.norm_stats["mean"].shape == (1,)
    assert _model_batch(dm).shape[1:] == (1, 5, 5)


def test_channels_1_on_float_images_keeps_the_dtype():
    images = torch.rand(40, 3, 4, 4, dtype=torch.float64)
    dm = ImageClassificationDataModule(images=images, labels=torch.arange(40) % 2, channels=1)
    dm.setup("fit")
    assert dm.train_split.images.dtype == torch.float64 and dm.train_split.images.shape[1] == 1
    assert dm.deploy_metadata()["pixel_scale"] == 1.0


def test_channels_that_change_nothing_add_no_conversion():
    rgb = ImageClassificationDataModule(
        images=torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8),
        labels=torch.arange(30) % 2,
        channels=3,
    )
    grey = ImageClassificationDataModule("digits", channels=1)
    for dm in (rgb, grey):
        dm.setup("fit")
        assert dm.channels_from is None and "channels_from" not in dm.deploy_metadata()
    assert rgb.input_shape == (3, 4, 4) and grey.input_shape == (1, 8, 8)


@pytest.mark.parametrize(("mode", "channels", "stored", "model"), [("L", 3, 1, 3), ("RGB", 1, 1, 1)])
def test_channels_on_an_image_folder(dirty_folder, mode, channels, stored, model):
    dm = ImageClassificationDataModule(
        image_folder=str(dirty_folder), image_size=8, image_mode=mode, channels=channels, val_split=0.25
    )
    assert dm.input_shape == (model, 8, 8)
    dm.setup("fit")
    assert dm.train_split.images.shape[1] == stored
    assert _model_batch(dm).shape[1:] == (model, 8, 8)
    meta = dm.deploy_metadata()
    assert meta["input_shape"] == [model, 8, 8] and len(meta["mean"]) == len(meta["std"]) == model


def test_channels_on_real_mnist_and_fashionmnist(mnist_dir, tmp_path):
    (tmp_path / "FashionMNIST").mkdir()
    (tmp_path / "FashionMNIST" / "raw").symlink_to(mnist_dir / "MNIST" / "raw", target_is_directory=True)
    for name, root in (("mnist", mnist_dir), ("fashion_mnist", tmp_path)):
        dm = ImageClassificationDataModule(name, data_dir=str(root), channels=3, limit_train_samples=512)
        assert dm.input_shape == (3, 28, 28)
        dm.setup("fit")
        assert dm.train_split.images.shape[1:] == (1, 28, 28)
        assert _model_batch(dm).shape[1:] == (3, 28, 28)
        assert dm.deploy_metadata()["input_shape"] == [3, 28, 28]


@pytest.mark.parametrize(
    ("channels", "source", "expected"),
    [(3, "digits", "grey repeated to 3"), (1, "rgb", "colour to grey by luma (0.299 R + 0.587 G + 0.114 B)")],
)
def test_deploy_metadata_counts_model_channels_and_says_how(channels, source, expected):
    if source == "digits":
        dm = ImageClassificationDataModule("digits", channels=channels)
    else:
        images = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8)
        dm = ImageClassificationDataModule(images=images, labels=torch.arange(30) % 2, channels=channels)
    dm.setup("fit")
    meta = dm.deploy_metadata()
    assert meta["channels_from"] == expected
    assert meta["input_shape"][0] == channels and len(meta["mean"]) == len(meta["std"]) == channels
    # the deploy recipe reproduces the model inputs from the raw images
    raw, _ = next(iter(dm.val_dataloader()))
    x = raw.double() / meta["pixel_scale"]
    if channels == 3:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    assert torch.allclose(((x - mean) / std).float(), _model_batch(dm), atol=1e-5)


def test_deploy_metadata_with_converted_channels_passes_the_export_check():
    from lightning_optim.functional.quantization.pt2e import _check_metadata

    dm = ImageClassificationDataModule("digits", channels=3)
    dm.setup("fit")
    info = _check_metadata(dm.deploy_metadata(), torch.zeros(1, 3, 8, 8))
    assert info["input_shape"] == [3, 8, 8] and len(info["mean"]) == 3


def test_deploy_metadata_without_channels_passes_the_export_check():
    from lightning_optim.functional.quantization.pt2e import _check_metadata

    dm = ImageClassificationDataModule("digits")
    dm.setup("fit")
    assert _check_metadata(dm.deploy_metadata(), torch.zeros(1, 1, 8, 8))["input_shape"] == [1, 8, 8]


def test_channels_travel_in_checkpoint_statistics():
    dm = ImageClassificationDataModule("digits", channels=3)
    dm.setup("fit")
    state = dm.state_dict()
    restored = ImageClassificationDataModule("digits", channels=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.norm_stats["mean"], dm.norm_stats["mean"])
    with pytest.raises(ValueError, match=r"3 value\(s\) per statistic.*1 channels \(`channels`=None\)"):
        ImageClassificationDataModule("digits").load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, r"Unknown `channels` 2; allowed: \[None, 1, 3\]\."),
        ({"channels": 0}, r"Unknown `channels` 0; allowed: \[None, 1, 3\]\."),
        ({"channels": True}, r"Unknown `channels` 'True'; allowed: \[None, 1, 3\]\."),
        (
            {"images": torch.rand(8, 4), "labels": torch.arange(8) % 2, "channels": 3},
            r"`channels` applies to \(N, C, H, W\) images; `images` is a table of shape \(8, 4\)",
        ),
        (
            {"images": torch.rand(8, 4, 3, 3), "labels": torch.arange(8) % 2, "channels": 1},
            r"`channels`=1 converts grey \(1-channel\) and colour \(3-channel\) images; `images` have 4",
        ),
        (
            {"images": torch.rand(8, 4), "labels": torch.arange(8) % 2, "image_size": 8},
            r"`image_size` applies to \(N, C, H, W\) images",
        ),
    ],
)
def test_bad_channels_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassificationDataModule(**kwargs)


def test_rgba_folder_with_channels_names_image_mode(dirty_folder):
    with pytest.raises(ValueError, match=r"`image_mode` 'RGBA' gives 4 channels: use 'RGB' or 'L'"):
        ImageClassificationDataModule(image_folder=str(dirty_folder), image_mode="RGBA", channels=3)


def test_image_size_resizes_named_and_in_memory_images_on_the_device():
    dm = ImageClassificationDataModule("digits", image_size=16, channels=3, batch_size=8)
    assert dm.input_shape == (3, 16, 16)
    dm.setup("fit")
    assert dm.train_split.images.shape[1:] == (1, 8, 8)  # stored as read
    assert _model_batch(dm).shape == (8, 3, 16, 16)
    same = ImageClassificationDataModule("digits", image_size=8)
    assert same.augmentation_steps == [] and same.batch_augmentation is None  # nothing to resize
    tensors = ImageClassificationDataModule(
        images=torch.rand(20, 1, 6, 6), labels=torch.arange(20) % 2, image_size=[12, 10]
    )
    tensors.setup("fit")
    assert tensors.input_shape == (1, 12, 10) and _model_batch(tensors).shape[1:] == (1, 12, 10)
