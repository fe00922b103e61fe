"""Activations: the name map of create_act."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_optim.layers.activations import ACTIVATIONS, create_act


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_keeps_shape(name):
    assert create_act(name)(torch.randn(3, 5)).shape == (3, 5)


def test_none_gives_identity_and_names_are_case_insensitive():
    assert isinstance(create_act(None), nn.Identity)
    assert isinstance(create_act("GELU"), nn.GELU)


def test_unknown_act_raises_naming_the_option_and_allowed_values():
    with pytest.raises(ValueError, match=r"Unknown `act` 'Swishy'; allowed: \['gelu', 'hardswish'"):
        create_act("Swishy")
