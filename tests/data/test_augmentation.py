"""Augmentation: presets, custom lists, the per-sample v2 path and the batched path with per-sample parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lightning_optim.data.augmentation import (
    AUGMENTATION_PRESETS,
    AUGMENTATION_STEPS,
    BatchAugmentation,
    augmented_size,
    build_batch_augmentation,
    build_sample_augmentation,
    parse_augmentation,
)
from lightning_optim.functional.augmentation import elastic_displacement

STEP_CASES = {
    "rotation": {"degrees": 20},
    "resize": {"size": 10},
    "crop": {"padding": 2},
    "center_crop": {"size": [6, 5]},
    "random_resized_crop": {"size": 7, "scale": [0.5, 1.0]},
    "flip": {"p": 0.5},
    "vertical_flip": {"p": 0.5},
    "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "affine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "shear": 5},
    "elastic": {"alpha": 20.0, "sigma": 1.0},
}


def expected_size(name, options, size=(8, 8)):
    out = options.get("size", None)
    if out is None:
        return size
    return (out, out) if isinstance(out, int) else tuple(out)


def test_every_step_has_a_case():
    assert set(STEP_CASES) == set(AUGMENTATION_STEPS)


@pytest.mark.parametrize("name", sorted(STEP_CASES))
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_step_shapes_dtypes_range(name, channels):
    aug = BatchAugmentation([{"name": name, **STEP_CASES[name]}], seed=0)
    x = torch.rand(16, channels, 8, 8)
    y = aug(x)
    assert y.dtype == x.dtype and y.shape == (16, channels, *expected_size(name, STEP_CASES[name]))
    assert y.min() >= 0.0 and y.max() <= 1.0 + 1e-6
    assert aug.output_size((8, 8)) == y.shape[-2:]
    # evaluation keeps only what makes the size
    assert aug(x, train=False).shape == y.shape


@pytest.mark.parametrize("name", sorted(STEP_CASES))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_sample_step_shapes_dtypes(name, dtype):
    transform = build_sample_augmentation([{"name": name, **STEP_CASES[name]}], input_size=(8, 8))
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    image = image if dtype == torch.uint8 else image.float() / 255
    out = transform(image)
    assert out.dtype == dtype and out.shape == (3, *expected_size(name, STEP_CASES[name]))
    evaluation = build_sample_augmentation(
        [{"name": name, **STEP_CASES[name]}], input_size=(8, 8), train=False
    )
    if evaluation is not None:
        assert evaluation(image).shape == out.shape


@pytest.mark.parametrize("preset", list(AUGMENTATION_PRESETS))
def test_presets(preset):
    aug = build_batch_augmentation(preset, seed=0)
    x = torch.rand(8, 3, 12, 12)
    if preset == "none":
        assert aug is None and build_sample_augmentation(preset, (12, 12)) is None
        return
    assert aug(x).shape == x.shape and not torch.equal(aug(x), x)
    assert build_sample_augmentation(preset, (12, 12))(x[0]).shape == x[0].shape


def test_yaml_style_custom_list_and_aliases():
    import yaml

    spec = yaml.safe_load(
        "[{name: rotation, degrees: 10}, {name: flip, p: 0.5}, {name: random_crop, padding: 1}]"
    )
    steps = parse_augmentation(spec)
    assert [s["name"] for s in steps] == ["rotation", "flip", "crop"]
    assert steps[1]["p"] == 0.5 and steps[2]["padding"] == 1
    assert parse_augmentation(["flip"])[0] == {"name": "flip", "p": 0.5}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "heavy",
            r"Unknown `augmentation` preset 'heavy'; allowed presets: \['none', 'light', 'standard', 'strong'\]",
        ),
        (
            [{"name": "blur"}],
            r"Unknown augmentation name 'blur'; allowed: \['affine', 'center_crop', 'color_jitter'",
        ),
        ([{"name": "flip", "prob": 0.5}], r"'flip': unknown option\(s\) \['prob'\]; allowed: \['p'\]"),
        ([{"name": "flip", "p": 2}], r"`p` must be in \[0, 1\]"),
        ([{"name": "resize"}], r"'resize' needs `size`"),
        ([{"degrees": 3}], r"must be a dict with a `name`"),
        ([{"name": "affine", "translate": [2, 0]}], r"`translate` fractions must be in \[0, 1\]"),
        ([{"name": "color_jitter", "hue": 0.9}], r"`hue` must be in \[0, 0.5\]"),
        ([{"name": "elastic", "sigma": -1}], r"'elastic': `sigma` must be a number >= 0, got -1"),
        ([{"name": "elastic", "alpha": "big"}], r"'elastic': `alpha` must be a number >= 0"),
    ],
)
def test_bad_specs_name_option_and_allowed_values(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_augmentation(spec)
    with pytest.raises(ValueError, match=message):
        build_batch_augmentation(spec)


def test_interpolation_is_checked():
    with pytest.raises(ValueError, match=r"`interpolation` 'cubic'; allowed: \['bilinear', 'nearest'\]"):
        BatchAugmentation("light", interpolation="cubic")


# ------------------------------------------------------------------------------------ per-sample parameters
def identical_batch(n=32, channels=1, size=12, seed=0):
    image = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return image.expand(n, -1, -1, -1).contiguous()


@pytest.mark.parametrize(
    "spec",
    [
        [{"name": "rotation", "degrees": 30}],
        [{"name": "affine", "degrees": 10, "translate": [0.2, 0.2], "scale": [0.8, 1.2]}],
        [{"name": "crop", "padding": 3}],
        [{"name": "random_resized_crop", "scale": [0.3, 1.0]}],
        [{"name": "color_jitter", "brightness": 0.5}],
        [{"name": "color_jitter", "contrast": 0.5}],
        "strong",
    ],
)
def test_every_sample_gets_its_own_parameters(spec):
    x = identical_batch()
    y = BatchAugmentation(spec, seed=1)(x)
    distinct = {tuple(v.flatten().tolist()) for v in y.round(decimals=4)}
    assert (
        len(distinct) >= len(x) // 2
    )  # samples differ from each other (a few may draw equal integer shifts)


def test_v2_on_a_4d_batch_draws_one_set_for_all_samples():
    """The bug the batched path avoids: v2 on a batch applies the same random parameters to every sample."""
    x = identical_batch()
    y = v2.RandomAffine(degrees=30, translate=(0.2, 0.2))(x)
    assert len({tuple(v.flatten().tolist()) for v in y}) == 1
    y = BatchAugmentation([{"name": "affine", "degrees": 30, "translate": [0.2, 0.2]}], seed=0)(x)
    assert len({tuple(v.flatten().tolist()) for v in y}) > 1


def test_flip_is_per_sample_and_exact():
    x = torch.rand(200, 3, 5, 6)
    y = BatchAugmentation([{"name": "flip", "p": 0.5}], seed=0)(x)
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(y, x)])
    same = torch.tensor([torch.equal(a, b) for a, b in zip(y, x)])
    assert (flipped | same).all()
    assert 70 < int(flipped.sum()) < 130
    # a flip composed in a warp (with a zero rotation) is pixel-exact too
    y2 = BatchAugmentation([{"name": "flip", "p": 1.0}, {"name": "rotation", "degrees": 0}], seed=0)(x)
    assert torch.allclose(y2, x.flip(-1), atol=1e-6)


def test_crop_with_padding_is_an_exact_integer_shift_within_range():
    x = torch.rand(64, 1, 8, 8)
    y = BatchAugmentation([{"name": "crop", "padding": 2}], seed=0)(x)
    shifts = []
    for a, b in zip(y, x):
        padded = F.pad(b, (2, 2, 2, 2))
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.allclose(a, padded[:, dy : dy + 8, dx : dx + 8], atol=1e-6)
        ]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 10


def test_geometry_matches_torchvision_for_fixed_parameters():
    img = torch.rand(1, 3, 16, 16)
    bilinear = TF.InterpolationMode.BILINEAR
    rot = BatchAugmentation([{"name": "rotation", "degrees": [25, 25]}])(img)
    assert torch.allclose(rot, TF.rotate(img, 25, interpolation=bilinear), atol=1e-5)
    aff = BatchAugmentation(
        [{"name": "affine", "degrees": [20, 20], "scale": [1.2, 1.2], "shear": [8, 8, -4, -4]}]
    )(img)
    ref = TF.affine(img, angle=20, translate=[0, 0], scale=1.2, shear=[8, -4], interpolation=bilinear)
    assert torch.allclose(aff, ref, atol=1e-5)
    shifted = BatchAugmentation([{"name": "affine", "translate": [0.25, 0.0]}], seed=3)(
        img.expand(20, -1, -1, -1)
    )
    for sample in shifted:
        matches = [
            dx
            for dx in range(-4, 5)
            if torch.allclose(sample, TF.affine(img[0], 0, [dx, 0], 1.0, [0.0]), atol=1e-6)
        ]
        assert len(matches) == 1


def test_eval_mode_only_makes_the_size():
    x = torch.rand(4, 1, 10, 10)
    aug = BatchAugmentation(
        [{"name": "affine", "degrees": 30}, {"name": "crop", "size": 6}, {"name": "flip"}]
    )
    y = aug(x, train=False)
    assert torch.allclose(y, x[..., 2:8, 2:8], atol=1e-6)  # a centre crop, nothing random
    assert torch.equal(BatchAugmentation("standard")(x, train=False), x)
    assert augmented_size([{"name": "resize", "size": [4, 7]}], (10, 10)) == (4, 7)


def test_hue_and_saturation_only_touch_colour_images():
    gray = torch.rand(6, 1, 5, 5)
    aug = BatchAugmentation([{"name": "color_jitter", "saturation": 0.9, "hue": 0.4}], seed=0)
    assert torch.equal(aug(gray), gray)
    rgb = torch.rand(6, 3, 5, 5)
    out = aug(rgb)
    assert not torch.allclose(out, rgb) and out.min() >= 0 and out.max() <= 1
    # brightness and contrast keep the gray level of a gray pixel gray
    neutral = torch.full((6, 3, 5, 5), 0.5)
    neutral[:, :, 0, 0] = 0.2
    out = BatchAugmentation([{"name": "color_jitter", "hue": 0.5}], seed=0)(neutral)
    assert torch.allclose(out, neutral, atol=1e-5)


# ------------------------------------------------------------------------------------ determinism
def test_seeded_determinism_and_state_round_trip():
    x = torch.rand(16, 3, 10, 10)
    a, b = BatchAugmentation("strong", seed=7), BatchAugmentation("strong", seed=7)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(BatchAugmentation("strong", seed=8)(x), BatchAugmentation("strong", seed=7)(x))
    state = a.state_dict()
    expected = a(x)
    c = BatchAugmentation("strong", seed=0)
    c.load_state_dict(state)
    assert torch.equal(c(x), expected)
    a.reseed(7)
    first = a(x)
    a.reseed(7)
    assert torch.equal(a(x), first)


def test_parameters_do_not_depend_on_global_rng():
    x = torch.rand(8, 1, 8, 8)
    torch.manual_seed(0)
    y1 = BatchAugmentation("standard", seed=3)(x)
    torch.manual_seed(123)
    y2 = BatchAugmentation("standard", seed=3)(x)
    assert torch.equal(y1, y2)


def test_bad_input_tensor():
    with pytest.raises(ValueError, match="float \\(N, C, H, W\\)"):
        BatchAugmentation("light")(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="float"):
        BatchAugmentation("light")(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_pickle_round_trip_keeps_the_random_stream():
    import pickle

    aug = BatchAugmentation("strong", seed=4)
    x = torch.rand(4, 3, 8, 8)
    aug(x)
    clone = pickle.loads(pickle.dumps(aug))
    assert torch.equal(clone(x), aug(x))


@pytest.mark.parametrize(
    ("option", "factor", "reference"),
    [
        ("brightness", 1.3, TF.adjust_brightness),
        ("contrast", 0.6, TF.adjust_contrast),
        ("saturation", 1.7, TF.adjust_saturation),
        ("hue", 0.2, TF.adjust_hue),
        ("hue", -0.35, TF.adjust_hue),
    ],
)
def test_colour_jitter_matches_torchvision_for_fixed_factors(option, factor, reference):
    img = torch.rand(3, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    out = BatchAugmentation([{"name": "color_jitter", option: [factor, factor]}])(img)
    assert torch.allclose(out, reference(img, factor), atol=1e-5)


def test_random_resized_crop_and_resize_geometry():
    x = torch.rand(5, 2, 12, 12)
    whole = BatchAugmentation([{"name": "random_resized_crop", "scale": [1, 1], "ratio": [1, 1]}])(x)
    assert torch.allclose(whole, x, atol=1e-5)  # the whole image at its own size
    resized = BatchAugmentation([{"name": "resize", "size": [6, 9]}])(x)
    reference = F.interpolate(x, size=(6, 9), mode="bilinear", align_corners=False)
    assert torch.allclose(resized, reference, atol=1e-5)
    # crops of half the area: every sample takes its own window
    crops = BatchAugmentation(
        [{"name": "random_resized_crop", "scale": [0.25, 0.25], "ratio": [1, 1]}], seed=0
    )(x)
    assert crops.shape == x.shape and not torch.allclose(crops, x, atol=1e-3)


# ------------------------------------------------------------------------------------------- elastic
def test_elastic_warp_is_torchvisions_elastic_with_the_same_field():
    """The batched step samples each image at identity + its own displacement, as ``TF.elastic`` does."""
    x = torch.rand(6, 1, 28, 28)
    y = BatchAugmentation([{"name": "elastic", "alpha": 34.0, "sigma": 4.0}], seed=5)(x)
    fields = elastic_displacement(6, 28, 28, 34.0, 4.0, torch.Generator().manual_seed(5))
    for i in range(6):
        ref = TF.elastic(x[i], fields[i].permute(1, 2, 0)[None], interpolation=TF.InterpolationMode.BILINEAR)
        assert torch.allclose(y[i], ref, atol=1e-5)
    assert len({tuple(v.flatten().round(decimals=4).tolist()) for v in y}) == 6  # one field per sample


def test_elastic_is_off_at_eval_and_the_identity_at_alpha_zero():
    # the field itself (smooth, linear in alpha): tests/functional/test_augmentation.py
    x = torch.rand(4, 1, 28, 28)
    aug = BatchAugmentation([{"name": "elastic", "alpha": 34.0, "sigma": 4.0}], seed=0)
    assert torch.equal(aug(x, train=False), x)
    assert torch.allclose(BatchAugmentation([{"name": "elastic", "alpha": 0.0}], seed=0)(x), x, atol=1e-6)


def test_elastic_after_affine_is_one_sampling_of_the_composed_map():
    """``[translate, elastic]`` samples x(M(p + d(p))): the shift, then the field drawn after it, in one go."""
    x = torch.zeros(8, 1, 16, 16)
    x[..., 5:11, 5:11] = torch.rand(8, 1, 6, 6)  # content away from the border: nothing leaves the frame
    spec = [{"name": "affine", "translate": [0.125, 0.125]}, {"name": "elastic", "alpha": 0.0}]
    shift = BatchAugmentation(spec[:1], seed=2)
    shifted = shift(x)
    assert torch.allclose(BatchAugmentation(spec, seed=2)(x), shifted, atol=1e-6)  # alpha 0: the shift alone
    spec[1] = {"name": "elastic", "alpha": 10.0, "sigma": 2.0}
    y = BatchAugmentation(spec, seed=2)(x)
    fields = elastic_displacement(8, 16, 16, 10.0, 2.0, shift.generator)  # the draws that follow the shift's
    assert fields.abs().max() > 0.02  # a real field (in grid units; 0.02 = 0.16 px)
    for i in range(8):
        ref = TF.elastic(
            shifted[i], fields[i].permute(1, 2, 0)[None], interpolation=TF.InterpolationMode.BILINEAR
        )
        assert torch.allclose(y[i], ref, atol=1e-5)
    assert not torch.allclose(y, shifted, atol=1e-3)
