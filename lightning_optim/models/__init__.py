"""The model zoo: LeNet-300-100, LeNet-5 (classic, Caffe), a 3-block CNN, a separable CNN, a small residual CNN,
a text classifier, and a logit-averaging ensemble (a distillation teacher)."""

from __future__ import annotations

from torch import nn

from lightning_optim._deprecation import moved
from lightning_optim.models.cnn import ConvNet3, SeparableCNN, SmallResNet, conv_block
from lightning_optim.models.ensemble import LogitEnsemble
from lightning_optim.models.lenet import LeNet5, LeNet300100
from lightning_optim.models.text import TextClassifier

#: short name -> model class
MODELS: dict[str, type[nn.Module]] = {
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "convnet3": ConvNet3,
    "separable_cnn": SeparableCNN,
    "small_resnet": SmallResNet,
    "text_classifier": TextClassifier,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a zoo model by short name (case, ``-`` and ``_`` do not matter: ``"LeNet-5"`` is ``lenet5``).

    Example::

        model = create_model("lenet5", variant="caffe")  # 431,080 parameters

    Raises:
        ValueError: for a name outside :data:`MODELS`.
    """
    aliases = {k.replace("_", ""): k for k in MODELS}
    key = name.lower().replace("-", "").replace("_", "")
    if key not in aliases:
        raise ValueError(f"Unknown model {name!r}; allowed: {sorted(MODELS)}.")
    key = aliases[key]
    return MODELS[key](**kwargs)


__all__ = [
    "MODELS",
    "ConvNet3",
    "LeNet5",
    "LeNet300100",
    "LogitEnsemble",
    "SeparableCNN",
    "SmallResNet",
    "TextClassifier",
    "conv_block",
    "create_model",
]

_MEASURE = "lightning_optim.functional.compression_report.measure"
# deprecated (0.2.x): the counters are measurements and live with them; removed in 0.3.0
__getattr__ = moved(
    __name__,
    _MEASURE,
    renamed={
        "count_parameters": f"{_MEASURE}:count_parameters",
        "count_nonzero_parameters": f"{_MEASURE}:count_nonzero",
    },
)
