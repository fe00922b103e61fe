"""The model zoo: output shapes for 8x8, 28x28 and 32x32 inputs, parameter counts, options, create_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.functional.compression_report.measure import count_nonzero as count_nonzero_parameters
from lightning_optim.functional.compression_report.measure import count_parameters
from lightning_optim.models import (
    MODELS,
    ConvNet3,
    LeNet5,
    LeNet300100,
    SeparableCNN,
    TextClassifier,
    create_model,
)

IMAGE_CASES = [
    # (factory, input shape)
    (lambda: LeNet300100(in_features=64), (1, 8, 8)),
    (lambda: LeNet300100(), (1, 28, 28)),
    (lambda: LeNet300100(in_features=3 * 32 * 32), (3, 32, 32)),
    (lambda: LeNet5(), (1, 28, 28)),
    (lambda: LeNet5(image_size=32, in_channels=3), (3, 32, 32)),
    (lambda: LeNet5("caffe"), (1, 28, 28)),
    (lambda: LeNet5("caffe", image_size=32, in_channels=3), (3, 32, 32)),
    (lambda: LeNet5(norm="batch", dropout=0.5), (1, 28, 28)),
    (lambda: ConvNet3(image_size=8), (1, 8, 8)),
    (lambda: ConvNet3(), (1, 28, 28)),
    (lambda: ConvNet3(in_channels=3, image_size=32), (3, 32, 32)),
    (lambda: ConvNet3(image_size=28, hidden=0, norm="layer", dropout=0.2), (1, 28, 28)),
    (lambda: ConvNet3(image_size=8, norm="group", act="gelu"), (1, 8, 8)),
    (lambda: SeparableCNN(), (1, 8, 8)),
    (lambda: SeparableCNN(), (1, 28, 28)),
    (lambda: SeparableCNN(in_channels=3, norm="layer", dropout=0.1), (3, 32, 32)),
]


@pytest.mark.parametrize(("factory", "shape"), IMAGE_CASES)
def test_image_models_output_logits_and_backpropagate(factory, shape):
    model = factory()
    x = torch.randn(3, *shape)
    logits = model(x)
    assert logits.shape == (3, 10)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (LeNet5("caffe"), 431_080),  # 20-50-500, the pruning literature's LeNet-5 (Han et al. 2015)
        (LeNet5("classic"), 61_706),  # LeCun et al. 1998 layout, 6-16-120-84
        (LeNet300100(), 266_610),
        (LeNet5("classic", image_size=32), 61_706),  # 32x32 without padding: the same 16x5x5 features
    ],
)
def test_parameter_counts(model, expected):
    assert count_parameters(model) == expected


def test_lenet5_caffe_layer_shapes():
    m = LeNet5("caffe")
    assert m.features.conv1.out_channels == 20 and m.features.conv2.out_channels == 50
    assert m.classifier.fc1.in_features == 800 and m.classifier.fc1.out_features == 500


def test_convnet3_widths_and_norms():
    m = ConvNet3(channels=(8, 16, 32), image_size=28, norm="batch")
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert all(c.bias is None for c in convs)  # a norm follows, so no bias
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 3
    plain = ConvNet3(norm="none")
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, nn.Conv2d))


def test_separable_cnn_is_smaller_than_convnet3():
    assert count_parameters(SeparableCNN()) < count_parameters(ConvNet3())


def test_dropout_is_configurable():
    m = LeNet300100(dropout=0.3)
    assert [d.p for d in m.modules() if isinstance(d, nn.Dropout)] == [0.3, 0.3]
    m.train()
    x = torch.randn(4, 1, 28, 28)
    assert not torch.equal(m(x), m(x))  # dropout active in training
    m.eval()
    assert torch.equal(m(x), m(x))


def test_text_classifier_shape_and_padding_is_ignored():
    torch.manual_seed(0)
    model = TextClassifier(vocab_size=50, num_classes=3, embed_dim=8, hidden=16, dropout=0.0).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0], [9, 0, 0, 0, 0]])
    out = model(tokens)
    assert out.shape == (2, 3)
    longer = torch.cat([tokens, torch.zeros(2, 4, dtype=torch.long)], dim=1)  # more padding, same text
    torch.testing.assert_close(model(longer), out)
    out.sum().backward()
    assert model.embedding.weight.grad[0].abs().sum() == 0  # padding row gets no gradient


def test_text_classifier_linear_head():
    model = TextClassifier(vocab_size=10, num_classes=2, embed_dim=4, hidden=0)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 2)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


@pytest.mark.parametrize(
    ("name", "cls"),
    [("lenet300100", LeNet300100), ("LeNet5", LeNet5), ("lenet-5", LeNet5), ("convnet3", ConvNet3)]
    + [("separable_cnn", SeparableCNN), ("SeparableCNN", SeparableCNN), ("text_classifier", TextClassifier)],
)
def test_create_model(name, cls):
    assert type(create_model(name)) is cls


def test_create_model_passes_kwargs():
    model = create_model("lenet5", variant="caffe", num_classes=7)
    assert model.variant == "caffe" and model.num_classes == 7
    assert set(MODELS) == {
        "lenet300100",
        "lenet5",
        "convnet3",
        "separable_cnn",
        "small_resnet",
        "text_classifier",
    }


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: create_model("resnet50"), "model"),
        (lambda: LeNet5("modern"), "`variant`"),
        (lambda: LeNet5(norm="layer"), "`norm`"),
        (lambda: LeNet5(image_size=8), "`image_size`"),
        (lambda: ConvNet3(channels=(8, 16)), "`channels`"),
        (lambda: ConvNet3(norm="bogus"), "`norm`"),
        (lambda: SeparableCNN(strides=(2,)), "`strides`"),
    ],
)
def test_bad_options_raise_naming_the_option(build, option):
    with pytest.raises(ValueError, match=option):
        build()


def test_count_nonzero_parameters():
    m = nn.Linear(4, 3)
    with torch.no_grad():
        m.weight[0].zero_()
    assert count_parameters(m) == 15
    assert count_nonzero_parameters(m) == 15 - 4 - int((m.bias == 0).sum())
    m.weight.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == 3
