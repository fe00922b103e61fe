"""LeNet-300-100 and LeNet-5 (classic and Caffe variants)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from lightning_optim.checks import check_choice
from lightning_optim.layers.activations import create_act


class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100 (LeCun et al. 1998; Han et al. 2015's pruning baseline).

    ``in_features -> 300 -> 100 -> num_classes`` with ReLU; 266,610 parameters for 28x28 inputs.

    Args:
        in_features: flattened input size (784 for 28x28, 64 for 8x8 digits, 3072 for 32x32 RGB).
        num_classes: output classes.
        hidden: the two hidden widths.
        dropout: dropout probability after each hidden layer.
        act: activation name.
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        hidden: tuple[int, int] = (300, 100),
        dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.act1 = create_act(act)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.act2 = create_act(act)
        self.drop2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.act1(self.fc1(self.flatten(x))))
        x = self.drop2(self.act2(self.fc2(x)))
        return self.fc3(x)


#: variant -> (conv channels, conv padding of the first conv at 28x28, fully connected widths)
LENET5_VARIANTS: dict[str, dict] = {
    # LeCun et al. 1998, with ReLU and max-pooling: 6-16-120-84.
    "classic": {"channels": (6, 16), "pad_first": 2, "fc": (120, 84)},
    # The Caffe example used by Han et al. 2015/2016: conv 20 and 50 filters 5x5, fc 500; 431,080 params.
    "caffe": {"channels": (20, 50), "pad_first": 0, "fc": (500,)},
}


class LeNet5(nn.Module):
    """LeNet-5, in the ``classic`` (6-16-120-84) or ``caffe`` (20-50-500, 431K parameters) variant.

    Args:
        variant: ``"classic"`` or ``"caffe"``.
        in_channels: input channels (1 for MNIST, 3 for CIFAR-10).
        num_classes: output classes.
        image_size: input height/width (28 or 32; any size >= 16 works).
        dropout: dropout before the last layer.
        norm: ``"batch"`` adds BatchNorm after each convolution, ``"none"`` keeps the original.
        act: activation name.

    Raises:
        ValueError: for an unknown ``variant``.
    """

    def __init__(
        self,
        variant: str = "classic",
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        dropout: float = 0.0,
        norm: str = "none",
        act: str = "relu",
    ) -> None:
        super().__init__()
        check_choice("variant", variant, sorted(LENET5_VARIANTS), kind="LeNet5")
        if norm not in ("none", "batch"):
            raise ValueError(f"LeNet5 `norm` must be 'none' or 'batch', got {norm!r}.")
        spec = LENET5_VARIANTS[variant]
        c1, c2 = spec["channels"]
        pad = spec["pad_first"] if image_size == 28 else 0
        self.variant = variant
        self.num_classes = num_classes
        layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(in_channels, c1, 5, padding=pad))]
        if norm == "batch":
            layers.append(("bn1", nn.BatchNorm2d(c1)))
        layers += [("act1", create_act(act)), ("pool1", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(c1, c2, 5))]
        if norm == "batch":
            layers.append(("bn2", nn.BatchNorm2d(c2)))
        layers += [("act2", create_act(act)), ("pool2", nn.MaxPool2d(2))]
        self.features = nn.Sequential(OrderedDict(layers))
        size = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if size < 1:
            raise ValueError(f"LeNet5 needs `image_size` >= 16, got {image_size}.")
        widths = (c2 * size * size, *spec["fc"])
        head: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        for i in range(len(spec["fc"])):
            head += [(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1])), (f"act{i + 3}", create_act(act))]
        head += [
            ("dropout", nn.Dropout(dropout)),
            (f"fc{len(spec['fc']) + 1}", nn.Linear(widths[-1], num_classes)),
        ]
        self.classifier = nn.Sequential(OrderedDict(head))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
